"""auto-opt for decoder LLMs: source -> ONNX graph with fused ops -> artifact folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from pressa.artifact import ArtifactKind, Manifest, atomic_folder, write_json, write_manifest
from pressa.artifact.llm_io import GENAI_CONFIG, genai_config
from pressa.capture.build_options import BuildOptions
from pressa.capture.config import DecoderConfig, decoder_config
from pressa.capture.decoder import DecoderBuilder
from pressa.capture.mixed import budget_frame, budgeted
from pressa.errors import BadArgument, UnsupportedArchitecture
from pressa.sources import open_source
from pressa.sources.base import Source

Progress = Callable[[int, int, str], None]


def _no_status(message: str):
    from contextlib import nullcontext

    return nullcontext()


def _calibrated(cfg: DecoderConfig, src: Source, opts: BuildOptions, ratio: float, text: str, samples: int,
                seqlen: int, progress: Progress | None, log):
    """Layer-by-layer calibration (capture/layerwise.py): mixed precision's bits from data-aware errors,
    then the GPTQ/AWQ/scale-estimation decisions of every layer (LayerResults, for the builder), or None
    for plain RTN."""
    from pressa.capture.calibrate import calibration_ids
    from pressa.capture.layerwise import LayerCache, LayerwiseCalibration, cache_key, cache_root

    t1 = time.perf_counter()
    windows = calibration_ids(src.tokenizer_files, text, samples, seqlen)
    run = LayerwiseCalibration(cfg, src.weights, opts, windows, progress)
    if ratio < 1.0 or budgeted(opts):
        opts.layer_bits = _mixed(cfg, src, opts, ratio, progress, log, run)
    if opts.algorithm == "rtn" and not opts.scale_estimation:
        return None
    results = run.run(LayerCache(cache_root() / cache_key(src.location, windows, opts)), log=log)
    log(f"calibration: {len(windows)} x {seqlen} tokens, layer by layer, in {time.perf_counter() - t1:.1f} s")
    return results


def _mixed(cfg: DecoderConfig, src: Source, opts: BuildOptions, ratio: float, progress, log, run=None
           ) -> dict[str, int]:
    """Bits per linear weight for --ratio or a byte budget, from data-aware errors where `run` (a
    LayerwiseCalibration) measures them; a budget's report rides in opts.budget_report."""
    from pressa.capture.mixed import (
        budget_bits,
        data_error,
        data_errors_by_format,
        mixed_bits,
        stacked_weight,
        weight_groups,
    )

    errors = None
    if run is not None:
        groups = weight_groups(cfg, src)
        measure = data_errors_by_format if budgeted(opts) else data_error
        errors = run.sensitivities(lambda key, st: measure(stacked_weight(src, groups[key]), st, opts))
    if not budgeted(opts):
        return mixed_bits(cfg, src, opts, ratio, progress, errors, log)
    chosen, opts.budget_report = budget_bits(cfg, src, opts, progress, errors, log)
    opts.layer_groups = {k: group for k, (_, group) in chosen.items()}
    return {k: bits for k, (bits, _) in chosen.items()}


def _check_quantization(cfg: DecoderConfig, src: Source, opts: BuildOptions, ratio: float, text: str | None) -> None:
    """What the quantization options need, checked before any slow work: a row whose layer form takes
    them, calibration text, a budget at least the smallest mixed build."""
    mixing = ratio < 1.0 or budgeted(opts)
    if not cfg.arch.calibrated and (opts.algorithm != "rtn" or opts.scale_estimation or mixing):
        raise BadArgument(f"{cfg.arch.model_type}: --algorithm {opts.algorithm}, --scale-estimation and mixed "
                          "precision are not built for its layer form yet (they fold scales into a pre-norm "
                          "before a gated MLP); use the default RTN")
    if (opts.algorithm != "rtn" or opts.scale_estimation) and not text:
        what = f"--algorithm {opts.algorithm}" if opts.algorithm != "rtn" else "--scale-estimation"
        raise BadArgument(f"{what} needs --calibration-data FILE (plain text)")
    if budgeted(opts):
        budget_frame(cfg, src, opts)


def build_llm(model: str | None, output: Path, opts: BuildOptions, *, ratio: float = 1.0,
              provider: str = "cpu", overwrite: bool = False, progress: Progress | None = None,
              log: Callable[[str], None] = lambda s: None, status=_no_status,
              calibration_text: str | None = None, calibration_samples: int = 64,
              calibration_seqlen: int = 256) -> dict:
    """Build an artifact folder at `output` (written to a temporary sibling, renamed when complete);
    returns its manifest."""
    opts.validate()                                 # fail before the slow work
    with atomic_folder(Path(output), overwrite, [model],
                       need_bytes=estimated_size(model, opts.precision)) as tmp:
        return build_llm_into(model, tmp, opts, ratio=ratio, provider=provider, progress=progress, log=log,
                              status=status, calibration_text=calibration_text,
                              calibration_samples=calibration_samples, calibration_seqlen=calibration_seqlen)


def estimated_size(model: str | None, precision: str) -> int:
    """A floor for the artifact's size from a local source's weight files (0 when unknown)."""
    p = Path(str(model)) if model else None
    if p is None or not p.exists():
        return 0
    files = [p] if p.is_file() else [f for f in p.iterdir() if f.suffix in (".safetensors", ".gguf", ".bin")]
    per_weight = {"fp32": 1.5, "fp16": 0.75, "int8": 0.4, "int4": 0.2}.get(precision, 0.2)
    return int(sum(f.stat().st_size for f in files) * per_weight)


def _recorded(opts: BuildOptions) -> dict:
    """The build options a manifest records (not the per-weight bits or the calibration switch)."""
    return {k: v for k, v in asdict(opts).items()
            if k not in ("layer_bits", "layer_groups", "capture_inputs", "budget_report")}


def _prepare_weights(cfg: DecoderConfig, src: Source, opts: BuildOptions, log):
    """The source's weights as the builder reads them: an --adapter_path merged in, under pressa's names
    and layout; returns the run-time adapters (--adapters) or None."""
    if opts.adapter_path:
        from pressa.finetune.merge import merged

        src.weights = merged(src.weights, Path(opts.adapter_path))
        log(f"adapter {opts.adapter_path} merged into the weights")
    lora = _runtime_adapters(cfg, src, opts, log) if opts.adapters else None
    if not src.pressa_names:
        src.weights = cfg.arch.canonical(src.weights, cfg.num_layers, cfg.num_heads, cfg.num_experts)
    return lora


def _runtime_adapters(cfg: DecoderConfig, src: Source, opts: BuildOptions, log):
    """auto-opt --adapters: each adapter's A and B, under pressa's weight names, for the builder."""
    from pressa.capture.lora import RuntimeAdapters, parse_adapters

    why = ("--adapter_path merges one adapter; give run-time adapters or a merged one" if opts.adapter_path else
           "AWQ scales the linears' inputs the adapters read" if opts.algorithm == "awq" else
           "its qkv rows are interleaved per head" if cfg.arch.interleaved_qkv else
           "its experts are not adapted at run time" if cfg.arch.moe else "")
    if why:
        raise BadArgument(f"--adapters is not built for {cfg.arch.model_type} with these options yet: {why}")
    specs = parse_adapters(opts.adapters)
    family = ({n: n for n in src.weights.names} if src.pressa_names
              else cfg.arch.checkpoint_names(src.weights, cfg.num_layers, cfg.num_experts))
    lora = RuntimeAdapters(specs, family, opts.adapter_energy)
    log(f"run-time adapters: {', '.join(lora.names)} (ids 1..{len(lora.names)}; 0 is the base)"
        + (f"; ranks kept at {opts.adapter_energy:g} of each update's energy: " + ", ".join(
            f"{n} {kept}/{had}" for n, (kept, had) in zip(lora.names, lora.ranks)) if opts.adapter_energy < 1 else ""))
    return lora


def _general(src, out_dir: Path, opts: BuildOptions, provider: str, reason: str, log, progress, workflow,
             t0: float) -> dict:
    """A causal LM outside the table, through capture.general."""
    from pressa.capture.general import build_general_into

    facts = build_general_into(src, out_dir, opts, provider, reason, log, progress)
    settings = {"precision": opts.precision, "block_size": opts.block_size, "symmetric": opts.symmetric,
                "provider": provider, "path": "general"}
    seconds = round(time.perf_counter() - t0, 2)
    return write_manifest(out_dir, Manifest(
        kind=ArtifactKind.DECODER_LLM, workflow=workflow,
        source={"kind": src.kind, "location": src.location, "model_type": src.config.get("model_type")},
        passes=[{"pass": "source", "location": src.location},
                {"pass": "model-builder", "config": settings, "seconds": seconds, "report": facts["general"]}],
        settings=settings, graph=facts["graph"], build_seconds=seconds))


def build_llm_into(model: str | None, out_dir: Path, opts: BuildOptions, *, ratio: float = 1.0,
                   provider: str = "cpu", progress: Progress | None = None,
                   log: Callable[[str], None] = lambda s: None, status=_no_status,
                   calibration_text: str | None = None, calibration_samples: int = 64,
                   calibration_seqlen: int = 256, workflow: dict | None = None, settings: dict | None = None) -> dict:
    """The artifact's files into the existing (temporary) folder `out_dir`; returns the manifest.
    `settings`: the pass's options as recorded (default: these arguments); `workflow`: the config that
    rebuilds the artifact."""
    t0 = time.perf_counter()
    opts.validate()
    with status(f"reading {model or 'the bundled model'}"):
        src = open_source(model)
    try:
        cfg = decoder_config(src.config)
    except UnsupportedArchitecture as err:
        if src.kind not in ("hf", "hub"):
            raise
        if opts.exact_speculation:
            raise BadArgument(f"--exact-speculation needs a table architecture ({err})") from None
        return _general(src, out_dir, opts, provider, str(err), log, progress, workflow, t0)
    if opts.exact_speculation:
        from pressa.graph.row_invariant import check_attention

        check_attention(cfg.num_heads, cfg.num_kv_heads, bool(cfg.attn_softcap))
    lora = _prepare_weights(cfg, src, opts, log)
    _check_quantization(cfg, src, opts, ratio, calibration_text)
    log(f"source: {src.kind} {src.location} ({cfg.arch.model_type}, {cfg.num_layers} layers, "
        f"hidden {cfg.hidden_size}, vocab {cfg.vocab_size})")
    calib = None
    mixing = ratio < 1.0 or budgeted(opts)
    if opts.algorithm != "rtn" or opts.scale_estimation or (mixing and calibration_text):
        calib = _calibrated(cfg, src, opts, ratio, calibration_text, calibration_samples, calibration_seqlen,
                            progress, log)
    elif mixing:
        opts.layer_bits = _mixed(cfg, src, opts, ratio, progress, log)
    builder = DecoderBuilder(cfg, src.weights, opts, calib)
    builder.lora = lora
    info = builder.build(out_dir, progress)
    if opts.exact_speculation:
        from pressa.graph.row_invariant import rewrite_graph_file

        info["op_counts"] = rewrite_graph_file(out_dir / "model.onnx", cfg.head_dim)
    if lora:
        lora.write(out_dir)
    if opts.layer_bits:
        from pressa.capture.mixed import PICTURE, bits_picture

        (out_dir / PICTURE).write_text(bits_picture(opts.layer_bits, cfg.num_layers, opts.layer_groups))
    for name, data in src.tokenizer_files.items():
        (out_dir / name).write_bytes(data)
    write_json(out_dir / "config.json", src.config)
    write_json(out_dir / GENAI_CONFIG, genai_config(cfg, info["context_length"], provider))
    settings = settings or {**_recorded(opts), "ratio": ratio, "provider": provider, "calibration": {
        "samples": calibration_samples, "seqlen": calibration_seqlen} if calib else None}
    seconds = round(time.perf_counter() - t0, 2)
    if calib is not None:
        calib.cache.remove()                      # the artifact holds the decisions now
    return write_manifest(out_dir, Manifest(
        kind=ArtifactKind.DECODER_LLM, workflow=workflow,
        source={"kind": src.kind, "location": src.location, "model_type": cfg.arch.model_type},
        passes=[{"pass": "source", "location": src.location},
                {"pass": "model-builder", "config": settings, "seconds": seconds}],
        settings=settings, mixed_precision=opts.layer_bits or None, mixed_groups=opts.layer_groups or None,
        budget=opts.budget_report,
        graph={"op_counts": info["op_counts"], "context_length": info["context_length"],
               "logits": "last" if opts.last_token_logits else "all"},
        build_seconds=seconds))
