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

MODES = ("lookup", "draft", "off")
VERIFY_WINDOW = 8             # a verification step scores at most this many positions (drafts + 1)
DRAFTER_COST = 0.25           # a draft model's step, as a share of the main model's, in the draft length choice

NGRAM_MAX, NGRAM_MIN = 3, 1   # the longest suffix looked up first


def check_mode(mode: str | None) -> str:
    from pressa.errors import BadArgument

    mode = mode or "off"
    if mode not in MODES:
        raise BadArgument(f"--speculative {mode}: use lookup, draft (with --draft-model) or off")
    return mode


def lookup_draft(history: np.ndarray, k: int, corrections: dict[int, int] | None = None) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the history's last n tokens
    (n = 3, then 2, then 1); [] when none occurred before. A continuation that runs into the present
    (the occurrence lies less than k tokens back: a repeating stretch, a list, a loop) goes on with the
    same period. `corrections` (drafted token -> the token verification chose instead) are applied to
    the history first: text that is rewritten consistently (spacing, spelling, a renamed identifier)
    matches and is drafted as the output writes it."""
    history = np.asarray(history)
    if corrections:
        edited = history.copy()
        for drafted, chosen in corrections.items():
            edited[history == drafted] = chosen
        history = edited
    size = len(history)
    for n in range(min(NGRAM_MAX, size - 1), NGRAM_MIN - 1, -1):
        windows = np.lib.stride_tricks.sliding_window_view(history[:size - 1], n)
        hits = np.flatnonzero((windows == history[size - n:]).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            draft = history[start:start + k].tolist()
            period = size - start
            while len(draft) < k:
                draft.append(draft[len(draft) - period])
            return draft
    return []


Acceptance = float | tuple[float, float]


def expected_tokens(acceptance: Acceptance, drafts: int) -> float:
    """Tokens a verification step over `drafts` drafted tokens yields on average: the step's own token,
    then each draft while the ones before held. `acceptance`: (the first draft's chance, each later
    draft's once the one before it held), or one chance for both. Looked-up drafts come in runs (a
    copied stretch holds token after token, an edit fails at once), so the second is usually higher:
    1 + a1 (1 + c + ... + c^(drafts - 1))."""
    first, then = acceptance if isinstance(acceptance, tuple) else (acceptance, acceptance)
    return 1 + first * sum(then ** i for i in range(drafts))


def best_draft_length(acceptance: Acceptance, cost: float, most: int) -> tuple[int, float]:
    """The draft length (1..most) that gives the most tokens per unit of time, and that rate against
    plain decoding's: k drafts yield expected_tokens(acceptance, k) tokens for a step costing
    1 + cost * k plain steps (`cost`: a drafted token's share of a step, measured by
    measure_draft_cost)."""
    gains = [expected_tokens(acceptance, k) / (1 + cost * k) for k in range(1, most + 1)]
    best = int(np.argmax(gains))
    return best + 1, gains[best]


def verify_alone(rows: list[tuple[int, Acceptance]], cost: float) -> list[bool]:
    """Which rows of a batch verify their drafts in a run of their own, for rows of (drafted tokens,
    acceptance so far): taken in order of tokens per unit of time while they raise the whole step's.
    In units of a one-token step: the batch's step over n rows costs 1 + cost * (n - 1) for n tokens;
    a row verifying k drafts alone adds 1 + cost * k - cost (a run of its own, one row less in the
    batch) for the a + a^2 + ... + a^k tokens it is expected to gain."""
    n = len(rows)
    tokens, time = float(n), 1 + cost * (n - 1)
    gains = sorted(((expected_tokens(a, d) - 1, 1 + cost * (d - 1), j) for j, (d, a) in enumerate(rows) if d),
                   key=lambda g: -g[0] / g[1])
    alone = [False] * n
    for gain, extra, j in gains:
        if (tokens + gain) / (time + extra) > tokens / time:
            tokens, time, alone[j] = tokens + gain, time + extra, True
    return alone


def measure_draft_cost(backend, width: int = 5, runs: int = 3) -> float:
    """A drafted token's extra cost as a share of a one-token step, timed on this backend: a 4-bit
    MatMulNBits scores 5 rows in ~2x the time of one on a 2-core CPU, an fp32 MatMul in ~1.1x."""
    import time

    cache = backend.new_cache(1, width + 2)
    timings = {}
    for w in (1, width):
        ids, mask = np.zeros((1, w), np.int64), np.ones((1, w + 1), np.int64)
        logits = np.empty((1, backend.logits_width(w), backend.vocab_size), np.float32)
        times = []
        for _ in range(runs + 1):
            t = time.perf_counter()
            backend.bind(cache).run(ids, mask, logits, **backend.adapter_rows([None]))
            times.append(time.perf_counter() - t)
        timings[w] = float(np.median(times[1:]))
    return max(0.0, (timings[width] / timings[1] - 1) / (width - 1))


def residual_sample(p: np.ndarray, rejected: int, rng: np.random.Generator, q: np.ndarray | None = None) -> int:
    """A token from max(p - q, 0), renormalized: the rejection rule's correction after the drafted token
    `rejected` was not accepted (q: the draft's distribution; None: all its mass on `rejected`)."""
    r = p.astype(np.float64).copy()
    if q is None:
        r[rejected] = 0.0
    else:
        r = np.maximum(r - q, 0.0)
    total = r.sum()
    if total <= 0:
        return int(np.argmax(p))
    return int(min(np.searchsorted(np.cumsum(r), rng.random() * total, side="right"), len(r) - 1))


class Drafter:
    """A small model's drafts for one sequence (`--speculative draft`): its own one-row cache, fed what
    the sequence chose since the last step, then its own picks, one at a time, sampled with the
    sequence's settings (q, for the rejection rule; greedy picks its argmax)."""

    def __init__(self, backend, capacity: int):
        self.backend, self.held = backend, 0
        self.cache = backend.new_cache(1, capacity)

    def draft(self, s, k: int) -> tuple[list[int], list]:
        from pressa.genai.sampling import draw, probabilities

        feed, tokens, qs = s.history[self.held:], [], []
        dec = self.backend
        for _ in range(k):
            logits = np.empty((1, dec.logits_width(len(feed)), dec.vocab_size), np.float32)
            dec.bind(self.cache).run(np.asarray([feed], np.int64), np.ones((1, self.held + len(feed)), np.int64),
                                     logits)
            self.held += len(feed)
            x = logits[0, -1:].copy()
            q = probabilities(x, s.cfg)
            token = int(x[0].argmax()) if q is None else int(draw(q, s.rng)[0])
            tokens.append(token)
            qs.append(None if q is None else q[0])
            feed = [token]
        return tokens, qs

    def settle(self, before: int, accepted: int, drafted: int) -> None:
        """After verification: the positions still valid are the history before the step and the
        accepted drafts that were fed (all but the last drafted token)."""
        self.held = before + min(accepted, drafted - 1)
