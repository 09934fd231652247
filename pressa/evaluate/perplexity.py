"""Perplexity by the shared protocol: the whole text tokenized without special tokens, the first
`windows` non-overlapping windows of `window_size` tokens, one forward pass per window without
cache, mean NLL over the window_size - 1 predicted positions, exp of the mean over windows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pressa.errors import BadArgument


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def window_nll(logits: np.ndarray, ids: np.ndarray) -> float:
    """Mean negative log-likelihood of ids[1:] under logits[:-1]."""
    lp = log_softmax(logits[:-1])
    return float(-lp[np.arange(len(ids) - 1), ids[1:]].mean())


def make_windows(ids: list[int], windows: int, window_size: int) -> list[list[int]]:
    n = min(windows, len(ids) // window_size)
    if n < 1:
        raise BadArgument(f"the text has {len(ids)} tokens, fewer than one window of {window_size}; "
                          "give a longer file or a smaller --window-size")
    return [ids[i * window_size:(i + 1) * window_size] for i in range(n)]


def perplexity(folder: Path, text: str, windows: int = 32, window_size: int = 512, batch: int = 2,
               threads: int | None = None, progress: Callable[[int, int, str], None] | None = None,
               adapter: str | None = None) -> dict:
    from pressa.genai.decoder_session import DecoderSession
    from pressa.genai.tokenizer import TextTokenizer

    tok = TextTokenizer(folder)
    chunks = make_windows(tok.encode(text, add_special_tokens=False), windows, window_size)
    session = DecoderSession(folder, threads=threads, hint="throughput", all_logits=True)
    session.adapter_id(adapter)
    nlls: list[float] = []
    for i in range(0, len(chunks), batch):
        rows = chunks[i:i + batch]
        _, logits = session.prefill(rows, capacity=window_size, adapter=adapter)
        nlls += [window_nll(logits[b], np.asarray(r)) for b, r in enumerate(rows)]
        if progress:
            progress(len(nlls), len(chunks), f"window {len(nlls)}/{len(chunks)}")
    return {"perplexity": float(np.exp(np.mean(nlls))), "tokens": len(chunks) * window_size,
            "windows": len(chunks), "window_size": window_size, "mean_nll": float(np.mean(nlls))}
