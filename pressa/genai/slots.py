"""The one generation engine: sequences in the slots of one KV cache, advanced together.

The cache has one row ("slot") per sequence that may run at once, each holding up to `capacity`
positions, bound both as past and as present by the backend (pressa.genai.decoder_session). Waiting
sequences are admitted into free slots by prefilling their prompts together (right-padded); then
each `step()` runs one decode step for every occupied slot: one token per sequence, each at its own
position (GroupQueryAttention reads per-row lengths from the attention mask). Each sequence chooses
its own token (pressa.genai.sequence). `Model.generate` drives a batch of its own to the end;
`serve`'s Scheduler lets sequences join and leave between any two steps.
"""

from __future__ import annotations

import mmap
import time

import numpy as np

from pressa.genai.decoder_session import KVBuffers, right_padded, step_mask
from pressa.genai.prefix_cache import BLOCK, PrefixCache
from pressa.genai.sequence import Sequence
from pressa.genai.speculative import DRAFTER_COST, Drafter, best_draft_length, lookup_draft, verify_alone


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


class SlotBatch:
    def __init__(self, backend, slots: int, capacity: int, eos_ids: set[int], prefix: PrefixCache | None = None,
                 drafter_backend=None):
        """`backend`: a decoder session (shape facts, new_cache, bind); `capacity`: positions per
        slot. Memory grows with the positions really used, not with slots x capacity. `prefix`: the
        model's prefix cache (genai/prefix_cache.py), for a cache held in arrays."""
        self.backend, self.slots, self.capacity, self.eos_ids = backend, slots, capacity, eos_ids
        self.cache = backend.new_cache(slots, capacity, zeros=lazy_zeros)
        self.prefix = prefix if isinstance(self.cache, KVBuffers) else None
        self.drafter_backend = drafter_backend          # a draft model's decoder (--speculative draft)
        self.lengths = np.zeros(slots, np.int64)
        self.running: list[Sequence | None] = [None] * slots
        self.prefills = 0                 # prefill runs (each for one or more prompts)
        self.steps = 0                    # decode steps run
        self.step_rows = 0                # sequences advanced, summed over steps
        self.generated = 0                # tokens generated
        self.first_tokens = 0             # sequences that got their first token, and the time they
        self.first_token_seconds = 0.0    # waited for it (queue and prefill), summed
        self.drafted = 0                  # speculative tokens drafted, and accepted by verification
        self.accepted = 0
        self._logits = np.zeros((slots, 1, backend.vocab_size), np.float32)
        self._bound_n, self._step = 0, None

    @property
    def active(self) -> int:
        return sum(s is not None for s in self.running)

    @property
    def free(self) -> int:
        return self.running.count(None)

    def release(self, s: Sequence) -> None:
        if self.prefix is not None and s.done in ("stop", "length"):    # prompt and answer, for a next turn
            self.prefix.store(s.history, s.cfg.adapter, self.cache.rows(s.slot, s.slot + 1), int(self.lengths[s.slot]))
        self.running[s.slot] = None
        self.lengths[s.slot] = 0
        s.slot = -1

    def admit(self, group: list[Sequence]) -> None:
        """Prefill the group's prompts in one run, each into a free slot (the cache decides how:
        KVBuffers.for_slots). A prompt that starts with cached blocks is prefilled alone, from there."""
        if self.prefix is not None:
            group = [s for s in group if not self._admit_cached(s)]
            if not group:
                return
        ids, mask = right_padded([s.ids for s in group])
        lens = mask.sum(axis=1)
        b, width, dec = len(group), ids.shape[1], self.backend
        slots = [i for i, r in enumerate(self.running) if r is None][:b]
        cache, settle = self.cache.for_slots(slots, width, dec.new_cache)
        logits = np.empty((b, dec.logits_width(width), dec.vocab_size), np.float32)
        dec.bind(cache).run(ids, mask, logits, **dec.adapter_rows([s.cfg.adapter for s in group]))
        if settle:
            settle(lens)
        self.prefills += 1
        last = dec.last_index(lens)
        for r, (s, slot) in enumerate(zip(group, slots)):
            s.slot, self.running[slot], self.lengths[slot] = slot, s, lens[r]
            if self.prefix is not None:
                self.prefix.store(s.ids, s.cfg.adapter, self.cache.rows(slot, slot + 1), int(lens[r]))
            self._take(s, logits[r, last[r]][None, :])

    def _admit_cached(self, s: Sequence) -> bool:
        """Admit `s` from its cached prefix, if it has one: the blocks copied into a free slot, the rest
        of the prompt prefilled after them (ONNX Runtime's GroupQueryAttention continues a filled
        cache one row at a time)."""
        blocks = self.prefix.match(s.ids, s.cfg.adapter)
        if not blocks:
            return False
        dec, slot, held = self.backend, self.running.index(None), len(blocks) * BLOCK
        row = self.cache.rows(slot, slot + 1)
        self.prefix.load(row, blocks)
        rest = np.asarray([s.ids[held:]], np.int64)
        logits = np.empty((1, dec.logits_width(rest.shape[1]), dec.vocab_size), np.float32)
        dec.bind(row).run(rest, np.ones((1, len(s.ids)), np.int64), logits, **dec.adapter_rows([s.cfg.adapter]))
        self._bound_n = 0
        self.prefills += 1
        s.slot, self.running[slot], self.lengths[slot] = slot, s, len(s.ids)
        self.prefix.store(s.ids, s.cfg.adapter, row, len(s.ids))
        self._take(s, logits[0, -1][None, :])
        return True

    def step(self) -> None:
        """One decode step for every occupied slot (slots 0..n-1 for the highest occupied n-1: a free
        slot inside that range costs one position of attention). A speculating sequence whose drafted
        tokens are worth a run of their own verifies them in one (genai/speculative.py: alone, whenever
        it drafts; in a batch, where that gives more tokens per unit of time than its share of the
        batch's step); the others take one token each in one step."""
        live = [s for s in self.running if s is not None]
        if self.verifies and any(s.cfg.speculative != "off" for s in live):
            live = self._speculate(live)
            if not live:
                return
        n = max(s.slot for s in live) + 1
        if n != self._bound_n:
            self._step = self.backend.bind(self.cache.rows(0, n))
            self._step_logits, self._bound_n = self._logits[:n], n
        tokens = np.zeros((n, 1), np.int64)
        for s in live:
            tokens[s.slot, 0] = s.next_token
        adapters = {}
        if self.backend.adapters:                 # each slot's run-time adapter (free slots: the base)
            names = [None] * n
            for s in live:
                names[s.slot] = s.cfg.adapter
            adapters = self.backend.adapter_rows(names)
        self._step.run(tokens, step_mask(self.lengths[:n]), self._step_logits, [s.slot for s in live], **adapters)
        for s in live:
            self.lengths[s.slot] += 1
        self.steps += 1
        self.step_rows += len(live)
        logits = self._step_logits[:, 0]
        greedy = logits.argmax(axis=-1) if any(s.cfg.temperature <= 0 for s in live) else None
        for s in live:
            self._take(s, logits[s.slot][None, :], None if greedy is None else int(greedy[s.slot]))

    def _speculate(self, live: list[Sequence]) -> list[Sequence]:
        """Drafts for the speculating sequences; those worth it verified, each in a run of its own
        (ONNX Runtime's GroupQueryAttention takes several new tokens for one row at a time); returns the
        sequences still to step."""
        drafts = {s.slot: self._draft(s) for s in live if s.cfg.speculative != "off"}
        rows = [(len(drafts[s.slot][0]) if s.slot in drafts else 0, s.acceptance) for s in live]
        alone = [bool(rows[0][0])] if len(live) == 1 else verify_alone(rows, self.backend.draft_cost)
        rest = []
        for s, verify in zip(live, alone):
            draft, qs = drafts.get(s.slot, ([], None))
            if verify:
                self._verify(s, draft, qs)
                continue
            if s.drafter is not None and draft:      # drafts not verified: the draft model takes none
                s.drafter.settle(len(s.history), 0, len(draft))
            rest.append(s)
        return rest

    @property
    def verifies(self) -> bool:
        """Whether a step can score several new tokens of a row: a graph with logits for each row's last
        positions and a shared KV buffer (ONNX Runtime's GroupQueryAttention takes them for one row at a time)."""
        return not self.backend.last_only and self.backend.shared_buffer

    def _draft(self, s: Sequence) -> tuple[list[int], list | None]:
        """Tokens to verify with the next step (and, from a draft model, the distributions they were
        sampled from): none while the sequence pauses after drafts that all failed (text that does not
        echo its context costs a verification step for nothing)."""
        room = min(self.capacity - int(self.lengths[s.slot]) - 1, s.cfg.max_new_tokens - s.count - 1)
        if s.pause:
            s.pause -= 1
            return [], None
        if room < 1 or s.constraint is not None:
            return [], None
        most = min(s.cfg.draft_tokens, room, (self.backend.window or 1 << 30) - 1)
        cost = self.backend.draft_cost + (DRAFTER_COST if s.cfg.speculative == "draft" else 0)
        k, gain = best_draft_length(s.acceptance, cost, most)
        if gain < 1.0:                           # drafts this seldom accepted cost more than they give:
            s.pause = 3                          # try one now and then, in case the text turns to echo
            k = 1
        if s.cfg.speculative == "draft":              # Model.prepare_speculation checked there is one
            s.drafter = s.drafter or Drafter(self.drafter_backend, self.capacity)
            return s.drafter.draft(s, k)
        return lookup_draft(np.asarray(s.history), k, s.corrections), None

    def _verify(self, s: Sequence, draft: list[int], qs: list | None = None) -> None:
        """One step over [next token, *draft] for the sequence's slot: the tokens plain decoding would
        have chosen, the accepted drafts and one more, taken in order."""
        width, slot = len(draft) + 1, s.slot
        ids = np.asarray([[s.next_token, *draft]], np.int64)
        mask = np.ones((1, int(self.lengths[slot]) + width), np.int64)
        logits = np.empty((1, width, self.backend.vocab_size), np.float32)
        self.backend.bind(self.cache.rows(slot, slot + 1)).run(
            ids, mask, logits, **self.backend.adapter_rows([s.cfg.adapter]))
        self._bound_n = 0                         # the next plain step binds its rows again
        before = len(s.history)
        tokens = s.verify(logits[0], draft, qs)
        if s.drafter is not None:
            s.drafter.settle(before, len(tokens) - 1, len(draft))
        s.count_verification(len(draft), len(tokens) - 1)
        s.misses = 0 if len(tokens) > 1 else s.misses + 1
        s.pause = max(s.pause, (1 << min(s.misses, 4)) - 1)     # or the pause _draft set for losing drafts
        self.steps += 1
        self.step_rows += 1
        self.drafted += len(draft)
        self.accepted += len(tokens) - 1
        self.lengths[slot] += len(tokens)         # the next token and the accepted drafts are in the cache
        for taken, token in enumerate(tokens, 1):
            self._commit(s, token)
            if s.done:
                del s.history[len(s.history) - len(tokens) + taken:]     # verified past the end: not its text
                break

    def _take(self, s: Sequence, logits: np.ndarray, greedy: int | None = None) -> None:
        """The sequence chooses and takes its next token from its logits [1, V]."""
        self._commit(s, s.choose(logits, greedy))

    def _commit(self, s: Sequence, token: int) -> None:
        """The sequence takes a chosen token; its slot is freed when it is done."""
        if s.count == 0:
            self.first_token_seconds += time.perf_counter() - s.submitted
            self.first_tokens += 1
        self.generated += 1
        s.accept(token, self.eos_ids)
        if s.done:
            self.release(s)
