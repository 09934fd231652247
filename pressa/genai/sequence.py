"""One generation: its prompt, sampler, detokenizer and stop logic. The engine (pressa.genai.slots)
only gives a sequence its logits; the sequence chooses its token and says when it is done."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pressa.errors import BadArgument
from pressa.genai.sampling import SamplingConfig, apply_repetition_penalty, choose, probabilities, token_logprobs
from pressa.genai.speculative import residual_sample
from pressa.genai.tokenizer import TextTokenizer

# emit(text, finish, generated): text pieces as they become safe to show; on the last call `finish`
# is "stop" | "length" (and `generated` the tokens made), or "error: ..." with text None. With
# cfg.logprobs set, a fourth argument: the tokens' log-probability records since the last call
# (sampling.token_logprobs), which may run ahead of or behind the text held back
Emit = Callable[..., None]


def check_request(ids: list[int], cfg: SamplingConfig, backend) -> None:
    """A one-line error for an empty prompt, no new tokens, or an adapter the model (`backend`) lacks."""
    if not ids:
        raise BadArgument("empty prompt: give at least one token")
    if cfg.max_new_tokens < 1:
        raise BadArgument("max new tokens must be at least 1")
    backend.adapter_id(cfg.adapter)


class Detokenizer:
    """Incremental detokenization of one sequence, holding back text that may still change:
    an incomplete UTF-8 character, or the start of a stop string."""

    def __init__(self, tok: TextTokenizer, stops: list[str], skip_special: bool = True):
        self.tok, self.stops, self.skip_special = tok, stops, skip_special
        self.ids: list[int] = []
        self.emitted = 0
        self.text = ""
        self.stopped = False            # a stop string appeared
        self.hold = max((len(s) for s in stops), default=1) - 1

    def push(self, token: int) -> str:
        """Feed one generated token; returns the text now safe to show. Sets `stopped` when a stop
        string appears (the text ends before it)."""
        self.ids.append(token)
        self.text = self.tok.decode(self.ids, skip_special_tokens=self.skip_special)
        for s in self.stops:
            k = self.text.find(s, max(0, self.emitted - len(s)))
            if k >= 0:
                self.text = self.text[:k]
                self.stopped = True
                return self.flush()
        end = len(self.text) - self.hold
        if self.text.endswith("\ufffd"):
            end = min(end, len(self.text.rstrip("\ufffd")))
        if end > self.emitted:
            out, self.emitted = self.text[self.emitted:end], end
            return out
        return ""

    def flush(self) -> str:
        """The text not shown yet, at the end of the sequence. A character whose bytes were cut off by
        the end (U+FFFD from an incomplete UTF-8 sequence) is dropped, not shown as U+FFFD."""
        self.text = self.text.rstrip("\ufffd")
        out, self.emitted = self.text[self.emitted:], len(self.text)
        return out


@dataclass
class Sequence:
    """One generation. Without a detokenizer it produces token ids only; `cancel()` ends it before the
    next step and frees its slot."""
    ids: list[int]
    cfg: SamplingConfig
    emit: Emit | None = None
    detok: Detokenizer | None = None
    rng: np.random.Generator = field(init=False)
    seen: np.ndarray | None = field(init=False)       # prompt and generated ids, for a repetition penalty
    slot: int = -1
    next_token: int = -1
    count: int = 0                                    # tokens generated, an end-of-sequence token included
    done: str | None = None                           # "stop" | "length" | "error"
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    logprobs: list = field(default_factory=list)      # records not yet emitted (cfg.logprobs set)
    constraint: object | None = None                  # a grammar's state (genai/constraints.Constraint)
    history: list = field(init=False)                 # prompt and chosen tokens (speculative lookup)
    misses: int = 0                                   # verification steps in a row that accepted no draft,
    pause: int = 0                                    # and steps left before drafting again (2**misses - 1)
    tries: list = field(default_factory=lambda: [0, 0, 0, 0])   # first drafts tried, held; later ones tried, held
    drafter: object | None = None                     # a draft model's state (speculative.Drafter)
    corrections: dict = field(default_factory=dict)   # looked-up token -> the token verification chose instead

    def __post_init__(self):
        self.history = list(self.ids)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.seen = np.asarray(self.ids, np.int64) if self.cfg.repetition_penalty != 1.0 else None

    def cancel(self) -> None:
        self.cancelled = True

    def choose(self, logits: np.ndarray, greedy: int | None = None) -> int:
        """The next token from this sequence's logits [1, V] (`greedy`: the argmax, when known)."""
        cfg = self.cfg
        if greedy is not None and cfg.temperature <= 0 and cfg.repetition_penalty == 1.0 and self.constraint is None:
            token = greedy
        else:
            token = int(choose(self._processed(logits), cfg, self.rng)[0])
        self._record(logits, token)
        return token

    @property
    def acceptance(self) -> tuple[float, float]:
        """(the share of its first drafted tokens verification accepted, of its later ones tried once the
        one before held), each with a prior of 1/2 (speculative.expected_tokens)."""
        first, first_held, later, later_held = self.tries
        return (first_held + 1) / (first + 2), (later_held + 1) / (later + 2)

    def count_verification(self, drafts: int, taken: int) -> None:
        """Count a verification step that accepted `taken` of its `drafts` drafted tokens."""
        if drafts:
            later = min(taken, drafts - 1)                      # later drafts reached: their previous held
            self.tries = [a + b for a, b in zip(self.tries, (1, int(taken > 0), later, max(taken - 1, 0)))]

    def verify(self, logits: np.ndarray, draft: list[int], qs: list | None = None) -> list[int]:
        """The tokens plain decoding gives from logits [len(draft) + 1, V] of a step over [next token,
        *draft]: the drafted tokens it accepts, then one of its own (genai/speculative.py). `qs`: the
        distributions a draft model sampled each drafted token from (None: all mass on it)."""
        out: list[int] = []
        for j, d in enumerate(draft):
            x = self._processed(logits[j:j + 1])
            p = probabilities(x, self.cfg)
            q = qs[j] if qs else None
            if p is None:
                token = int(x[0].argmax())
            elif q is None:
                token = d if self.rng.random() < p[0, d] else residual_sample(p[0], d, self.rng)
            else:
                keep = self.rng.random() < min(1.0, p[0, d] / max(q[d], 1e-30))
                token = d if keep else residual_sample(p[0], d, self.rng, q)
            self._record(logits[j:j + 1], token)
            out.append(token)
            if token != d:
                if q is None:                 # a looked-up draft: the text is edited this way (" ," -> ",")
                    self.corrections[d] = token
                    self.corrections.pop(token, None)        # the reverse edit, if any, no longer holds
                return out
        out.append(self.choose(logits[len(draft):len(draft) + 1]))
        return out

    def _processed(self, logits: np.ndarray) -> np.ndarray:
        """A copy of logits [1, V] with the repetition penalty and the grammar's mask applied."""
        logits = logits.copy()
        if self.cfg.repetition_penalty != 1.0:
            apply_repetition_penalty(logits, [self.seen], self.cfg.repetition_penalty)
        if self.constraint is not None:
            self.constraint.mask(logits)
        return logits

    def _record(self, raw: np.ndarray, token: int) -> None:
        self.history.append(token)
        if self.seen is not None:
            self.seen = np.append(self.seen, token)
        if self.cfg.logprobs is not None:
            self.logprobs.append(token_logprobs(raw[0], token, self.cfg.logprobs))

    def accept(self, token: int, eos_ids: set[int]) -> None:
        """Take the chosen token: emit the text it makes safe to show, and end the sequence on an
        end-of-sequence token, a stop string or its length."""
        cfg, detok = self.cfg, self.detok
        self.count += 1
        self.next_token = token
        if self.constraint is not None:
            self.constraint.advance(token)
        if not cfg.ignore_eos and token in eos_ids:
            self.done = "stop"
            piece = detok.flush() if detok else ""
            if self.logprobs:
                self.logprobs.pop()          # the end-of-sequence token is no part of the text
        else:
            piece = detok.push(token) if detok else ""
            if detok and detok.stopped:
                self.done = "stop"
        if not self.done and self.count >= cfg.max_new_tokens:
            self.done = "length"
            piece += detok.flush() if detok else ""
        if self.done:
            self.send(piece, self.done, self.count)
        elif piece:
            self.send(piece, None, 0)

    def send(self, text: str, finish: str | None, generated: int) -> None:
        if self.emit is None:
            return
        if self.cfg.logprobs is None:
            self.emit(text, finish, generated)
        else:
            records, self.logprobs = self.logprobs, []
            self.emit(text, finish, generated, records)

    def fail(self, msg: str) -> None:
        self.done = "error"
        if self.emit is not None:
            self.emit(None, f"error: {msg}", 0)
