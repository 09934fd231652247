"""Shared helpers for the benchmark scripts: machine description, JSON + table output."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    from pressa.runtime.session import cpu_name

    mem = 0
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "memory_mb": mem, "python": platform.python_version()}


def memory_bandwidth(gib: float = 1.0, runs: int = 5) -> float:
    """Bytes/s this machine reads from memory with every core: the best of `runs` matrix-vector products
    over a `gib` GiB float32 matrix (BLAS reads each element once; far larger than any cache)."""
    import time

    import numpy as np

    cols = 16384
    a = np.ones((int(gib * (1 << 30)) // (4 * cols), cols), np.float32)
    x = np.ones(cols, np.float32)
    a @ x
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        a @ x
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best


def emit(result: dict, rows: list[tuple], headers: tuple, as_json_only: bool = False) -> None:
    """JSON on stdout first (one line), then a markdown table on stderr unless only JSON was asked."""
    print(json.dumps(result))
    if as_json_only:
        return
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    print(line(headers), file=sys.stderr)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=sys.stderr)
    for r in rows:
        print(line(r), file=sys.stderr)
