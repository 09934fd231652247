"""Exact speculative decoding by prompt lookup: drafts found by hand, greedy output equal to plain greedy
(20 prompts, fp32 tiny model, with drafts really accepted), and the rejection sampler's next-token
distribution equal to the model's own (the exact mixture computed from its probabilities), as plain
sampling's is."""

from __future__ import annotations

import numpy as np
import pytest


def test_lookup_drafts_the_latest_continuation_of_the_longest_suffix():
    from pressa.genai.speculative import lookup_draft

    h = np.array([5, 6, 7, 8, 9, 5, 6, 7, 1, 2, 6, 7])
    assert lookup_draft(h, 3) == [1, 2, 6]          # "6 7" last seen before position 8 -> 1 2 6
    assert lookup_draft(np.array([1, 2, 3, 4, 2, 3]), 3) == [4, 2, 3]
    assert lookup_draft(np.array([1, 2, 3, 4, 2, 3]), 5) == [4, 2, 3, 4, 2]   # runs into the present: period 3
    assert lookup_draft(np.array([8, 7, 7, 7]), 4) == [7, 7, 7, 7]           # a repeated token, period 1
    assert lookup_draft(np.array([1, 2, 3]), 4) == []
    assert lookup_draft(np.array([4, 9, 4]), 2) == [9, 4]       # a 1-gram when no longer suffix recurs
    edited = np.array([1, 5, 2, 3, 9, 1, 7])                    # 5 was drafted where the output chose 7
    assert lookup_draft(edited, 3) == [] and lookup_draft(edited, 3, {5: 7}) == [2, 3, 9]


def test_verification_learns_the_edit_it_makes_and_forgets_its_reverse():
    from pressa.genai.sampling import SamplingConfig
    from pressa.genai.sequence import Sequence

    s = Sequence([1, 2], SamplingConfig(temperature=0.0))
    s.corrections[9] = 4
    logits = np.zeros((3, 16), np.float32)
    logits[0, 5], logits[1, 9] = 1.0, 1.0                       # accepts 5, then chooses 9 where 4 was drafted
    assert s.verify(logits, [5, 4]) == [5, 9]
    assert s.corrections == {4: 9}


def _generated(m, ids, cfg, emit=None) -> list[int]:
    seqs = list(m.sequences([ids], cfg, emit))[-1]
    return seqs[0].history[len(ids):]


def _prompts(rng, n=20):
    """Random token runs with repeats inside, so that continuations echo the prompt."""
    out = []
    for _ in range(n):
        run = rng.integers(3, 160, 6).tolist()
        out.append(rng.integers(3, 160, 4).tolist() + run + rng.integers(3, 160, 3).tolist() + run[:3])
    return out


def test_greedy_with_lookup_equals_plain_greedy_on_20_prompts(tiny_artifact):
    import pressa
    from pressa.genai.sampling import SamplingConfig

    m = pressa.load(tiny_artifact("llama"), speculative="lookup")
    m.session.draft_cost = 0.05        # pinned: timed on a loaded machine it varies, and the draft lengths with it
    accepted = 0
    for ids in _prompts(np.random.default_rng(0)):
        outs = {}
        for mode in ("off", "lookup"):
            cfg = SamplingConfig(max_new_tokens=40, speculative=mode, ignore_eos=True)
            outs[mode] = _generated(m, ids, cfg)
        assert outs["lookup"] == outs["off"]
        accepted += m.last_batch.accepted
    assert accepted > 20, accepted             # verification really took drafted tokens (40 here)


def test_sequences_speculating_together_in_one_batch_each_equal_plain_greedy(tiny_artifact, monkeypatch):
    """Twelve prompts of three lengths, four to a continuous batch, every drafting row verifying its drafts
    in a run of its own while the others step together: each row's greedy output equals its plain greedy
    output alone, and steps took several tokens for some rows and one for others."""
    import pressa
    from pressa.genai import slots
    from pressa.genai.sampling import SamplingConfig

    m = pressa.load(tiny_artifact("llama"), speculative="lookup")
    m.session.draft_cost = 0.05
    prompts = [p[:len(p) - i % 3] for i, p in enumerate(_prompts(np.random.default_rng(1), 12))]
    plain = [_generated(m, ids, SamplingConfig(max_new_tokens=40, ignore_eos=True)) for ids in prompts]
    cfg = SamplingConfig(max_new_tokens=40, speculative="lookup", ignore_eos=True)
    monkeypatch.setattr(slots, "verify_alone", lambda rows, cost: [d > 0 for d, _ in rows])
    accepted, mixed = 0, 0
    for at in range(0, 12, 4):
        group, before = prompts[at:at + 4], None
        for seqs in m.sequences(group, cfg):
            now = [len(s.history) for s in seqs]
            if before is not None:
                gained = sorted(b - a for a, b in zip(before, now) if b > a)
                mixed += len(gained) > 1 and gained[0] == 1 < gained[-1]
            before = now
        assert [s.history[len(ids):] for s, ids in zip(seqs, group)] == plain[at:at + 4]
        accepted += m.last_batch.accepted
    assert accepted > 10 and mixed > 5, (accepted, mixed)       # 14 and 13 here


def test_a_batch_row_verifies_alone_where_that_pays():
    """By hand, in one-token steps: 4 rows, cost 0.2 per extra row: the batch gives 4 tokens in 1.6 (2.5
    per unit); a row with 7 drafts at a = 0.95 adds 5.6 expected tokens for 2.2 (1 + 0.2 * 6): verified
    alone; 3 drafts at a = 0.5 add 0.875 for 1.4: not; alone, any draft the row chose is verified."""
    from pressa.genai.speculative import verify_alone

    assert verify_alone([(7, 0.95), (3, 0.5), (0, 0.5), (0, 0.5)], 0.2) == [True, False, False, False]
    assert verify_alone([(2, 0.5)] * 4, 0.2) == [False] * 4
    assert verify_alone([(7, 0.99)] * 2, 0.02) == [True, True]


def _chi2_within(counts: np.ndarray, exact: np.ndarray) -> tuple[bool, float, int]:
    """Pearson's chi-square of counts against the exact law (bins expecting fewer than 5 merged), within
    4 standard deviations of its degrees of freedom (a false alarm once in ~16,000 runs)."""
    expected = exact * counts.sum()
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    chi2, df = float(((obs - exp) ** 2 / exp).sum()), len(obs) - 1
    return abs(chi2 - df) < 4 * np.sqrt(2 * df), chi2, df


@pytest.mark.parametrize("draft_rank", [0, 1, 5])
def test_rejection_sampling_keeps_the_models_distribution(tiny_artifact, draft_rank):
    """The tiny model's logits for [next token, drafted token] after a prompt; the draft is its most
    likely, second or sixth most likely next token. Over 20,000 seeds the verified first token follows
    the model's own distribution p (softmax at temperature 0.7, computed here) as plain sampling does,
    and the second (after an accepted draft) follows the model's next distribution. A verifier that
    accepted drafts 1.2x as often as it should fails it (for the two likelier drafts)."""
    from pressa.genai.decoder_session import DecoderSession
    from pressa.genai.sampling import SamplingConfig
    from pressa.genai.sequence import Sequence

    temp, n = 0.7, 20000
    dec = DecoderSession(tiny_artifact("llama"), all_logits=True)
    prompt = np.random.default_rng(1).integers(3, 160, 12).tolist()
    first = dec.prefill([prompt], 40)[0][0]
    x = first.astype(np.float64) / temp
    p = np.exp(x - x.max())
    p /= p.sum()
    draft = int(np.argsort(-p)[draft_rank])
    logits = dec.prefill([prompt + [draft]], 40)[1][0, -2:]          # positions of [last prompt token, draft]
    x2 = logits[1].astype(np.float64) / temp
    q = np.exp(x2 - x2.max())
    q /= q.sum()
    firsts, seconds, plain = np.zeros(160), np.zeros(160), np.zeros(160)
    for seed in range(n):
        out = Sequence(list(prompt), SamplingConfig(temperature=temp, seed=seed)).verify(logits, [draft])
        firsts[out[0]] += 1
        if out[0] == draft:
            seconds[out[1]] += 1
        plain[Sequence(list(prompt), SamplingConfig(temperature=temp, seed=seed)).choose(logits[:1])] += 1
    for counts, law in ((firsts, p), (plain, p), (seconds, q)):
        ok, chi2, df = _chi2_within(counts, law)
        assert ok, (draft_rank, chi2, df)


def test_speculative_flag_errors():
    from pressa.errors import BadArgument
    from pressa.genai.speculative import check_mode

    assert check_mode("draft") == "draft" and check_mode(None) == "off"
    with pytest.raises(BadArgument, match="lookup, draft"):
        check_mode("fast")


def test_serve_with_lookup_answers_as_plain_decoding_and_counts_drafts(tiny_artifact):
    """`speculative: lookup` in a models.yaml entry: the greedy answers equal plain decoding's (the
    Python API with speculation off), and /metrics counts drafted and accepted tokens."""
    openai = pytest.importorskip("openai")
    import pressa
    from pressa.serve.models import load_models

    from helpers import KEY, call, running

    art = tiny_artifact("llama")
    plain = pressa.load(art)
    models = load_models([{"name": "spec", "path": str(art), "speculative": "lookup"}])
    with running(models, max_tokens=64) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        for prompt in ("t5 t6 t7 t8 t9 t5 t6 t7", "t40 t41 t42 t40 t41"):
            got = client.completions.create(model="spec", prompt=prompt, max_tokens=30, temperature=0)
            assert got.choices[0].text == plain.generate(prompt, chat=False, max_new_tokens=30)
        status, metrics = call({"url": f"http://127.0.0.1:{port}"}, "/metrics")
    counts = {ln.split("{")[0]: float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith("pressa_spec")}
    assert counts["pressa_speculative_drafted_tokens_total"] >= counts["pressa_speculative_accepted_tokens_total"] > 0


def test_draft_length_follows_acceptance_and_cost():
    """Tokens per unit of time, by hand: a = 0.8, cost 0.25 per drafted token: k = 1..4 give 1.44, 1.63,
    1.69, 1.68 plain steps' worth, so 3; drafts seldom accepted on a costly backend lose (gain < 1)."""
    from pressa.genai.speculative import best_draft_length

    k, gain = best_draft_length(0.8, 0.25, 7)
    assert k == 3 and abs(gain - (1 + 0.8 + 0.64 + 0.512) / 1.75) < 1e-9
    assert best_draft_length(0.9, 0.02, 7)[0] == 7
    assert best_draft_length(0.2, 0.25, 7)[1] < 1.0


def test_drafts_that_hold_in_runs_are_drafted_longer():
    """Looked-up drafts hold in runs: with the first draft kept half the time but a later one 9 times in
    10 once the one before held, 1 + 0.5 (1 + 0.9 + ... ) tokens for 1 + 0.2 k: k = 1..6 give 1.25, 1.39,
    1.47, 1.51, 1.52, 1.52, so 5, where one rate of 1/2 for both gives 1 (1.25, 1.25, 1.17)."""
    from pressa.genai.sampling import SamplingConfig
    from pressa.genai.sequence import Sequence
    from pressa.genai.speculative import best_draft_length, expected_tokens

    assert abs(expected_tokens((0.5, 0.9), 3) - (1 + 0.5 * (1 + 0.9 + 0.81))) < 1e-12
    assert expected_tokens(0.8, 3) == expected_tokens((0.8, 0.8), 3)
    assert best_draft_length((0.5, 0.9), 0.2, 7)[0] == 5 and best_draft_length(0.5, 0.2, 7)[0] == 1
    s = Sequence([1, 2], SamplingConfig(temperature=0.0))
    for drafts, taken in ((4, 2), (3, 0), (2, 2)):          # first drafts: held, failed, held; later ones
        s.count_verification(drafts, taken)                 # tried after a held one: 1 + 0 + 1, held 1 + 0 + 1
    assert s.tries == [3, 2, 3, 2] and s.acceptance == (3 / 5, 3 / 5)


def test_greedy_with_a_draft_model_equals_plain_greedy(tiny_artifact, byte_llm):
    """The int4 build of the same tiny model drafts for the fp32 one: greedy output equal to plain
    greedy on 20 prompts, drafts really accepted; a draft model with another vocabulary is refused."""
    import pressa
    from pressa.errors import BadArgument
    from pressa.genai.sampling import SamplingConfig

    m = pressa.load(tiny_artifact("llama"), speculative="draft", draft_model=tiny_artifact("llama", "int4"))
    m.session.draft_cost = 0.05        # pinned, as above
    accepted = 0
    for ids in _prompts(np.random.default_rng(3)):
        outs = {mode: _generated(m, ids, SamplingConfig(max_new_tokens=30, speculative=mode, ignore_eos=True))
                for mode in ("off", "draft")}
        assert outs["draft"] == outs["off"]
        accepted += m.last_batch.accepted
    assert accepted > 100, accepted
    with pytest.raises(BadArgument, match="draft model"):
        _generated(pressa.load(tiny_artifact("llama")), [5, 6], SamplingConfig(speculative="draft"))
    with pytest.raises(BadArgument, match="vocabulary differs"):
        pressa.load(tiny_artifact("llama"), draft_model=byte_llm)


@pytest.mark.parametrize("temp", [0.7, 1.3])
def test_rejection_rule_with_a_draft_distribution_keeps_the_models(tiny_artifact, temp):
    """Drafts sampled from another distribution q (the int4 model's): over 20,000 seeds the verified
    token follows the fp32 model's own p (chi-square as above), for a q sharper and flatter than p."""
    from pressa.genai.decoder_session import DecoderSession
    from pressa.genai.sampling import SamplingConfig
    from pressa.genai.sequence import Sequence

    prompt = np.random.default_rng(4).integers(3, 160, 10).tolist()
    logits = DecoderSession(tiny_artifact("llama"), all_logits=True).prefill([prompt], 40)[1][0, -1:]
    draft_logits = DecoderSession(tiny_artifact("llama", "int4"), all_logits=True).prefill([prompt], 40)[1][0, -1]

    def softmax(x, t):
        x = x.astype(np.float64) / t
        e = np.exp(x - x.max())
        return e / e.sum()

    p, q = softmax(logits[0], temp), softmax(draft_logits, temp * 0.6)
    rng, counts = np.random.default_rng(5), np.zeros(160)
    for seed in range(20000):
        d = int(min(np.searchsorted(np.cumsum(q), rng.random(), side="right"), 159))
        seq = Sequence(list(prompt), SamplingConfig(temperature=temp, seed=seed))
        counts[seq.verify(np.concatenate([logits, logits]), [d], [q])[0]] += 1
    ok, chi2, df = _chi2_within(counts, p)
    assert ok, (chi2, df)

