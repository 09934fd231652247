"""Continuous batching (pressa.genai.scheduler) against the plain one-sequence generation path:
sequences that join and leave mid-flight, each in its own KV-cache slot, give the text they give
alone; stop strings, lengths, cancellation, capacity and queue limits."""

from __future__ import annotations

import threading
import time

import pytest

from pressa.genai.sampling import SamplingConfig

from conftest import make_tiny


@pytest.fixture(scope="module")
def long_llm(tmp_path_factory):
    """A tiny fp32 llama with room for long generations (fp32: MatMul gives the same row whatever
    the batch, so co-batched sequences must match their solo runs exactly)."""
    from pressa.capture.build_options import BuildOptions
    from pressa.capture.llm import build_llm

    d = tmp_path_factory.mktemp("long")
    make_tiny("llama", d / "hf", max_position_embeddings=4096)
    build_llm(str(d / "hf"), d / "model", BuildOptions(precision="fp32"))
    return d / "model"


class Collector:
    def __init__(self, n: int):
        self.text = [""] * n
        self.finish: list = [None] * n
        self.generated = [0] * n
        self.first: list = [None] * n
        self.left = n
        self.lock = threading.Lock()
        self.done = threading.Event()

    def emit(self, i: int):
        def f(text, finish, generated):
            with self.lock:
                if self.first[i] is None:
                    self.first[i] = time.perf_counter()
                if text:
                    self.text[i] += text
                if finish:
                    self.finish[i], self.generated[i] = finish, generated
                    self.left -= 1
                    if not self.left:
                        self.done.set()
        return f


def test_joining_sequences_equal_their_solo_runs(long_llm):
    import pressa
    from pressa.genai.scheduler import Scheduler

    m = pressa.load(long_llm)
    prompts = [f"t{5 + i} t{40 + 3 * i} t{90 + i}" for i in range(6)]
    cfgs = [SamplingConfig(max_new_tokens=20 + 7 * i, ignore_eos=True) if i % 2 == 0 else
            SamplingConfig(max_new_tokens=25, temperature=0.9, top_p=0.9, seed=i) for i in range(6)]
    solo = [m.generate(p, chat=False, cfg=c) for p, c in zip(prompts, cfgs)]
    sch = Scheduler(m, slots=4, max_queue=8)
    col = Collector(6)
    for i, (p, c) in enumerate(zip(prompts, cfgs)):
        sch.submit(m.encode_prompt(p, chat=False), c, col.emit(i))
        time.sleep(0.01 * (i % 3))             # later ones join sequences already decoding
    assert col.done.wait(60)
    assert col.text == solo
    assert col.finish[0] == "length" and col.generated[0] == 20
    assert sch.steps and sch.step_rows > sch.steps          # decode steps ran several sequences at once
    assert sch.active == 0 and sch.depth == 0
    sch.close()


def test_prompts_prefilled_together_equal_solo_runs(long_llm):
    """A burst of prompts of different lengths: grouped by length, right-padded in one run each
    group, each row moved into its own slot; every answer equals its solo run."""
    import pressa
    from pressa.genai.scheduler import Scheduler, prefill_groups

    m = pressa.load(long_llm)
    prompts = [" ".join(f"t{7 + (i * j) % 140}" for j in range(3 + i)) for i in range(5)]    # 3..7 words
    cfg = SamplingConfig(max_new_tokens=15, ignore_eos=True)
    solo = [m.generate(p, chat=False, cfg=cfg) for p in prompts]
    ids = [m.encode_prompt(p, chat=False) for p in prompts]
    sch = Scheduler(m, slots=8)
    col = Collector(5)
    with sch.cond:                          # the worker sees the whole burst at once
        for i in range(5):
            sch.submit(ids[i], cfg, col.emit(i))
    assert col.done.wait(60)
    assert col.text == solo
    groups = prefill_groups([type("S", (), {"ids": x})() for x in ids])
    assert sch.prefills == len(groups) < 5 and max(len(g) for g in groups) > 1
    sch.close()


def test_prefill_groups_bound_padding():
    from pressa.genai.scheduler import prefill_groups

    def lengths(ns, **kw):
        return [[len(s.ids) for s in g] for g in prefill_groups([type("S", (), {"ids": [0] * n})() for n in ns], **kw)]

    # sorted; [3, 4, 5] pads 15 for 12 tokens (<= 1.25x), adding 6 would pad 24 for 18 (> 1.25x)
    assert lengths([5, 3, 7, 4, 6]) == [[3, 4, 5], [6, 7]]
    assert lengths([100, 100, 100], budget=250) == [[100, 100], [100]]
    assert lengths([]) == []


def test_stops_lengths_cancel_and_limits(long_llm):
    import pressa
    from pressa.errors import BadArgument
    from pressa.genai.scheduler import QueueFull, Scheduler

    m = pressa.load(long_llm)
    ids = m.encode_prompt("t5 t6 t7", chat=False)
    free = m.generate("t5 t6 t7", chat=False, max_new_tokens=12, ignore_eos=True)
    words = free.split()
    stop = words[3]
    sch = Scheduler(m, slots=2, max_queue=2, capacity=64)
    col = Collector(2)
    sch.submit(ids, SamplingConfig(max_new_tokens=12, ignore_eos=True, stop=[stop]), col.emit(0))
    sch.submit(ids, SamplingConfig(max_new_tokens=1), col.emit(1))
    assert col.done.wait(30)
    assert col.finish[0] == "stop" and col.text[0] == free[:free.index(stop)]
    assert col.text[1] == m.generate("t5 t6 t7", chat=False, max_new_tokens=1) and col.generated[1] == 1
    with pytest.raises(BadArgument, match="positions"):                    # prompt + new tokens > capacity
        sch.submit(ids, SamplingConfig(max_new_tokens=62), col.emit(0))
    # cancel: the long sequence leaves its slot long before its 60 tokens
    hold = Collector(1)
    seq = sch.submit(ids, SamplingConfig(max_new_tokens=60, ignore_eos=True), hold.emit(0))
    seq.cancel()
    for _ in range(100):
        if sch.active == 0 and sch.cancelled:
            break
        time.sleep(0.02)
    assert sch.active == 0 and sch.cancelled == 1 and hold.finish[0] is None
    # a full queue refuses at once; close() ends what is waiting with an error
    sch.close()
    small = Scheduler(m, slots=1, max_queue=1)
    busy = Collector(3)
    small.submit(ids, SamplingConfig(max_new_tokens=2000, ignore_eos=True), busy.emit(0))
    for _ in range(200):
        if small.active:
            break
        time.sleep(0.01)
    small.submit(ids, SamplingConfig(max_new_tokens=5), busy.emit(1))
    with pytest.raises(QueueFull):
        small.submit(ids, SamplingConfig(max_new_tokens=5), busy.emit(2))
    small.close()
    assert busy.finish[0].startswith("error") and busy.finish[1].startswith("error")
