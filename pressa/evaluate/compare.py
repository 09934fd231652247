"""A candidate model against its original on the same inputs: agreement of every output, latency
of both at batch 1, size of both on disk."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from pressa.errors import BadArgument


def _session(path: Path, runtime):
    from pressa.graph.onnx_io import find_model
    from pressa.runtime.session import open_session

    return open_session(find_model(path), runtime=runtime)


def _size(path: Path) -> int:
    from pressa.graph.onnx_io import find_model, model_folder

    m = find_model(path)
    files = [m, m.with_name(m.name + ".data")] if Path(path).is_file() else list(model_folder(path).rglob("*"))
    return sum(f.stat().st_size for f in files if f.is_file())


def _latency(session, feeds: dict, runs: int) -> float:
    from pressa.evaluate.latency import run_times

    return statistics.median(run_times(lambda: session.run(None, feeds), runs))


def compare(reference: Path, candidate: Path, data: Path | None = None, samples: int = 100, batch: int = 8,
            max_length: int = 128, runs: int = 20, runtime=None,
            progress: Callable[[int, int, str], None] | None = None) -> dict:
    """`runtime` (RuntimeOptions, default ONNX Runtime): both models run on it ("auto" means ONNX Runtime here:
    a comparison needs one runtime for both)."""
    from pressa.evaluate.outputs import Agreement
    from pressa.graph.inputs import sample_inputs
    from pressa.graph.onnx_io import load_model, model_folder
    from pressa.quant.calib_data import batches
    from pressa.runtime.options import RuntimeOptions

    runtime = runtime or RuntimeOptions()
    if runtime.backend == "auto":
        runtime = runtime.model_copy(update={"backend": "onnxruntime"})
    ref_s, cand_s = _session(reference, runtime), _session(candidate, runtime)
    ref_out = [o.name for o in ref_s.get_outputs()]
    if ref_out != [o.name for o in cand_s.get_outputs()]:
        raise BadArgument(f"the models' outputs differ ({', '.join(ref_out)} vs "
                          f"{', '.join(o.name for o in cand_s.get_outputs())}); compare a model with its own original")
    graph = load_model(reference, load_data=False)
    if data is not None:
        feeds_list = list(batches(data, graph, model_folder(reference), samples, batch, max_length))
    else:
        feeds_list = [sample_inputs(graph, batch=batch, seed=i) for i in range(max(1, samples // batch))]
    acc = Agreement(ref_out)
    for i, feeds in enumerate(feeds_list):
        if progress:
            progress(i, len(feeds_list), "outputs")
        acc.add(ref_s.run(None, feeds), cand_s.run(None, feeds), feeds.get("attention_mask"))
    one = {k: v[:1] for k, v in feeds_list[0].items()}
    if progress:
        progress(len(feeds_list), len(feeds_list), "latency")
    lat_ref, lat_cand = _latency(ref_s, one, runs), _latency(cand_s, one, runs)
    size_ref, size_cand = _size(reference), _size(candidate)
    return {"reference": str(reference), "candidate": str(candidate),
            "samples": sum(len(next(iter(f.values()))) for f in feeds_list),
            "inputs": "data" if data is not None else "made-up",
            "outputs": acc.result(), "score": acc.score(),
            "latency_ms": {"reference": lat_ref * 1e3, "candidate": lat_cand * 1e3, "speedup": lat_ref / lat_cand},
            "size_mb": {"reference": size_ref / 1e6, "candidate": size_cand / 1e6, "ratio": size_cand / size_ref}}
