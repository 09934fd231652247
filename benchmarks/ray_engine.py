"""The 6-trial SmolLM2 search (examples/smollm2-int4-search.json: group size 32/64/128 x ratio 1.0/0.9,
perplexity, latency and size) with the local executor and with Ray on this machine (a local Ray with its
CPUs as workers), each from an empty step cache; Ray's own costs apart: starting it, and a trial's round
trip (a task carrying the workflow and a trial, returning a trial) with no work in it.

    python benchmarks/ray_engine.py [--config examples/smollm2-int4-search.json] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _common import emit, machine  # noqa: E402


def search(config: Path, executor: str, cache: Path, out: Path) -> dict:
    from pressa.engine.config import load_workflow
    from pressa.engine.search import run_workflow
    from pressa.sources.bundled import bundled_path

    wf = load_workflow(config, str(bundled_path()), out)
    wf.cache_dir, wf.executor = cache, {**wf.executor, "kind": executor}
    t0 = time.perf_counter()
    summary = run_workflow(wf, lambda s: None)
    import json

    foot = json.loads((out / "footprints.json").read_text())
    return {"wall_s": time.perf_counter() - t0, "trials": len(foot["trials"]), "chosen": summary["chosen"],
            "trial_seconds": [t["seconds"] for t in foot["trials"]],
            "failed": sum(1 for t in foot["trials"] if t["error"])}


def ray_costs(rounds: int = 50) -> dict:
    import ray

    from pressa.engine.config import load_workflow
    from pressa.engine.runner import Trial

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    echo = ray.remote(max_retries=0)(lambda t, wf: t)
    wf = load_workflow(HERE.parent / "examples" / "smollm2-int4-search.json")
    ray.get(echo.remote(Trial(0, {}), wf))
    start = time.perf_counter() - t0
    times = []
    for i in range(rounds):
        t1 = time.perf_counter()
        ray.get(echo.remote(Trial(i, {"builder": {"group_size": 32}}), wf))
        times.append(time.perf_counter() - t1)
    t2 = time.perf_counter()
    ray.shutdown()
    return {"start_s": start, "round_trip_ms": statistics.median(times) * 1e3, "stop_s": time.perf_counter() - t2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=HERE.parent / "examples" / "smollm2-int4-search.json")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    costs = ray_costs()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for executor in ("local", "ray"):
            runs[executor] = search(a.config, executor, Path(tmp) / f"cache-{executor}", Path(tmp) / executor)
    local, ray = runs["local"], runs["ray"]
    rows = [(name, f"{r['wall_s']:.0f}", str(r["trials"]), str(r["failed"]),
             f"{statistics.mean(r['trial_seconds']):.1f}", str(r["chosen"])) for name, r in runs.items()]
    emit({"benchmark": "ray_engine", "runs": runs, "ray": costs, "speedup": local["wall_s"] / ray["wall_s"],
          "same_choice": local["chosen"] == ray["chosen"], "machine": machine()}, rows,
         ("executor", "wall s", "trials", "failed", "mean trial s", "chosen"), a.json)
    print(f"ray: start {costs['start_s']:.1f} s, a trial's round trip {costs['round_trip_ms']:.1f} ms, "
          f"stop {costs['stop_s']:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
