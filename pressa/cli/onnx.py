"""Commands for any ONNX model (encoders, classifiers, vision, files users already have): capture,
optimize, quantize, convert-fp16, compare, embed, and the pass list."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pressa import log
from pressa.cli.app import OUTPUT, OVERWRITE, SOURCE, app, done, print_result, runtime_flags
from pressa.cli.options import flag_of, validated, with_config_options
from pressa.passes.fp16 import Fp16Config
from pressa.passes.optimize import OptimizeConfig
from pressa.passes.quantize import DynamicConfig, StaticConfig, WeightOnlyConfig


def _scope(names: list[str] | None, types: list[str] | None, patterns: list[str] | None) -> dict:
    return {"names": names or [], "types": types or [], "patterns": patterns or []}


@app.command()
def capture(
    model: str = typer.Option(..., "--model", "-m", "--model_name_or_path",
                              help="Hugging Face folder, bundled name (all-MiniLM-L6-v2) or Hub id."),
    output: Path = OUTPUT,
    task: str = typer.Option("feature-extraction", "--task", help="feature-extraction, text-classification, "
                             "token-classification, question-answering, fill-mask, image-classification."),
    opset: int = typer.Option(18, "--opset", min=14, help="ONNX opset."),
    overwrite: bool = OVERWRITE,
):
    """Export a Hugging Face model to ONNX (dynamic batch and sequence axes), checked against torch."""
    from pressa.passes.base import apply_pass

    with log.status(f"capturing {model}"):
        m = apply_pass("capture", model, output, {"task": task, "opset": opset}, overwrite)
    log.info(f"parity with torch: max |diff| {m['passes'][-1]['parity_max_abs_diff']:.1e}")
    done(output, m)


OPTIMIZE_FLAGS = {"model_type": ("--model-type", "--model_type"), "fuse_attention": ("--attention/--no-attention",)}


@app.command()
@with_config_options(OptimizeConfig, OPTIMIZE_FLAGS)
def optimize(model: Path = SOURCE, output: Path = OUTPUT, overwrite: bool = OVERWRITE, options: dict | None = None):
    """Transformer fusions (attention, LayerNorm, GELU, SkipLayerNorm, bias) and cleanups, each checked.

    The options are the optimize pass's (`pressa passes`)."""
    from pressa.passes.base import apply_pass

    validated(OptimizeConfig, options, OPTIMIZE_FLAGS)
    with log.progress_bar("optimize") as bar:
        m = apply_pass("optimize", model, output, options, overwrite, bar, log.message)
    fired = m["passes"][-1].get("fusions", {})
    log.info("fusions: " + (", ".join(f"{k} x{v}" for k, v in fired.items()) or "none matched"))
    done(output, m)


QUANTIZE_MODES = {"static": StaticConfig, "dynamic": DynamicConfig, "weight-only": WeightOnlyConfig}
QUANTIZE_FLAGS = {"calibration_data": ("--calibration-data",), "per_channel": ("--per-channel/--per-tensor",),
                  "group_size": ("--group-size", "--block_size"), "symmetric": ("--sym/--asym",),
                  "op_types": ("--op-type",)}


@app.command()
@with_config_options(QUANTIZE_MODES, QUANTIZE_FLAGS, skip=("ignored_scope",))
def quantize(
    model: Path = SOURCE, output: Path = OUTPUT,
    mode: str = typer.Option("static", "--mode", help="static (QDQ int8, calibrated), dynamic (int8 weights), "
                             "or weight-only (MatMulNBits int4/int8)."),
    ignore_node: list[str] | None = typer.Option(None, "--ignore-node", help="Keep this node in float (repeatable)."),
    ignore_type: list[str] | None = typer.Option(None, "--ignore-type", help="Keep this op type in float."),
    ignore_regex: list[str] | None = typer.Option(None, "--ignore-regex", help="Keep nodes whose name matches."),
    overwrite: bool = OVERWRITE,
    options: dict | None = None,
):
    """Quantize any ONNX model: static QDQ int8, dynamic int8, or weight-only int4/int8.

    The options are the three quantize passes' (`pressa passes`); each mode takes its own, with its own
    defaults, and says which it ignores."""
    from pressa.errors import BadArgument
    from pressa.passes.base import apply_pass

    mode = "weight-only" if mode in ("weight_only", "int4") else mode
    if mode not in QUANTIZE_MODES:
        raise BadArgument(f"--mode {mode!r}: use static, dynamic or weight-only")
    config = QUANTIZE_MODES[mode]
    if "max_drop" in options and mode != "static":
        raise BadArgument("--max-drop applies to --mode static")
    for name in [n for n in options if n not in config.model_fields]:
        log.warn(f"{flag_of(name, QUANTIZE_FLAGS)} does not apply to --mode {mode}; ignored")
        options.pop(name)
    opts = {**options, "ignored_scope": _scope(ignore_node, ignore_type, ignore_regex)}
    validated(config, opts, QUANTIZE_FLAGS)
    with log.progress_bar(f"quantize ({mode})") as bar:
        m = apply_pass(f"quantize-{mode}", model, output, opts, overwrite, bar, log.message)
    rep = m["passes"][-1]
    if rep.get("fallback_nodes"):
        log.info(f"agreement drop {rep['drop']:.4f} with {len(rep['fallback_nodes'])} nodes {rep['fallback']}")
    elif "drop" in rep:
        log.info(f"agreement drop {rep['drop']:.4f} (1 - {'top-1' if rep.get('metric') == 'top1' else 'cosine'})")
    done(output, m)


FP16_FLAGS = {"keep_io_types": ("--keep-io-types/--fp16-io",), "op_block_list": ("--op-block-list", "--keep-op")}


@app.command("convert-fp16")
@with_config_options(Fp16Config, FP16_FLAGS)
def convert_fp16(model: Path = SOURCE, output: Path = OUTPUT, overwrite: bool = OVERWRITE,
                 options: dict | None = None):
    """Convert weights and compute to float16 (GPU inference; CPUs usually run fp32 faster)."""
    from pressa.passes.base import apply_pass

    validated(Fp16Config, options, FP16_FLAGS)
    with log.progress_bar("convert-fp16") as bar:
        m = apply_pass("convert-fp16", model, output, options, overwrite, bar, log.message)
    done(output, m)


@app.command("export")
def export_cmd(
    model: Path = SOURCE, output: Path = OUTPUT,
    format: str = typer.Option("openvino", "--format", help="openvino: IR (openvino_model.xml/.bin) with OpenVINO "
                               "tokenizers; decoders stateful, loadable by OpenVINO GenAI and Model Server."),
    overwrite: bool = OVERWRITE,
):
    """Write an artifact in another runtime's format (OpenVINO IR), weights still compressed."""
    from pressa.errors import BadArgument
    from pressa.runtime.ir_export import export_openvino

    if format != "openvino":
        raise BadArgument(f"--format {format!r}: use openvino")
    with log.status("exporting to OpenVINO IR"):
        r = export_openvino(model, output, overwrite)
    log.info(f"wrote {output} (IR {r['ir_bytes'] / 1e6:.1f} MB from {r['source_bytes'] / 1e6:.1f} MB of ONNX)")


@app.command()
@runtime_flags
def compare(
    reference: Path = typer.Argument(..., help="The original model (.onnx or artifact folder)."),
    candidate: Path = typer.Argument(..., help="The optimized model."),
    data: Path | None = typer.Option(None, "--data", help="Inputs: text file, image folder, .npy/.npz "
                                     "(default: made-up inputs)."),
    samples: int = typer.Option(100, "--samples", min=1, help="Samples of --data."),
    runs: int = typer.Option(20, "--runs", min=1, help="Timed runs at batch 1 (median)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
    runtime=None,
):
    """How much worse and how much faster: agreement of outputs, latency and size against the original."""
    from pressa.evaluate.compare import compare as run_compare

    with log.progress_bar("compare") as bar:
        r = run_compare(reference, candidate, data, samples, runs=runs, runtime=runtime, progress=bar)
    if as_json:
        typer.echo(json.dumps(r, indent=2))
        return
    flat = {"samples": r["samples"], "score": r["score"]}
    for name, row in r["outputs"].items():
        flat.update({f"{name} {k}": v for k, v in row.items()})
    flat.update({f"latency ms {k}": v for k, v in r["latency_ms"].items()})
    flat.update({f"size MB {k}": v for k, v in r["size_mb"].items()})
    print_result(flat, False, f"{candidate} vs {reference}")


@app.command()
@runtime_flags
def embed(
    model: Path = typer.Argument(..., help="An encoder artifact (e.g. from capture/quantize)."),
    texts: list[str] = typer.Argument(..., help="Texts to embed; - reads lines from stdin."),
    normalize: bool | None = typer.Option(None, "--normalize/--no-normalize",
                                          help="L2-normalize (default: as the model's config says)."),
    runtime=None,
):
    """Sentence embeddings, one JSON array per text on stdout (pooling as the model's config says)."""
    from pressa.artifact import ArtifactKind, require_kind
    from pressa.runtime.encoder import EncoderModel
    from pressa.textio import check_text, read_stdin

    require_kind(model, ArtifactKind.ONNX, "embed")
    if texts == ["-"]:
        texts = [ln for ln in read_stdin().splitlines() if ln.strip()]
    texts = [check_text(t, "the text") for t in texts]
    vecs = EncoderModel(model, **runtime.model_dump()).embed(texts, normalize=normalize)
    for v in vecs:
        typer.echo(json.dumps([round(float(x), 7) for x in v]))


@app.command()
def passes():
    """Every pass with its Olive aliases, options and defaults."""
    from pressa.passes.base import all_passes, olive_names

    for cls in all_passes():
        typer.echo(f"{cls.name}  ({', '.join(cls.aliases)})\n    {cls.summary}")
        spellings: dict[str, list[str]] = {}
        for theirs, ours in olive_names(cls.Config).items():
            spellings.setdefault(str(ours).split(".")[0], []).append(theirs)
        for key, f in cls.Config.model_fields.items():
            default = f.default_factory() if f.default_factory else f.default
            if hasattr(default, "model_dump"):
                default = default.model_dump()
            olive_alias = f"  (Olive: {', '.join(spellings[key])})" if key in spellings else ""
            typer.echo(f"    {key} = {json.dumps(default)}  {f.description or ''}{olive_alias}")
