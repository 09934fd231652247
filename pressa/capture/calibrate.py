"""Calibration statistics for accuracy-aware quantization: the inputs of every linear layer, seen on
calibration text (gathered layer by layer: capture/layerwise.py).

Per weight key ("{layer}.qkv", ".o", ".gate_up", ".down"): H = X^T X (GPTQ), mean |x| per channel
and a random sample of input rows (AWQ's scale search)."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pressa.errors import BadArgument

SAMPLE_ROWS = 512


@dataclass
class InputStats:
    h: np.ndarray | None                # [K, K] float32, sum of x x^T (None where nothing reads it)
    abs_sum: np.ndarray                 # [K] float64
    count: int = 0
    rows: list = field(default_factory=list)
    upper_only: bool = False            # h holds only its upper block triangle (add_gram) until hessian()

    def hessian(self) -> np.ndarray:
        """H = X^T X, whole."""
        if self.upper_only:
            edges = _gram_edges(len(self.h))
            for i in range(len(edges) - 1):
                rows = slice(edges[i], edges[i + 1])
                self.h[edges[i + 1]:, rows] = self.h[rows, edges[i + 1]:].T
            self.upper_only = False
        return self.h

    @property
    def absmean(self) -> np.ndarray:
        return (self.abs_sum / max(self.count, 1)).astype(np.float32)

    def sample(self) -> np.ndarray:
        return np.concatenate(self.rows)[:SAMPLE_ROWS]


def calibration_windows(text: str, encode: Callable[[str], list[int]], samples: int, seqlen: int,
                        seed: int = 0) -> list[list[int]]:
    """Windows of `seqlen` tokens from the text's paragraphs (headings and short lines skipped),
    drawn at random positions so that they cover the whole file."""
    lines = [ln.strip() for ln in text.splitlines() if len(ln.strip()) > 80 and not ln.strip().startswith("=")]
    if not lines:
        raise BadArgument("the calibration data has no usable lines (paragraphs of 80+ characters)")
    rng = np.random.default_rng(seed)
    out, tries = [], 0
    while len(out) < samples and tries < samples * 50:
        tries += 1
        start = int(rng.integers(0, len(lines)))
        ids: list[int] = []
        for ln in lines[start:]:
            ids += encode(ln + "\n")
            if len(ids) >= seqlen:
                break
        if len(ids) >= seqlen:
            out.append(ids[:seqlen])
    if not out:
        raise BadArgument(f"the calibration data is shorter than one window of {seqlen} tokens")
    return out


def calibration_ids(tokenizer_files: dict, text: str, samples: int, seqlen: int, seed: int = 0) -> list[list[int]]:
    """calibration_windows of the text, tokenized by the model's own tokenizer files."""
    from pressa.genai.tokenizer import TextTokenizer
    from pressa.tempdirs import temp_dir

    with temp_dir("calibration-") as d:
        for name, data in tokenizer_files.items():
            (Path(d) / name).write_bytes(data)
        tok = TextTokenizer(Path(d))
        return calibration_windows(text, lambda s: tok.encode(s, add_special_tokens=False), samples, seqlen, seed)


def _gram_edges(k: int) -> np.ndarray:
    return np.linspace(0, k, max(1, k // 512) + 1).astype(int)


def add_gram(h: np.ndarray, x: np.ndarray) -> None:
    """h += x^T x in its upper block triangle only (blocks of ~512 columns): half the products of the
    whole, which for a 4,864-wide input is most of a layer's calibration time."""
    edges = _gram_edges(x.shape[1])
    for i in range(len(edges) - 1):
        rows = slice(edges[i], edges[i + 1])
        h[rows, edges[i]:] += x[:, rows].T @ x[:, edges[i]:]


def accumulate(stats: dict[str, InputStats], key: str, x: np.ndarray, first_window: int, windows: int,
               seed: int = 0, hessian: bool = True) -> None:
    """Add the inputs `x` ([n, seq, K]) of the linear `key` on windows first_window.. to its statistics,
    all n windows in one X^T X (far faster than window by window; skipped without `hessian`, which only
    GPTQ and the data-aware --ratio read). The sampled rows depend only on (seed, key, window), however
    windows are batched."""
    x = np.asarray(x, np.float32)
    if x.ndim == 2:
        x = x[None]
    st = stats.get(key)
    if st is None:
        st = stats[key] = InputStats(np.zeros((x.shape[-1],) * 2, np.float32) if hessian else None,
                                     np.zeros(x.shape[-1]))
    flat = x.reshape(-1, x.shape[-1])
    if hessian:
        add_gram(st.h, flat)
        st.upper_only = True
    st.abs_sum += np.abs(flat).sum(axis=0)
    st.count += flat.shape[0]
    per_window = max(1, SAMPLE_ROWS // windows + 1)
    for j, rows in enumerate(x):
        rng = np.random.default_rng([seed, zlib.crc32(key.encode()), first_window + j])
        st.rows.append(rows[rng.choice(rows.shape[0], min(per_window, rows.shape[0]), replace=False)])
