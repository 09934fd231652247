"""What a workflow run leaves beside the chosen model: footprints.json (every trial: options, steps,
cache hits, metrics, errors), report.md (a table of candidates, the choice and why) and
candidates.png (speed against accuracy, Pareto front and choice marked)."""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_reports(folder: Path, wf, trials, best, front: set[int], baseline, warning: str | None, passing,
                  seconds: float) -> dict:
    from pressa.engine.ranking import describe

    rows = []
    for t in trials:
        rows.append({**asdict(t), "pareto": t.id in front, "chosen": t.id == best.id,
                     "meets_goals": any(p.id == t.id for p in passing)})
    foot = {"model": wf.model, "algorithm": wf.algorithm, "execution_order": wf.execution_order,
            "seconds": round(seconds, 2), "chosen": best.id, "warning": warning, "notes": wf.notes,
            "baseline": asdict(baseline) if baseline else None, "trials": rows}
    (folder / "footprints.json").write_text(json.dumps(foot, indent=2, default=str))
    cols = [(m, s) for m in sorted({k for t in trials for k in t.metrics}) for s in
            sorted({s for t in trials for s in t.metrics.get(m, {})})]
    cols = [c for c in cols if c[1] in ("avg", "p90", "mb", "perplexity", "agreement", "cosine", "top1",
                                        "tokens_per_s", "items_per_s", "peak_mb")] or cols[:6]
    lines = ["# pressa workflow report", "", f"Model: `{wf.model}`; search: {wf.algorithm}, {wf.execution_order}; "
             f"{len(trials)} trials in {seconds:.1f} s.", ""]
    lines.append(f"Chosen: trial {best.id} ({describe(best.options, wf)}).")
    if warning:
        lines += ["", f"**Warning:** {warning}"]
    if not passing:
        lines += ["", "No candidate meets every goal; the best by the metrics' priorities was written."]
    lines += ["", "| trial | options | " + " | ".join(f"{m} {s}" for m, s in cols) + " | cached steps | note |",
              "|" + "---|" * (len(cols) + 4)]
    for t in trials:
        mark = " (chosen)" if t.id == best.id else (" (pareto)" if t.id in front else "")
        cached = sum(1 for s in t.steps if s.get("cached"))
        vals = [_fmt(t.metrics.get(m, {}).get(s, "")) for m, s in cols]
        note = t.error or "; ".join(f"{s['pass']} skipped: {s['skipped']}" for s in t.steps if s.get("skipped"))
        lines.append(f"| {t.id}{mark} | {describe(t.options, wf)} | " + " | ".join(vals) +
                     f" | {cached}/{len(t.steps)} | {note} |")
    plot = _plot(folder / "candidates.png", trials, best, front, wf)
    if plot:
        lines += ["", f"![candidates](candidates.png): x = {plot[0]}, y = {plot[1]}; "
                  "red = chosen, blue = Pareto front, grey = others."]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return {"chosen": best.id, "options": best.options, "metrics": best.metrics, "trials": len(trials),
            "failed": sum(1 for t in trials if t.error), "warning": warning, "output_dir": str(wf.output_dir)}


def _plot(path: Path, trials, best, front, wf) -> tuple[str, str] | None:
    """Speed (first latency/throughput sub-metric) against accuracy (accuracy, perplexity or guard)."""
    from pressa.engine.ranking import value

    ok = [t for t in trials if t.error is None]
    acc = next(((m.name, m.subs[0].name) for m in wf.metrics if m.type in ("accuracy", "perplexity")), None)
    if acc is None and ok and "accuracy guard" in ok[0].metrics:
        acc = ("accuracy guard", next(iter(ok[0].metrics["accuracy guard"])))
    others = [(m.name, m.subs[0].name) for m in wf.metrics if (m.name, m.subs[0].name) != acc]
    speed = next(((m.name, m.subs[0].name) for m in wf.metrics if m.type in ("latency", "throughput")),
                 others[0] if others else None)
    if acc is None and len(others) > 1:
        acc = others[1]
    if speed is None or acc is None:
        return None
    pts = [(value(t, *speed), value(t, *acc), t) for t in ok]
    pts = [(x, y, t) for x, y, t in pts if x is not None and y is not None]
    if not pts:
        return None
    w, h, pad = 480, 360, 40
    img = np.full((h, w, 3), 255, np.uint8)
    img[h - pad, pad:w - pad] = 0
    img[pad:h - pad, pad] = 0
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    span = lambda a: (a.min(), max(a.max() - a.min(), 1e-12))
    (x0, dx), (y0, dy) = span(xs), span(ys)
    for x, y, t in sorted(pts, key=lambda p: (p[2].id == best.id, p[2].id in front)):
        px = int(pad + 10 + (x - x0) / dx * (w - 2 * pad - 20))
        py = int(h - pad - 10 - (y - y0) / dy * (h - 2 * pad - 20))
        color = (220, 30, 30) if t.id == best.id else ((40, 90, 220) if t.id in front else (150, 150, 150))
        img[max(py - 4, 0):py + 5, max(px - 4, 0):px + 5] = color
    _write_png(path, img)
    return f"{speed[0]} {speed[1]}", f"{acc[0]} {acc[1]}"


def _write_png(path: Path, rgb: np.ndarray) -> None:
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)
