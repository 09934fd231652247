"""The Python API: the CLI's verbs as functions, for users who work as NNCF's and torchao's do. Each
builds the same workflow as its command (so an artifact made here rebuilds with `pressa run --config
ARTIFACT/pressa.json`), writes an artifact folder and returns it opened with `pressa.load`.
Calibration data may be a path (as on the command line) or any iterable of texts or input dicts."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pressa.errors import BadArgument

COMPRESS_MODES = {"int4_sym": (4, True), "int4_asym": (4, False), "int8": (8, True), "int8_sym": (8, True),
                  "int8_asym": (8, False)}


def _run_job(model, steps: list[tuple[str, str, dict]], output, overwrite: bool, extra: dict | None = None):
    import pressa
    from pressa.engine.execute import execute, job

    execute(job(model, steps), Path(output), overwrite, extra=extra)
    return pressa.load(output)


def _split_dataset(dataset) -> tuple[str | None, Iterable | None]:
    """(a path for the recorded workflow, or None; an in-memory dataset, or None)."""
    if dataset is None or isinstance(dataset, str | Path):
        return (str(dataset) if dataset is not None else None), None
    if not isinstance(dataset, Iterable):
        raise BadArgument(f"dataset of type {type(dataset).__name__}: give a path or an iterable of texts or dicts")
    return None, dataset


def auto_opt(model: str | None = None, output: str | Path = "models/optimized", *, overwrite: bool = False,
             dataset=None, **options):
    """`pressa auto-opt`: a decoder LLM built from its weights. `options` are ModelBuilder's
    (`pressa passes`): precision, group_size, symmetric, ratio, algorithm, ...; `dataset`: calibration
    text (a file, or an iterable of strings) for awq/gptq and data-aware ratio."""
    path, in_memory = _split_dataset(dataset)
    extra = {"calibration_text": "\n".join(_texts(in_memory))} if in_memory is not None else None
    return _run_job(model, [("auto-opt", "model-builder", {**options, "calibration_data": path})], output,
                    overwrite, extra)


def _texts(dataset) -> list[str]:
    texts = list(dataset)
    if not all(isinstance(t, str) for t in texts):
        raise BadArgument("an LLM's calibration dataset is text: give an iterable of strings")
    return texts


def quantize(model: str | Path, output: str | Path, *, mode: str = "static", dataset=None,
             overwrite: bool = False, **options):
    """`pressa quantize`: static QDQ INT8 (calibrated on `dataset`: a text file, image folder, .npy/.npz,
    or an iterable of texts or input dicts), dynamic INT8, or weight-only int4/int8 of any ONNX model.
    `options` are the pass's (`pressa passes`)."""
    modes = {"static": "quantize-static", "dynamic": "quantize-dynamic", "weight-only": "quantize-weight-only"}
    if mode not in modes:
        raise BadArgument(f"mode {mode!r}: use static, dynamic or weight-only")
    path, in_memory = _split_dataset(dataset)
    extra = None
    if mode == "static":
        options = {**options, "calibration_data": path}
        extra = {"calibration_data": in_memory} if in_memory is not None else None
    elif dataset is not None:
        raise BadArgument(f"mode {mode} takes no dataset")
    return _run_job(model, [(modes[mode], modes[mode], options)], output, overwrite, extra)


def compress_weights(model: str | Path, output: str | Path, *, mode: str = "int8", ratio: float = 1.0,
                     group_size: int = 128, dataset=None, overwrite: bool = False, **options):
    """Weight compression with NNCF's names and meanings: `mode` int4_sym | int4_asym | int8 (int8_sym,
    int8_asym); `ratio`: the share of weights in 4 bits (the rest 8, the most sensitive kept at 8);
    `group_size` along the input axis. A decoder LLM source (Hugging Face folder, GGUF, Hub id) is
    built by auto-opt (`dataset`: text that makes the ratio choice data-aware); an ONNX model gets
    MatMulNBits weights (ratio 1 only)."""
    from pressa.artifact import ArtifactKind, kind_of

    if mode not in COMPRESS_MODES:
        raise BadArgument(f"mode {mode!r}: use one of {', '.join(COMPRESS_MODES)}")
    bits, symmetric = COMPRESS_MODES[mode]
    if kind_of(model) == ArtifactKind.ONNX:
        if ratio != 1.0:
            raise BadArgument("ratio applies to LLM sources (built by auto-opt); an ONNX model takes ratio 1")
        return quantize(model, output, mode="weight-only", overwrite=overwrite,
                        **{"bits": bits, "group_size": group_size, "symmetric": symmetric, **options})
    if bits == 8 and ratio != 1.0:
        raise BadArgument("ratio applies to int4 modes (the share of int4 weights)")
    return auto_opt(model, output, overwrite=overwrite, dataset=dataset,
                    **{"precision": f"int{bits}", "group_size": group_size, "symmetric": symmetric,
                       "ratio": ratio, **options})


def run(config: str | Path | dict, output: str | Path | None = None, overwrite: bool = False, runs: int = 20):
    """`pressa run --config`: a workflow (a config file, an artifact's pressa.json, or a dict in any
    accepted schema); returns the chosen artifact, opened."""
    import pressa
    from pressa.engine.config import load_workflow, parse_workflow
    from pressa.engine.paths import written_by_workflow
    from pressa.engine.search import run_workflow

    if isinstance(config, dict):
        cfg = {**config, "output_dir": str(Path(output).absolute())} if output is not None else config
        wf = parse_workflow(cfg, Path.cwd())
    else:
        wf = load_workflow(Path(config), None, output)
    run_workflow(wf, lambda message: None, overwrite or written_by_workflow(wf.output_dir), runs)
    return pressa.load(wf.output_dir)
