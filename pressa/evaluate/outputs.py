"""How close one model's outputs are to another's on the same inputs: cosine similarity of embeddings
(hidden states mean-pooled over real tokens), top-1 agreement of logits, absolute errors."""

from __future__ import annotations

import numpy as np


def _pool(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if x.ndim == 3:
        if mask is None:
            return x.mean(axis=1)
        m = mask.astype(np.float64)[..., None]
        return (x * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return x.reshape(x.shape[0], -1)


def metric_for(name: str) -> str:
    """How an output is compared: "top1" (argmax agreement) for logits, else "cosine"."""
    return "top1" if "logits" in name else "cosine"


class Agreement:
    """Accumulates, batch by batch, the agreement of `got` with `ref` for each output."""

    def __init__(self, names: list[str]):
        self.names = names
        self.cos: dict[str, list] = {n: [] for n in names}
        self.top1: dict[str, list] = {n: [] for n in names}
        self.abs_max = dict.fromkeys(names, 0.0)
        self.abs_sum = dict.fromkeys(names, 0.0)
        self.count = dict.fromkeys(names, 0)

    def add(self, ref: list[np.ndarray], got: list[np.ndarray], mask: np.ndarray | None) -> None:
        for name, r, g in zip(self.names, ref, got):
            r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
            keep = np.ones(r.shape, bool)
            if mask is not None and r.ndim >= 2 and r.shape[:2] == mask.shape:
                keep = np.broadcast_to(mask.astype(bool).reshape(mask.shape + (1,) * (r.ndim - 2)), r.shape)
            d = np.abs(r - g)[keep]
            if d.size:
                self.abs_max[name] = max(self.abs_max[name], float(d.max()))
                self.abs_sum[name] += float(d.sum())
                self.count[name] += d.size
            if metric_for(name) == "top1" and r.ndim >= 2:
                same = r.argmax(-1) == g.argmax(-1)
                if r.ndim == 3 and mask is not None and r.shape[:2] == mask.shape:
                    same = same[mask.astype(bool)]
                self.top1[name].extend(np.ravel(same).tolist())
            else:
                a, b = _pool(r, mask), _pool(g, mask)
                num = (a * b).sum(-1)
                den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
                self.cos[name].extend((num / np.maximum(den, 1e-12)).tolist())

    def result(self) -> dict:
        out = {}
        for n in self.names:
            row = {"max_abs_error": self.abs_max[n], "mean_abs_error": self.abs_sum[n] / max(self.count[n], 1)}
            if self.cos[n]:
                row.update(cosine_mean=float(np.mean(self.cos[n])), cosine_min=float(np.min(self.cos[n])))
            if self.top1[n]:
                row["top1_agreement"] = float(np.mean(self.top1[n]))
            out[n] = row
        return out

    def score(self) -> float:
        """One number in [0, 1] for the first output: mean cosine, or top-1 agreement for logits."""
        r = self.result()[self.names[0]]
        return r.get("top1_agreement", r.get("cosine_mean", 0.0))
