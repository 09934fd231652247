"""The GPT-2 family (the DialoGPT of our users' OpenVINO tutorial): a random model with
microsoft/DialoGPT-small's config (768 wide, 12 heads, 1024 positions, Conv1D weights, tanh GELU, tied
head) but 2 layers and the tests' small vocabulary, through auto-opt and chat."""

from __future__ import annotations

import numpy as np

from conftest import load_hf, make_tiny
from helpers import run_cli

DIALOGPT = dict(hidden_size=768, num_attention_heads=12, num_key_value_heads=12, num_hidden_layers=2,
                max_position_embeddings=1024, n_inner=None, initializer_range=0.02)


def test_dialogpt_shaped_gpt2_greedy_equals_transformers_and_int4_chats(tmp_path):
    import torch

    import pressa
    from pressa.genai.sampling import SamplingConfig

    hf = make_tiny("gpt2", tmp_path / "hf", **DIALOGPT)
    res = run_cli("auto-opt", "-m", hf, "--precision", "fp32", "-o", tmp_path / "fp32")
    assert res.returncode == 0, res.stderr
    prompt = [5, 9, 17, 33, 4]
    model = load_hf(hf)
    model.generation_config.eos_token_id = None             # as ignore_eos: never stop, never suppress EOS
    with torch.no_grad():
        want = model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                              pad_token_id=0)[0, len(prompt):].tolist()
    m = pressa.load(tmp_path / "fp32")
    got = [int(t[0]) for t, _ in m.generate_ids([prompt], SamplingConfig(max_new_tokens=10, ignore_eos=True))]
    assert got == want
    res = run_cli("auto-opt", "-m", hf, "--precision", "int4", "-o", tmp_path / "int4")
    assert res.returncode == 0, res.stderr
    int4 = pressa.load(tmp_path / "int4")
    first = int4.session.prefill([prompt], 8)[0][0]
    ref = m.session.prefill([prompt], 8)[0][0]
    assert np.corrcoef(first, ref)[0, 1] > 0.95                   # int4 logits follow fp32's
    chat = run_cli("chat", tmp_path / "int4", "--max-new-tokens", "6", "--temperature", "0", input="t5 t6\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip()


def test_calibrated_algorithms_refused_where_they_cannot_fold(tiny_dir, tmp_path):
    """AWQ/GPTQ fold scales into the norm before attention and the one before a gated MLP: rows whose layers
    have no such pair (parallel attention+MLP, plain MLP, post-norms only) say so in one line."""
    from helpers import assert_user_error, no_leftovers

    (tmp_path / "calib.txt").write_text("t5 t6 t7 t8 t9\n" * 20)
    for kind in ("cohere", "gpt2"):
        res = run_cli("auto-opt", "-m", tiny_dir(kind), "--algorithm", "gptq", "--calibration-data",
                      tmp_path / "calib.txt", "-o", tmp_path / kind)
        assert_user_error(res, kind, "RTN")
        no_leftovers(tmp_path, kind)


def test_canonical_shapes_of_transposed_weights_match_what_is_read(tiny_dir):
    """GPT-2's Conv1D weights are stored [in, out] and read transposed: the canonical reader's shapes are
    those of the arrays it reads, whether or not the source has a shape index."""
    from pressa.capture.config import decoder_config
    from pressa.sources import open_source
    from pressa.sources.base import WeightReader

    src = open_source(str(tiny_dir("gpt2")))
    cfg = decoder_config(src.config)
    for reader in (src.weights, WeightReader(src.weights.names, src.weights)):
        canon = cfg.arch.canonical(reader, cfg.num_layers, cfg.num_heads, cfg.num_experts)
        square = 0
        for name in canon.names:
            got, want = canon.shape(name), canon(name).shape
            assert tuple(got) == want, (reader.shapes is not None, name, got, want)
            square += len(want) == 2 and want[0] == want[1]
        assert square < len(canon.names) - 4          # the test sees non-square linears
