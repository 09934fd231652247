"""fp32 ONNX logits equal transformers' for every supported architecture: a left-padded batch of
two prompts of different lengths, then three decode steps through the KV cache."""

from __future__ import annotations

import numpy as np
import pytest

from pressa.genai.decoder_session import DecoderSession

from conftest import ARCH_CONFIGS, hf_left_padded, load_hf, rng_rows

TOL = 1e-4


@pytest.mark.parametrize("kind", list(ARCH_CONFIGS))
def test_fp32_logits_match_transformers(kind, tiny_dir, tiny_artifact):
    rows = rng_rows(1, lengths=(9, 5))
    steps = [[5, 7], [11, 13], [17, 19]]
    ref_prefill, ref_steps = hf_left_padded(load_hf(tiny_dir(kind)), rows, steps)

    sess = DecoderSession(tiny_artifact(kind, "fp32"), threads=1, all_logits=True)
    _, full = sess.prefill(rows, capacity=16)
    for b, r in enumerate(rows):
        got = full[b, : len(r)]
        assert np.abs(got - ref_prefill[b]).max() < TOL, f"prefill row {b}"
    # the shipped graph computes logits for each row's last token only
    last, _ = DecoderSession(tiny_artifact(kind, "fp32"), threads=1).prefill(rows, capacity=16)
    assert np.abs(last - np.stack([p[-1] for p in ref_prefill])).max() < TOL
    for t, toks in enumerate(steps):
        got = sess.step(np.array(toks))
        assert np.abs(got - ref_steps[t]).max() < TOL, f"decode step {t}"
    # the references are not trivially close to zero
    assert np.abs(ref_steps[-1]).max() > 0.05


def test_unsupported_architecture_lists_supported():
    from pressa.capture.config import decoder_config
    from pressa.errors import UnsupportedArchitecture

    with pytest.raises(UnsupportedArchitecture, match="llama.*qwen3"):
        decoder_config({"model_type": "bloom", "hidden_size": 8})


def test_family_switches_not_built_are_refused_in_one_line():
    from pressa.capture.config import decoder_config
    from pressa.errors import UnsupportedArchitecture

    with pytest.raises(UnsupportedArchitecture, match="stablelm with use_parallel_residual"):
        decoder_config({"model_type": "stablelm", "hidden_size": 8, "use_parallel_residual": True})
    with pytest.raises(UnsupportedArchitecture, match="multiple of 16"):
        from pressa.capture.build_options import BuildOptions
        from pressa.capture.decoder import DecoderBuilder

        cfg = decoder_config({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 8, "vocab_size": 10,
                              "num_hidden_layers": 1, "intermediate_size": 8})            # head 8: rotary 8 dims
        DecoderBuilder(cfg, None, BuildOptions(precision="fp32"))


@pytest.mark.parametrize("kind", list(ARCH_CONFIGS))
def test_greedy_equals_transformers_and_int4_runs(kind, tiny_dir, tiny_artifact):
    """Greedy tokens of the fp32 build equal transformers' generate; the int4 build generates too."""
    import torch

    import pressa
    from pressa.genai.sampling import SamplingConfig

    prompt, n = [5, 9, 17, 33, 4, 70], 8
    hf = load_hf(tiny_dir(kind))
    hf.generation_config.eos_token_id = None               # as ignore_eos: never stop, never suppress EOS
    with torch.no_grad():
        want = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                           pad_token_id=0)[0, len(prompt):].tolist()
    cfg = SamplingConfig(max_new_tokens=n, ignore_eos=True)
    got = [int(t[0]) for t, _ in pressa.load(tiny_artifact(kind, "fp32")).generate_ids([prompt], cfg)]
    assert got == want
    q = [int(t[0]) for t, _ in pressa.load(tiny_artifact(kind, "int4")).generate_ids([prompt], cfg)]
    assert len(q) == n and all(0 <= t < 160 for t in q)


@pytest.mark.parametrize("kind", ["qwen3_moe", "mixtral"])
def test_moe_layers_are_one_onnx_runtime_operator(kind, tiny_artifact):
    """Each MoE layer is one MoE (float) or QMoE (quantized experts) node, the dense layer stays dense, and
    the int8 build's logits track the fp32 build's as closely as a dense model's do (>= 0.9993 correlation
    for llama and qwen3): it catches experts routed or weighted otherwise (Qwen3-MoE's unnormalized top-k)."""
    import onnx

    layers = 2 if kind == "qwen3_moe" else 3                      # qwen3_moe's layer 1 is in mlp_only_layers
    graphs = {p: onnx.load(tiny_artifact(kind, p) / "model.onnx", load_external_data=False)
              for p in ("fp32", "int4", "int8")}
    assert sum(n.op_type == "MoE" for n in graphs["fp32"].graph.node) == layers
    for p, bits in (("int4", 4), ("int8", 8)):
        qmoe = [n for n in graphs[p].graph.node if n.op_type == "QMoE"]
        assert len(qmoe) == layers
        assert all(a.i == bits for n in qmoe for a in n.attribute if a.name == "expert_weight_bits")
    rows = [[5, 9, 17, 33, 4, 70]]
    ref, got = (DecoderSession(tiny_artifact(kind, p), threads=1, all_logits=True).prefill(rows, capacity=8)[1][0]
                for p in ("fp32", "int8"))
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.999
