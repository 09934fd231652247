"""Continuous batching: many generations share one decoder session and one KV cache.

A worker thread drives one SlotBatch (pressa.genai.slots, the engine `Model.generate` uses too):

1. sequences that were cancelled (a client went away) leave their slot;
2. waiting sequences take free slots: their prompts are prefilled together where their lengths are
   close, and each samples its first token;
3. one decode step runs every occupied slot together.

A sequence joins or leaves between any two steps, so a long generation never holds up a short one
and decode runs batched, where a memory-bound decoder turns extra rows into nearly free tokens.
Sampling is per sequence (its own settings and random stream): a sequence run alone gets the same
tokens as `Model.generate` with the same seed. Run beside others it may not, where two candidates
are close: ONNX Runtime's MatMulNBits computes one row and several rows with different kernels (in a
4-bit SmolLM2, logits differ by up to ~0.5 between the two).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from pressa.errors import BadArgument, PressaError, first_line
from pressa.genai.model import Model
from pressa.genai.sampling import SamplingConfig
from pressa.genai.sequence import Detokenizer, Emit, Sequence, check_request
from pressa.genai.slots import SlotBatch, prefill_groups

__all__ = ["QueueFull", "Scheduler", "Sequence", "prefill_groups"]


class QueueFull(PressaError):
    """More sequences are waiting than the scheduler's queue holds."""


class Scheduler:
    def __init__(self, model: Model, slots: int = 8, max_queue: int = 64, capacity: int | None = None,
                 on_full: Callable[[], Exception] | None = None):
        """`slots`: sequences decoded together; `capacity`: positions per slot (prompt plus new
        tokens), at most the model's context length (default: that, capped at 4096)."""
        if slots < 1:
            raise BadArgument("a scheduler needs at least one slot")
        self.model = model
        self.max_queue = max_queue
        self.capacity = min(model.session.context_length, capacity or 4096)
        self.on_full = on_full or (lambda: QueueFull(f"{max_queue} generations are waiting; retry shortly"))
        self.batch = SlotBatch(model.session, slots, self.capacity, model.eos_ids, model.prefix_cache,
                               model.draft_backend)
        self.pending: deque[Sequence] = deque()
        self.cond = threading.Condition()
        self.cancelled = 0                # sequences ended by cancel()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name="pressa-scheduler")
        self._thread.start()

    # -- the caller's side ------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.pending)

    @property
    def active(self) -> int:
        return self.batch.active

    # the engine's counters, for /metrics
    prefills = property(lambda self: self.batch.prefills)
    steps = property(lambda self: self.batch.steps)
    step_rows = property(lambda self: self.batch.step_rows)
    generated = property(lambda self: self.batch.generated)
    first_tokens = property(lambda self: self.batch.first_tokens)
    first_token_seconds = property(lambda self: self.batch.first_token_seconds)
    drafted = property(lambda self: self.batch.drafted)
    accepted = property(lambda self: self.batch.accepted)

    def submit(self, ids: list[int], cfg: SamplingConfig, emit: Emit) -> Sequence:
        check_request(ids, cfg, self.model.session)
        if len(ids) + cfg.max_new_tokens > self.capacity:
            raise BadArgument(f"prompt ({len(ids)} tokens) plus max new tokens ({cfg.max_new_tokens}) exceed the "
                              f"{self.capacity} positions a sequence may hold here")
        seq = Sequence(list(ids), cfg, emit, Detokenizer(self.model.tokenizer, cfg.stop, cfg.skip_special_tokens),
                       constraint=self.model.constraint_for(cfg))
        with self.cond:
            if self._closed:
                raise BadArgument("the scheduler is closed")
            if len(self.pending) >= self.max_queue + self.batch.free:    # waiting beyond free slots
                raise self.on_full()
            self.pending.append(seq)
            self.cond.notify()
        return seq

    def close(self) -> None:
        with self.cond:
            self._closed = True
            self.cond.notify()
        self._thread.join(10)

    # -- the worker -------------------------------------------------------------------------
    def _loop(self) -> None:
        batch = self.batch
        while True:
            with self.cond:
                while not self._closed and not self.pending and not batch.active:
                    self.cond.wait()
                if self._closed:
                    for s in [*self.pending, *filter(None, batch.running)]:
                        self._fail(s, "the server is shutting down")
                    return
                gone = [s for s in [*self.pending, *batch.running] if s is not None and s.cancelled]
                for s in gone:
                    if s.slot >= 0:
                        batch.release(s)
                self.cancelled += len(gone)
                kept = [s for s in self.pending if not s.cancelled]
                free = batch.free                           # the slots just freed included
                admit, self.pending = kept[:free], deque(kept[free:])
            try:
                for group in prefill_groups(admit):
                    batch.admit(group)
                if batch.active:
                    batch.step()
            except Exception as err:         # fail what was running; the next requests start clean
                msg = first_line(err, 200)
                for s in [*admit, *batch.running]:
                    if s is not None and not s.done:
                        self._fail(s, msg)

    def _fail(self, s: Sequence, msg: str) -> None:
        s.fail(msg)
        if s.slot >= 0:
            self.batch.release(s)
