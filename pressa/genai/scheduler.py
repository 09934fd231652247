"""Continuous batching: many generations share one decoder session and one KV cache.

The cache has one row ("slot") per sequence that may run at once, each holding up to `capacity`
positions, bound both as past and as present (GroupQueryAttention's shared-buffer mode, as in
DecoderSession). A worker thread loops:

1. sequences that were cancelled (a client went away) leave their slot;
2. waiting sequences take free slots: their prompts are prefilled together where their lengths are
   close (right-padded, over a cache of their own that is then copied into their slots), and each
   samples its first token;
3. one decode step runs every occupied slot together: one token per sequence, each at its own
   position (GroupQueryAttention reads per-row lengths from the attention mask).

A sequence joins or leaves between any two steps, so a long generation never holds up a short one
and decode runs batched, where a memory-bound decoder turns extra rows into nearly free tokens.
Steps cover slots 0..n-1 for the highest occupied slot n-1; a free slot inside that range costs one
position of attention. Sampling is per sequence (its own settings and random stream): a sequence
run alone gets the same tokens as `Model.generate` with the same seed. Run beside others it may
not, where two candidates are close: ONNX Runtime's MatMulNBits computes one row and several rows
with different kernels (in a 4-bit SmolLM2, logits differ by up to ~0.5 between the two).
"""

from __future__ import annotations

import mmap
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pressa.artifact.llm_io import ATTENTION_MASK, INPUT_IDS, LOGITS, past, present
from pressa.errors import BadArgument, PressaError, first_line
from pressa.genai.model import Model, _Row
from pressa.genai.sampling import SamplingConfig, apply_repetition_penalty, choose, token_logprobs

# emit(text, finish, generated): text pieces as they become safe to show; on the last call `finish`
# is "stop" | "length" (and `generated` the tokens made), or "error: ..." with text None. With
# cfg.logprobs set, a fourth argument: the tokens' log-probability records since the last call
# (sampling.token_logprobs), which may run ahead of or behind the text held back
Emit = Callable[..., None]


def lazy_zeros(shape: tuple, dtype) -> np.ndarray:
    """Zeros in anonymous memory whose pages the kernel maps in 4 KB at first write. (NumPy asks for
    transparent huge pages on large arrays: one key written per head would then fault in 2 MB.)"""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = mmap.mmap(-1, max(size, 1))
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, dtype, count=int(np.prod(shape))).reshape(shape)


def prefill_groups(seqs: list[Sequence], waste: float = 0.25, budget: int = 4096) -> list[list[Sequence]]:
    """Prompts grouped by length for prefilling together: a group pads at most `waste` of its tokens
    and holds at most `budget` padded tokens."""
    groups: list[list[Sequence]] = []
    cur: list[Sequence] = []
    total = 0
    for s in sorted(seqs, key=lambda s: len(s.ids)):
        n = len(s.ids)
        padded = (len(cur) + 1) * n                  # sorted: the newest prompt is the longest
        if cur and (padded > (1 + waste) * (total + n) or padded > budget):
            groups.append(cur)
            cur, total = [], 0
        cur.append(s)
        total += n
    return groups + [cur] if cur else groups


class QueueFull(PressaError):
    """More sequences are waiting than the scheduler's queue holds."""


@dataclass
class Sequence:
    """One generation. `cancel()` ends it before the next step and frees its slot."""
    ids: list[int]
    cfg: SamplingConfig
    emit: Emit
    row: _Row
    rng: np.random.Generator = field(init=False)
    seen: np.ndarray | None = field(init=False)       # prompt and generated ids, for a repetition penalty
    slot: int = -1
    next_token: int = -1
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    logprobs: list = field(default_factory=list)      # records not yet emitted (cfg.logprobs set)

    def __post_init__(self):
        self.rng = np.random.default_rng(self.cfg.seed)
        self.seen = np.asarray(self.ids, np.int64) if self.cfg.repetition_penalty != 1.0 else None

    def cancel(self) -> None:
        self.cancelled = True

    def send(self, text: str, finish: str | None, generated: int) -> None:
        if self.cfg.logprobs is None:
            self.emit(text, finish, generated)
        else:
            records, self.logprobs = self.logprobs, []
            self.emit(text, finish, generated, records)


class Scheduler:
    def __init__(self, model: Model, slots: int = 8, max_queue: int = 64, capacity: int | None = None,
                 on_full: Callable[[], Exception] | None = None):
        """`slots`: sequences decoded together; `capacity`: positions per slot (prompt plus new
        tokens), at most the model's context length (default: that, capped at 4096)."""
        if slots < 1:
            raise BadArgument("a scheduler needs at least one slot")
        self.model, self.dec = model, model.session
        self.ort, self.session = self.dec.ort, self.dec.session
        self.slots, self.max_queue = slots, max_queue
        self.capacity = min(self.dec.context_length, capacity or 4096)
        self.on_full = on_full or (lambda: QueueFull(f"{max_queue} generations are waiting; retry shortly"))
        shape = (slots, self.dec.kv_heads, self.capacity, self.dec.head_size)
        # memory grows with the positions really used, not with slots x capacity
        self.cache = [(lazy_zeros(shape, self.dec.kv_dtype), lazy_zeros(shape, self.dec.kv_dtype))
                      for _ in range(self.dec.num_layers)]
        self.lengths = np.zeros(slots, np.int64)
        self.running: list[Sequence | None] = [None] * slots
        self.pending: deque[Sequence] = deque()
        self.cond = threading.Condition()
        self.prefills = 0                 # prefill runs (each for one or more prompts)
        self.steps = 0                    # decode steps run
        self.step_rows = 0                # sequences advanced, summed over steps
        self.generated = 0                # tokens generated
        self.cancelled = 0                # sequences ended by cancel()
        self.first_tokens = 0             # sequences that got their first token, and the time they
        self.first_token_seconds = 0.0    # waited for it (queue and prefill), summed
        self._bound_n = 0
        self._closed = False
        self._logits = np.zeros((slots, 1, self.dec.vocab_size), np.float32)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="pressa-scheduler")
        self._thread.start()

    # -- the caller's side ------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.pending)

    @property
    def active(self) -> int:
        return sum(s is not None for s in self.running)

    def submit(self, ids: list[int], cfg: SamplingConfig, emit: Emit) -> Sequence:
        if not ids:
            raise BadArgument("empty prompt: give at least one token")
        if cfg.max_new_tokens < 1:
            raise BadArgument("max new tokens must be at least 1")
        if len(ids) + cfg.max_new_tokens > self.capacity:
            raise BadArgument(f"prompt ({len(ids)} tokens) plus max new tokens ({cfg.max_new_tokens}) exceed the "
                              f"{self.capacity} positions a sequence may hold here")
        seq = Sequence(list(ids), cfg, emit, _Row(self.model.tokenizer, cfg.stop))
        with self.cond:
            if self._closed:
                raise BadArgument("the scheduler is closed")
            if len(self.pending) >= self.max_queue + self.running.count(None):    # waiting beyond free slots
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
        while True:
            with self.cond:
                while not self._closed and not self.pending and not any(self.running):
                    self.cond.wait()
                if self._closed:
                    for s in [*self.pending, *filter(None, self.running)]:
                        self._fail(s, "the server is shutting down")
                    return
                gone = [s for s in [*self.pending, *self.running] if s is not None and s.cancelled]
                for s in gone:
                    if s.slot >= 0:
                        self._free(s)
                self.cancelled += len(gone)
                kept = [s for s in self.pending if not s.cancelled]
                free = self.running.count(None)            # the slots just freed included
                admit, self.pending = kept[:free], deque(kept[free:])
            try:
                for group in prefill_groups(admit):
                    self._prefill(group)
                if any(self.running):
                    self._step()
            except Exception as err:         # fail what was running; the next requests start clean
                msg = first_line(err, 200)
                for s in [*admit, *self.running]:
                    if s is not None and not s.row.done:
                        self._fail(s, msg)

    def _fail(self, s: Sequence, msg: str) -> None:
        s.row.done = "error"
        s.emit(None, f"error: {msg}", 0)
        if s.slot >= 0:
            self._free(s)

    def _free(self, s: Sequence) -> None:
        self.running[s.slot] = None
        self.lengths[s.slot] = 0
        s.slot = -1

    def _bind(self, io, cache: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Each layer's key and value buffers bound as both past and present."""
        OV = self.ort.OrtValue
        for i, (k, v) in enumerate(cache):
            ko, vo = OV.ortvalue_from_numpy(k), OV.ortvalue_from_numpy(v)
            io.bind_ortvalue_input(past(i, "key"), ko)
            io.bind_ortvalue_input(past(i, "value"), vo)
            io.bind_ortvalue_output(present(i, "key"), ko)
            io.bind_ortvalue_output(present(i, "value"), vo)

    def _prefill(self, group: list[Sequence]) -> None:
        """Prompts run together, right-padded; each gets a free slot. One prompt runs straight into
        its slot's rows of the cache; several run over a cache of the longest one's length, and each
        row's keys and values then move into its slot (a copy far smaller than the run)."""
        lens = [len(s.ids) for s in group]
        b, width = len(group), max(lens)
        slots = [i for i, r in enumerate(self.running) if r is None][:b]
        if b == 1:
            cache = [(k[slots[0]:slots[0] + 1], v[slots[0]:slots[0] + 1]) for k, v in self.cache]
        else:
            shape = (b, self.dec.kv_heads, width, self.dec.head_size)
            cache = [(np.zeros(shape, self.dec.kv_dtype), np.zeros(shape, self.dec.kv_dtype)) for _ in self.cache]
        ids = np.zeros((b, width), np.int64)
        mask = np.zeros((b, width), np.int64)
        for r, s in enumerate(group):
            ids[r, :lens[r]] = s.ids
            mask[r, :lens[r]] = 1
        io = self.session.io_binding()
        self._bind(io, cache)
        io.bind_cpu_input(INPUT_IDS, ids)
        io.bind_cpu_input(ATTENTION_MASK, mask)
        logits = np.empty((b, 1 if self.dec.last_only else width, self.dec.vocab_size), np.float32)
        io.bind_ortvalue_output(LOGITS, self.ort.OrtValue.ortvalue_from_numpy(logits))
        self.session.run_with_iobinding(io)
        self.prefills += 1
        for r, (s, slot) in enumerate(zip(group, slots)):
            if b > 1:
                for (k, v), (ck, cv) in zip(self.cache, cache):
                    k[slot, :, :lens[r]] = ck[r, :, :lens[r]]
                    v[slot, :, :lens[r]] = cv[r, :, :lens[r]]
            s.slot, self.running[slot], self.lengths[slot] = slot, s, lens[r]
            self._take(s, logits[r, 0 if self.dec.last_only else lens[r] - 1][None, :])

    def _step(self) -> None:
        n = max(i for i, s in enumerate(self.running) if s is not None) + 1
        if n != self._bound_n:
            self._io = self.session.io_binding()
            self._bind(self._io, [(k[:n], v[:n]) for k, v in self.cache])
            self._io.bind_ortvalue_output(LOGITS, self.ort.OrtValue.ortvalue_from_numpy(self._logits[:n]))
            self._bound_n = n
        tokens = np.zeros((n, 1), np.int64)
        live = [s for s in self.running[:n] if s is not None]
        for s in live:
            tokens[s.slot, 0] = s.next_token
        lens = self.lengths[:n]
        width = int(lens.max()) + 1
        self._io.bind_cpu_input(INPUT_IDS, tokens)
        self._io.bind_cpu_input(ATTENTION_MASK, (np.arange(width)[None, :] <= lens[:, None]).astype(np.int64))
        self.session.run_with_iobinding(self._io)
        for s in live:
            self.lengths[s.slot] += 1
        self.steps += 1
        self.step_rows += len(live)
        logits = self._logits[:n, 0]
        greedy = logits.argmax(axis=-1) if any(s.cfg.temperature <= 0 for s in live) else None
        for s in live:
            self._take(s, logits[s.slot][None, :], greedy)

    def _take(self, s: Sequence, logits: np.ndarray, greedy: np.ndarray | None = None) -> None:
        """Sample the sequence's next token from its logits [1, V], emit its text, end it if done."""
        cfg = s.cfg
        raw = logits
        if cfg.repetition_penalty != 1.0:
            logits = logits.copy()
            apply_repetition_penalty(logits, [s.seen], cfg.repetition_penalty)
        if greedy is not None and cfg.temperature <= 0 and cfg.repetition_penalty == 1.0:
            token = int(greedy[s.slot])
        else:
            token = int(choose(logits.copy(), cfg, s.rng)[0])
        if s.row.count == 0:
            self.first_token_seconds += time.perf_counter() - s.submitted
            self.first_tokens += 1
        if s.seen is not None:
            s.seen = np.append(s.seen, token)
        if cfg.logprobs is not None:
            s.logprobs.append(token_logprobs(raw[0], token, cfg.logprobs))
        self.generated += 1
        row = s.row
        piece = row.take(token, self.model.eos_ids, cfg.ignore_eos)
        if row.done == "stop" and s.logprobs and not cfg.ignore_eos and token in self.model.eos_ids:
            s.logprobs.pop()              # the end-of-sequence token is no part of the text
        if not row.done and row.count >= cfg.max_new_tokens:
            row.done = "length"
            piece += row.flush()
        if row.done:
            s.send(piece, row.done, row.count)
            self._free(s)
        else:
            if piece:
                s.send(piece, None, 0)
            s.next_token = token
