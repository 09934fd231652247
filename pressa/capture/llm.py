"""auto-opt for decoder LLMs: source -> ONNX graph with fused ops -> artifact folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pressa.artifact import ArtifactKind, Manifest, atomic_folder, write_json, write_manifest
from pressa.artifact.llm_io import GENAI_CONFIG, genai_config
from pressa.capture.config import DecoderConfig, decoder_config
from pressa.capture.decoder import BuildOptions, DecoderBuilder
from pressa.errors import BadArgument, UnsupportedArchitecture
from pressa.quant.sensitivity import assign_bits, relative_rtn_error
from pressa.sources import open_source
from pressa.sources.base import Source

Progress = Callable[[int, int, str], None]


def _no_status(message: str):
    from contextlib import nullcontext

    return nullcontext()


def _weight_groups(cfg: DecoderConfig, src: Source) -> dict[str, list[str]]:
    """Mixed-precision keys (as the builder names them) -> the source tensors they are made of."""
    out = {f"{i}.{key}": [n + ".weight" for n in parts] for i in range(cfg.num_layers)
           for key, parts in cfg.arch.linear_parts(i).items()}
    if not cfg.tie_embeddings and "lm_head.weight" in src.weights:
        out["lm_head"] = ["lm_head.weight"]
    return out


def mixed_bits(cfg: DecoderConfig, src: Source, opts: BuildOptions, ratio: float,
               progress: Progress | None = None, data_errors: dict[str, float] | None = None,
               log: Callable[[str], None] = lambda s: None) -> dict[str, int]:
    """Bits per weight for --ratio: the weights whose int4 error costs most get int8. The error is
    data-aware where calibration measured it (`data_errors`, from data_error), else the weight's own
    relative RTN error."""
    groups = _weight_groups(cfg, src)
    errors, sizes = {}, {}
    for j, (key, names) in enumerate(groups.items()):
        if progress:
            progress(j, len(groups), f"sensitivity {key}")
        if data_errors and key in data_errors:
            errors[key] = data_errors[key]
            sizes[key] = sum(int(np.prod(src.weights.shapes(n))) if src.weights.shapes else src.weights(n).size
                             for n in names)
            continue
        w = np.concatenate([src.weights(n) for n in names])
        errors[key], sizes[key] = relative_rtn_error(w, opts.block_size, opts.symmetric), w.size
    bits = assign_bits(errors, sizes, ratio)
    n8 = sum(1 for b in bits.values() if b == 8)
    how = ", data-aware" if data_errors else ""
    log(f"mixed precision: {len(bits) - n8} weights int4, {n8} int8 (ratio {ratio}{how})")
    return bits


def data_error(w: np.ndarray, stats, opts: BuildOptions) -> float:
    """The int4 error of a layer's output on calibration inputs, relative: tr(E H E^T) / tr(W H W^T)."""
    from pressa.quant.rtn import dequantize, quantize_rtn

    e = dequantize(quantize_rtn(w, 4, opts.block_size, opts.symmetric)) - w
    h = stats.hessian()
    return float(np.sum((e @ h) * e) / max(float(np.sum((w @ h) * w)), 1e-30))


def _calibrated(cfg: DecoderConfig, src: Source, opts: BuildOptions, ratio: float, text: str, samples: int,
                seqlen: int, progress: Progress | None, log):
    """Layer-by-layer calibration (capture/layerwise.py): --ratio's bits from data-aware errors, then the
    GPTQ/AWQ decisions of every layer (LayerResults, for the builder), or None for RTN."""
    from pressa.capture.calibrate import calibration_ids
    from pressa.capture.layerwise import LayerCache, LayerwiseCalibration, cache_key, cache_root

    t1 = time.perf_counter()
    windows = calibration_ids(src.tokenizer_files, text, samples, seqlen)
    run = LayerwiseCalibration(cfg, src.weights, opts, windows, progress)
    if ratio < 1.0 and opts.precision == "int4":
        groups = _weight_groups(cfg, src)
        errors = run.sensitivities(lambda key, st: data_error(
            np.concatenate([src.weights(n) for n in groups[key]]), st, opts))
        opts.layer_bits = mixed_bits(cfg, src, opts, ratio, progress, errors, log)
    if opts.algorithm == "rtn":
        return None
    results = run.run(LayerCache(cache_root() / cache_key(src.location, windows, opts, True)), log=log)
    log(f"calibration: {len(windows)} x {seqlen} tokens, layer by layer, in {time.perf_counter() - t1:.1f} s")
    return results


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
    return {k: v for k, v in asdict(opts).items() if k not in ("layer_bits", "capture_inputs")}


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
    lora = RuntimeAdapters(specs, family)
    log(f"run-time adapters: {', '.join(lora.names)} (ids 1..{len(lora.names)}; 0 is the base)")
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
        return _general(src, out_dir, opts, provider, str(err), log, progress, workflow, t0)
    lora = _prepare_weights(cfg, src, opts, log)
    if not cfg.arch.calibrated and (opts.algorithm != "rtn" or ratio < 1.0):
        raise BadArgument(f"{cfg.arch.model_type}: --algorithm {opts.algorithm} and --ratio are not built for its "
                          "layer form yet (they fold scales into a pre-norm before a gated MLP); use the default RTN")
    log(f"source: {src.kind} {src.location} ({cfg.arch.model_type}, {cfg.num_layers} layers, "
        f"hidden {cfg.hidden_size}, vocab {cfg.vocab_size})")
    calib = None
    if opts.algorithm != "rtn" or (ratio < 1.0 and calibration_text):
        if not calibration_text:
            raise BadArgument(f"--algorithm {opts.algorithm} needs --calibration-data FILE (plain text)")
        calib = _calibrated(cfg, src, opts, ratio, calibration_text, calibration_samples, calibration_seqlen,
                            progress, log)
    elif ratio < 1.0 and opts.precision == "int4":
        opts.layer_bits = mixed_bits(cfg, src, opts, ratio, progress, log=log)
    builder = DecoderBuilder(cfg, src.weights, opts, calib)
    builder.lora = lora
    info = builder.build(out_dir, progress)
    if lora:
        lora.write(out_dir)
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
        settings=settings, mixed_precision=opts.layer_bits or None,
        graph={"op_counts": info["op_counts"], "context_length": info["context_length"],
               "logits": "last" if opts.last_token_logits else "all"},
        build_seconds=seconds))
