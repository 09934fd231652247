"""The loss curve of a fine-tuning run as a PNG (Pillow, no plotting library)."""

from __future__ import annotations

from pathlib import Path

W, H, PAD = 720, 400, 56


def loss_png(losses: list[float], path: Path, title: str) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((PAD, 16), title, fill="black")
    if not losses:
        img.save(path)
        return
    lo, hi = min(losses), max(losses)
    hi = hi if hi > lo else lo + 1.0
    x0, y0, x1, y1 = PAD, PAD, W - PAD // 2, H - PAD
    d.rectangle((x0, y0, x1, y1), outline="#888888")
    for frac in (0.0, 0.5, 1.0):
        y = y1 - frac * (y1 - y0)
        d.text((6, y - 6), f"{lo + frac * (hi - lo):.2f}", fill="#444444")
        d.line((x0, y, x1, y), fill="#dddddd")
    n = len(losses)
    d.text((x0, y1 + 8), "step 1", fill="#444444")
    d.text((x1 - 60, y1 + 8), f"step {n}", fill="#444444")

    def point(i: int, v: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * (i / max(1, n - 1)), y1 - (y1 - y0) * (v - lo) / (hi - lo)

    d.line([point(i, v) for i, v in enumerate(losses)], fill="#9bb7e0", width=1)
    k = max(1, n // 20)                                  # a moving average over ~5% of the run
    smooth = [sum(losses[max(0, i - k + 1): i + 1]) / len(losses[max(0, i - k + 1): i + 1]) for i in range(n)]
    d.line([point(i, v) for i, v in enumerate(smooth)], fill="#1f4e9c", width=3)
    img.save(path)
