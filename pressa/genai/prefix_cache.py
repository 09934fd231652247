"""Prefix caching: the keys and values of prompt prefixes kept across requests and chat turns, so that
a prompt that starts like an earlier one (a shared system prompt, the earlier turns of a chat) only
prefills what is new.

The cache holds blocks of 64 positions, each keyed by a hash of every token up to its end (and the
run-time adapter, whose keys and values differ): a block is found only where the whole prefix before
it matches. Blocks are copied in from a slot when its prompt has been prefilled and when its sequence
ends (then the answer's positions too, which the next turn of a chat starts with), and copied back
into a slot when a new prompt matches them. The least recently used blocks go first when the cache
is over its memory cap. Only ONNX Runtime's array caches (KVBuffers) take part.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

BLOCK = 64


def block_keys(ids: list[int], adapter: str | None, count: int) -> list[bytes]:
    """The keys of the first `count` full blocks of `ids`."""
    h = hashlib.blake2b((adapter or "").encode(), digest_size=16).digest()
    out = []
    for i in range(count):
        h = hashlib.blake2b(h + np.asarray(ids[i * BLOCK:(i + 1) * BLOCK], np.int64).tobytes(), digest_size=16).digest()
        out.append(h)
    return out


class PrefixCache:
    def __init__(self, capacity_mb: float):
        self.capacity = int(capacity_mb * 1e6)
        self.blocks: OrderedDict[bytes, list[tuple[np.ndarray, np.ndarray]]] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()
        self.hit_tokens = 0          # prompt positions taken from the cache instead of prefilled
        self.prompt_tokens = 0       # prompt positions looked up
        self.evicted = 0             # blocks dropped for room

    def match(self, ids: list[int], adapter: str | None) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """The cached blocks that start `ids`, in order; at least one token is left to prefill (its logits
        choose the first new token)."""
        full = (len(ids) - 1) // BLOCK
        found = []
        with self.lock:
            self.prompt_tokens += len(ids)
            for key in block_keys(ids, adapter, full):
                block = self.blocks.get(key)
                if block is None:
                    break
                self.blocks.move_to_end(key)
                found.append(block)
            self.hit_tokens += len(found) * BLOCK
        return found

    @staticmethod
    def load(row, blocks: list) -> None:
        """Copy the blocks into positions 0.. of a slot's cache (`row`: KVBuffers of one row)."""
        for b, block in enumerate(blocks):
            at = slice(b * BLOCK, (b + 1) * BLOCK)
            for (k, v), (bk, bv) in zip(row, block):
                k[0, :, at] = bk
                v[0, :, at] = bv

    def store(self, ids: list[int], adapter: str | None, row, held: int) -> None:
        """Keep the full blocks of the first `held` positions of a slot (`row`), whose tokens are `ids`."""
        count = min(held, len(ids)) // BLOCK
        if not count or not self.capacity:
            return
        keys = block_keys(ids, adapter, count)
        with self.lock:
            for b, key in enumerate(keys):
                if key in self.blocks:
                    self.blocks.move_to_end(key)
                    continue
                at = slice(b * BLOCK, (b + 1) * BLOCK)
                block = [(k[0, :, at].copy(), v[0, :, at].copy()) for k, v in row]
                self.blocks[key] = block
                self.bytes += sum(k.nbytes + v.nbytes for k, v in block)
            while self.bytes > self.capacity and self.blocks:
                _, old = self.blocks.popitem(last=False)
                self.bytes -= sum(k.nbytes + v.nbytes for k, v in old)
                self.evicted += 1
