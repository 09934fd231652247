"""Next-token choice from logits [B, V]: greedy, or temperature / top-k / top-p sampling, with a
repetition penalty as transformers applies it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SamplingConfig:
    temperature: float = 0.0          # 0 = greedy
    top_k: int = 0                    # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_new_tokens: int = 128
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None       # report each chosen token's log-probability and this many alternatives
    adapter: str | None = None        # the run-time LoRA adapter the sequence decodes with (None: the base)
    grammar: str | None = None        # the output is held to this llguidance grammar (genai/constraints.py)
    skip_special_tokens: bool = True  # leave special tokens out of the text (False: a tool-call marker is one)
    speculative: str = "off"          # "lookup": prompt-lookup drafts verified in one step (genai/speculative.py)
    draft_tokens: int = 7             # drafted tokens per step at most (fewer where they are seldom accepted)


def token_logprobs(logits: np.ndarray, token: int, top: int) -> dict:
    """The chosen token's log-probability under the model's distribution (the raw logits [V], before
    temperature or penalties, as OpenAI reports them) and the `top` most likely tokens with theirs."""
    x = logits.astype(np.float64)
    lse = x.max() + np.log(np.exp(x - x.max()).sum())
    best = np.argpartition(-x, top - 1)[:top] if 0 < top < x.size else np.arange(x.size if top else 0)
    best = best[np.argsort(-x[best], kind="stable")]
    return {"id": int(token), "logprob": float(x[token] - lse),
            "top": [(int(i), float(x[i] - lse)) for i in best]}


def apply_repetition_penalty(logits: np.ndarray, seen: list[np.ndarray], penalty: float) -> None:
    """In place: seen tokens' logits divided by `penalty` when positive, multiplied when negative."""
    if penalty == 1.0:
        return
    for b, ids in enumerate(seen):
        if ids.size:
            u = np.unique(ids)
            v = logits[b, u]
            logits[b, u] = np.where(v > 0, v / penalty, v * penalty)


def probabilities(logits: np.ndarray, cfg: SamplingConfig) -> np.ndarray | None:
    """The distribution [B, V] a row's next token is drawn from (temperature, top-k, top-p), or None
    where the choice is greedy. `logits` may be modified."""
    if cfg.temperature <= 0:
        return None
    with np.errstate(over="ignore"):
        x = logits.astype(np.float64) / cfg.temperature
    if not np.isfinite(x.max(axis=-1)).all():     # a temperature so small the scaled logits overflow: its
        return None                                 # limit, greedy (-inf: a token a grammar rules out)
    if cfg.top_k and cfg.top_k < x.shape[-1]:
        kth = np.partition(x, -cfg.top_k, axis=-1)[:, -cfg.top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    x -= x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=-1, keepdims=True)
    if cfg.top_p < 1.0:
        p = np.stack([_nucleus(row, cfg.top_p) for row in p])
    return p


def choose(logits: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator) -> np.ndarray:
    """One token per row. `logits` may be modified."""
    p = probabilities(logits, cfg)
    return logits.argmax(axis=-1) if p is None else draw(p, rng)


def draw(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row of the distributions p [B, V] (inverse CDF, one uniform per row)."""
    u = rng.random((p.shape[0], 1))
    return np.minimum((np.cumsum(p, axis=-1) < u).sum(axis=-1), p.shape[-1] - 1)


def _nucleus(p: np.ndarray, top_p: float, first: int = 512) -> np.ndarray:
    """`p` with everything outside the smallest set of most likely tokens reaching `top_p` zeroed,
    renormalized. The set is looked for among the `first` most likely tokens (a partial selection,
    linear in the vocabulary) and the whole vocabulary is sorted only when those fall short."""
    k = min(first, p.size)
    cand = np.argpartition(-p, k - 1)[:k] if k < p.size else np.arange(p.size)
    if k < p.size and p[cand].sum() < top_p:
        cand = np.arange(p.size)
    order = cand[np.argsort(-p[cand], kind="stable")]
    sorted_p = p[order]
    keep = order[(np.cumsum(sorted_p) - sorted_p) < top_p]
    out = np.zeros_like(p)
    out[keep] = p[keep]
    return out / out.sum()
