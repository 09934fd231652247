"""Wall time and peak RSS of `pressa auto-opt` on the bundled model.

    python benchmarks/auto_opt.py [--precision int4] [--runs 3] [--json]

Each run is a fresh process; peak RSS is the child's max resident set (getrusage).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pressa.evaluate.latency import spread  # noqa: E402

from _common import emit, machine  # noqa: E402


def one_run(precision: str, out: Path, extra: list[str]) -> tuple[float, float]:
    import os

    pid = os.fork()
    if pid == 0:          # a child that only runs the command, so its rusage is the command's alone
        res = subprocess.run([sys.executable, "-m", "pressa", "auto-opt", "-o", str(out), "--precision", precision,
                              "--overwrite", "--log_level", "3", *extra])
        os._exit(res.returncode)
    t0 = time.perf_counter()
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"auto-opt failed (status {status})")
    return wall, usage.ru_maxrss / 1024            # KiB -> MiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", default="int4")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="JSON only (no table)")
    ap.add_argument("extra", nargs="*", help="more auto-opt flags, after --")
    a = ap.parse_args()
    walls, rss = [], []
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "model"
        for _ in range(a.runs):
            w, r = one_run(a.precision, out, a.extra)
            walls.append(w)
            rss.append(r)
        size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
        shutil.rmtree(out, ignore_errors=True)
    res = {"benchmark": "auto_opt", "model": "SmolLM2-135M-Instruct (bundled)", "precision": a.precision,
           "wall_s": spread(walls), "peak_rss_mb": spread(rss), "size_mb": round(size, 1),
           "machine": machine(), "command": " ".join(["pressa auto-opt --precision", a.precision, *a.extra])}
    emit(res, [(a.precision, f"{res['wall_s']['median']:.2f}", f"{res['peak_rss_mb']['median']:.0f}",
                f"{size:.1f}")], ("precision", "wall s (median)", "peak RSS MB", "size MB"), a.json)


if __name__ == "__main__":
    main()
