"""Dynamic batching of tensor requests: requests whose inputs agree on names, types and every
dimension but the first are joined along the batch axis, up to `max_batch` rows or `max_wait`
seconds after the first arrived, run once, and the outputs split back. The queue is bounded (the next
batch's rows and `max_queue` more): a full queue refuses at once (the server answers 503 with
Retry-After)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

Feeds = dict[str, np.ndarray]


def signature(feeds: Feeds) -> tuple:
    return tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in feeds.items()))


def rows(feeds: Feeds) -> int:
    return int(next(iter(feeds.values())).shape[0]) if feeds else 0


class Batcher:
    def __init__(self, run: Callable[[Feeds], dict], max_batch: int = 32, max_wait: float = 0.005,
                 max_queue: int = 64, on_full: Callable[[], Exception] | None = None, workers: int = 1):
        """`workers`: batches run at once (OpenVINO's throughput hint runs one per stream)."""
        self.run, self.max_batch, self.max_wait, self.max_queue = run, max_batch, max_wait, max_queue
        self.on_full = on_full or (lambda: RuntimeError("queue full"))
        self.queue: deque = deque()
        self.cond = threading.Condition()
        self.sizes: list[int] = []                 # rows per run, for metrics and tests
        self.workers, self.running, self.peak = workers, 0, 0     # batches running now, and at most
        for i in range(workers):
            threading.Thread(target=self._loop, daemon=True, name=f"pressa-batcher-{i}").start()

    @property
    def depth(self) -> int:
        return len(self.queue)

    def submit(self, feeds: Feeds, timeout: float = 120.0) -> dict:
        fut: Future = Future()
        with self.cond:
            if len(self.queue) >= self.max_queue + self.max_batch:    # the next batch, and max_queue more
                raise self.on_full()
            self.queue.append((signature(feeds), feeds, fut))
            self.cond.notify()
        return fut.result(timeout)

    def _take(self) -> list:
        with self.cond:
            while not self.queue:
                self.cond.wait()
            sig, feeds, fut = self.queue.popleft()
            batch, total = [(feeds, fut)], rows(feeds)
            deadline = time.monotonic() + self.max_wait
            while total < self.max_batch:
                match = next((x for x in self.queue if x[0] == sig and total + rows(x[1]) <= self.max_batch), None)
                if match is not None:
                    self.queue.remove(match)
                    batch.append((match[1], match[2]))
                    total += rows(match[1])
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            with self.cond:
                self.running += 1
                self.peak = max(self.peak, self.running)
            try:
                self._run_batch(batch)
            finally:
                with self.cond:
                    self.running -= 1

    def _run_batch(self, batch: list) -> None:
        """Run the requests joined, split the outputs back; on failure each alone, so that one bad
        request fails only itself."""
        try:
            if len(batch) == 1:
                self.sizes.append(rows(batch[0][0]))
                batch[0][1].set_result(self.run(batch[0][0]))
                return
            joined = {k: np.concatenate([f[k] for f, _ in batch]) for k in batch[0][0]}
            out = self.run(joined)
            n = [rows(f) for f, _ in batch]
            if any(v.ndim == 0 or v.shape[0] != sum(n) for v in out.values()):
                for f, fut in batch:              # outputs not per row: run the requests one by one
                    fut.set_result(self.run(f))
                return
            self.sizes.append(sum(n))
            cuts = np.cumsum(n)[:-1]
            parts = {k: np.split(v, cuts) for k, v in out.items()}
            for i, (_, fut) in enumerate(batch):
                fut.set_result({k: p[i] for k, p in parts.items()})
        except Exception:                         # one bad request must not fail its neighbours
            for f, fut in batch:
                if fut.done():
                    continue
                try:
                    fut.set_result(self.run(f))
                except Exception as err:
                    fut.set_exception(err)
