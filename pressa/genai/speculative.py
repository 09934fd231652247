"""Exact speculative decoding by prompt lookup: where the output echoes the input (summaries, edits,
code, extraction), the tokens that followed the latest earlier occurrence of the last few tokens are
a likely continuation. They are drafted for free, and one step of the model over [next token, drafts]
verifies them all at once (pressa.genai.slots): a memory-bound decoder reads its weights once for
several tokens.

Verification keeps the output exactly what plain decoding gives: greedy accepts a drafted token only
where it is the argmax; sampling uses the standard rejection rule, which for a drafted token (a draft
distribution with all its mass on it) accepts it with the target probability p(d) and otherwise samples
from p with d removed, so every token is distributed as plain sampling would draw it.
"""

from __future__ import annotations

import numpy as np

MODES = ("lookup", "off")
VERIFY_WINDOW = 8             # a verification step scores at most this many positions (drafts + 1)

NGRAM_MAX, NGRAM_MIN = 3, 1   # the longest suffix looked up first


def check_mode(mode: str | None) -> str:
    from pressa.errors import BadArgument

    mode = mode or "off"
    if mode == "draft":
        raise BadArgument("--speculative draft (a small draft model) is not built yet; use lookup or off")
    if mode not in MODES:
        raise BadArgument(f"--speculative {mode}: use lookup or off")
    return mode


def lookup_draft(history: np.ndarray, k: int) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the history's last n tokens
    (n = 3, then 2, then 1); [] when none occurred before."""
    size = len(history)
    for n in range(min(NGRAM_MAX, size - 1), NGRAM_MIN - 1, -1):
        windows = np.lib.stride_tricks.sliding_window_view(history[:size - 1], n)
        hits = np.flatnonzero((windows == history[size - n:]).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return history[start:start + k].tolist()
    return []


def residual_sample(p: np.ndarray, rejected: int, rng: np.random.Generator) -> int:
    """A token from p with `rejected` removed (renormalized): the rejection rule's correction for a
    drafted token that was not accepted."""
    q = p.astype(np.float64).copy()
    q[rejected] = 0.0
    total = q.sum()
    if total <= 0:
        return int(np.argmax(p))
    return int(min(np.searchsorted(np.cumsum(q), rng.random() * total, side="right"), len(q) - 1))
