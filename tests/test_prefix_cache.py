"""Prefix caching: prompts that start like earlier ones (a shared system prompt, the earlier turns of a
chat) take those positions' keys and values from the cache and prefill only the rest, and answer token
for token as a model without the cache does (fp32 tiny model); the least recently used blocks go first
under the memory cap; /metrics counts the reused positions."""

from __future__ import annotations

import numpy as np


def _ids(m, prompt, **kw):
    from pressa.genai.sampling import SamplingConfig

    cfg = SamplingConfig(max_new_tokens=kw.pop("max_new_tokens", 12), ignore_eos=True, **kw)
    return [s.history[len(p):] for p, s in zip(prompt, list(m.sequences(prompt, cfg))[-1])]


def test_cached_prefixes_answer_as_uncached_prompts(tiny_artifact):
    import pressa

    art = tiny_artifact("llama")
    cached, plain = pressa.load(art), pressa.load(art, prefix_cache_mb=0)
    rng = np.random.default_rng(0)
    system = rng.integers(3, 160, 140).tolist()                  # two full blocks and some
    first = system + rng.integers(3, 160, 9).tolist()
    assert _ids(cached, [first]) == _ids(plain, [first])
    assert cached.prefix_cache.hit_tokens == 0 and len(cached.prefix_cache.blocks) == 2
    for seed in range(3):                                        # new questions after the same system prompt
        second = [system + rng.integers(3, 160, 5 + seed).tolist(), rng.integers(3, 160, 30).tolist()]
        kw = {"temperature": 0.8, "seed": seed} if seed else {}
        assert _ids(cached, second, **kw) == _ids(plain, second, **kw)
    assert cached.prefix_cache.hit_tokens == 3 * 128


def test_a_second_chat_turn_reuses_the_first_turns_answer(tiny_artifact):
    import pressa

    art = tiny_artifact("llama")
    cached, plain = pressa.load(art), pressa.load(art, prefix_cache_mb=0)
    prompt = np.random.default_rng(1).integers(3, 160, 100).tolist()
    answer = _ids(cached, [prompt], max_new_tokens=60)[0]
    turn2 = prompt + answer + [7, 8, 9]
    hits = cached.prefix_cache.hit_tokens
    assert _ids(cached, [turn2]) == _ids(plain, [turn2])
    assert cached.prefix_cache.hit_tokens - hits == 128       # positions 0..127: the prompt and the answer's start


def test_least_recently_used_blocks_go_first_under_the_cap(tiny_artifact):
    import pressa

    art = tiny_artifact("llama")
    m = pressa.load(art, prefix_cache_mb=0.12)
    block = sum(k.nbytes + v.nbytes for k, v in m.session.new_cache(1, 64))     # one block of 64 positions
    assert 2 * block < 0.12e6 < 3 * block, block
    rng = np.random.default_rng(2)
    a, b, c = (rng.integers(3, 160, 70).tolist() for _ in range(3))
    for p in (a, b, a, c):                                      # a used again after b: b is the oldest
        _ids(m, [p], max_new_tokens=1)
    pc = m.prefix_cache
    assert pc.bytes <= 0.12e6 and pc.evicted == 1
    assert pc.match(a + [5], None) and pc.match(c + [5], None) and not pc.match(b + [5], None)


def test_serve_counts_prefix_hits(server):
    from helpers import call

    system = " ".join(f"t{i % 150 + 3}" for i in range(150))
    for q in ("t5 t6", "t7 t8 t9"):
        status, _ = call(server, "/v1/chat/completions", {"model": "llm", "max_tokens": 3, "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": q}]})
        assert status == 200
    status, metrics = call(server, "/metrics")
    hits = next(ln for ln in metrics.splitlines() if ln.startswith('pressa_prefix_cache_hit_tokens_total{model="llm"}'))
    assert float(hits.split()[-1]) >= 128
