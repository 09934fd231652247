"""Accuracy per bit: the combined algorithms against plain RTN on correlated inputs with outliers, scale
estimation that never makes a row worse, the byte-budget search against brute force (exact, monotone,
within 1% of its budget on a real build), and bits per weight counted against transformers' parameters
and a hand count of the bytes."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from pressa.capture.build_options import BuildOptions
from pressa.capture.llm import build_llm
from pressa.evaluate.footprint import weight_footprint
from pressa.quant.awq import search_scales
from pressa.quant.budget import choose_bits
from pressa.quant.gptq import quantize_gptq
from pressa.quant.rtn import dequantize, quantize_rtn
from pressa.quant.scale_estimation import estimate_scales, row_errors

from conftest import make_tiny
from helpers import outlier_layer, output_error

TEXT = "\n".join(" ".join(f"t{(i * 7 + j * 13) % 150 + 5}" for j in range(40)) for i in range(60))


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.mark.parametrize("bits,sym", [(4, False), (4, True), (2, False), (2, True)])
def test_combined_algorithms_beat_rtn_and_each_part_on_outliers(bits, sym):
    x, w = outlier_layer()
    h = x.T.astype(np.float64) @ x
    rtn = output_error(x, w, dequantize(quantize_rtn(w, bits, 32, sym)))
    searched = quantize_rtn(w, bits, 32, sym, search=True)
    se = output_error(x, w, dequantize(estimate_scales(w, h, searched)))
    s, _ = search_scales(w, np.abs(x).mean(0), x[:512], bits, 32, sym)
    hs = (h / np.outer(s, s)).astype(np.float32)              # the Hessian of the scaled inputs x / s
    awq = output_error(x, w, dequantize(quantize_rtn(w * s, bits, 32, sym)) / s)
    awq_se = output_error(x, w, dequantize(estimate_scales(w * s, hs, quantize_rtn(w * s, bits, 32, sym))) / s)
    awq_gptq = output_error(x, w, dequantize(quantize_gptq(w * s, hs, bits, 32, sym, search=True)) / s)
    gptq = output_error(x, w, dequantize(quantize_gptq(w, h, bits, 32, sym, search=True)))
    assert se < 0.55 * rtn and se <= output_error(x, w, dequantize(searched)), (se, rtn)
    assert awq_se < 0.35 * rtn and awq_se < awq, (awq_se, awq, rtn)
    assert awq_gptq < 0.25 * rtn and awq_gptq < min(awq, gptq), (awq_gptq, awq, gptq, rtn)


@pytest.mark.parametrize("bits,sym,k", [(4, False, 256), (2, False, 256), (4, True, 80)])
def test_gptq_in_activation_order_beats_gptq_in_column_order(bits, sym, k):
    """Static groups (scales fixed before the columns move) keep MatMulNBits' layout: the codes decode
    with the stored scales, and dead inputs (zero rows of H) and a K off the group still work."""
    x, w = outlier_layer(3, k=k)
    x[:, 7] = 0.0                                              # a dead input
    h = x.T.astype(np.float64) @ x
    rtn = output_error(x, w, dequantize(quantize_rtn(w, bits, 32, sym)))
    plain = output_error(x, w, dequantize(quantize_gptq(w, h, bits, 32, sym, search=True)))
    ordered = quantize_gptq(w, h, bits, 32, sym, search=True, act_order=True)
    assert ordered.q.shape == (w.shape[0], -(-k // 32), 32) and ordered.k == k
    act = output_error(x, w, dequantize(ordered))
    assert act < 0.5 * plain and act < 0.15 * rtn, (act, plain, rtn)


@pytest.mark.parametrize("seed,bits,sym,k", [(0, 4, False, 256), (1, 4, True, 80), (2, 2, False, 256),
                                             (3, 8, True, 256), (4, 2, True, 96)])
def test_scale_estimation_never_increases_a_rows_calibration_error(seed, bits, sym, k):
    x, w = outlier_layer(seed, n=40, k=k)
    h = x.T @ x
    before = quantize_rtn(w, bits, 32, sym, search=True)
    after = estimate_scales(w, h, before)
    e0, e1 = row_errors(w, dequantize(before), h), row_errors(w, dequantize(after), h)
    assert np.all(e1 <= e0 * (1 + 1e-6)), (e0 - e1).min()
    assert e1.sum() < e0.sum()
    if not sym:
        np.testing.assert_array_equal(after.zero_points, before.zero_points)     # the stored layout holds


def _brute_force(options, budget):
    best = None
    for combo in itertools.product(*[sorted(o) for o in options.values()]):
        nbytes = sum(options[k][b][0] for k, b in zip(options, combo))
        loss = sum(options[k][b][1] for k, b in zip(options, combo))
        if nbytes <= budget and (best is None or loss < best):
            best = loss
    return best


def test_budget_search_is_the_exact_optimum_within_its_budget_and_monotone():
    rng = np.random.default_rng(0)
    options = {}
    for j in range(6):
        size = int(rng.integers(1_000, 50_000))
        err2 = float(rng.uniform(0.5, 3.0))
        options[f"{j}.w"] = {2: (size * 2, err2), 4: (size * 4, err2 * rng.uniform(0.05, 0.3)),
                             8: (size * 8, err2 * rng.uniform(0.0005, 0.01))}
    floor = sum(o[2][0] for o in options.values())
    top = sum(o[8][0] for o in options.values())
    losses = []
    for budget in np.linspace(floor, top, 40).astype(int):
        bits = choose_bits(options, int(budget))
        used = sum(options[k][b][0] for k, b in bits.items())
        loss = sum(options[k][b][1] for k, b in bits.items())
        assert used <= budget
        assert loss == pytest.approx(_brute_force(options, budget), rel=1e-9) or \
            loss <= _brute_force(options, budget - 6 * ((top - floor) // 16384 + 1))    # rounding of the units
        losses.append(loss)
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))        # a larger budget never loses more


@pytest.mark.parametrize("tied", [True, False])
def test_bits_per_weight_counts_transformers_parameters_and_the_bytes_by_hand(tmp_path, tied):
    import torch
    from transformers import AutoModelForCausalLM

    hf = make_tiny("llama", tmp_path / "hf", hidden_size=64, intermediate_size=96, tie_word_embeddings=tied)
    params = AutoModelForCausalLM.from_pretrained(str(hf), torch_dtype=torch.float32).num_parameters()
    build_llm(str(hf), tmp_path / "fp32", BuildOptions(precision="fp32"))
    build_llm(str(hf), tmp_path / "int4", BuildOptions(precision="int4"))
    fp32, int4 = weight_footprint(tmp_path / "fp32"), weight_footprint(tmp_path / "int4")
    assert fp32["parameters"] == int4["parameters"] == params
    assert fp32["bits_per_weight"] == pytest.approx(32.0)
    cfg = json.loads((hf / "config.json").read_text())
    hid, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    layers = cfg["num_hidden_layers"]
    kv = cfg["num_key_value_heads"] * hid // cfg["num_attention_heads"]

    def nbits4(n, k):                      # codes, float16 scales, 4-bit zero points
        nb = -(-k // 32)
        return n * nb * 16 + n * nb * 2 + n * -(-nb // 2)

    linears = nbits4(hid + 2 * kv, hid) + nbits4(hid, hid) + nbits4(2 * inter, hid) + nbits4(hid, inter)
    embedding = vocab * hid + vocab * (hid // 32) * 2       # 8-bit symmetric codes, float16 scales
    head = 0 if tied else nbits4(vocab, hid)                  # an untied lm_head: a 4-bit linear
    norms = (2 * layers + 1) * hid * 4
    assert int4["weight_bytes"] == layers * linears + embedding + head + norms


def test_a_byte_budget_build_meets_its_size_within_one_percent(tmp_path):
    hf = make_tiny("llama", tmp_path / "hf", hidden_size=256, intermediate_size=768, num_hidden_layers=8,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=160, tie_word_embeddings=True)
    text = tmp_path / "calib.txt"
    text.write_text(TEXT)
    proxies, mixes = [], set()
    for bpw in (3.2, 4.4, 6.0):
        out = tmp_path / f"bpw{bpw}"
        build_llm(str(hf), out, BuildOptions(precision="int4", bits_per_weight=bpw), calibration_text=TEXT,
                  calibration_samples=12, calibration_seqlen=32)
        foot = weight_footprint(out)
        assert bpw * 0.99 <= foot["bits_per_weight"] <= bpw, (bpw, foot)
        manifest = json.loads((out / "pressa.json").read_text())
        assert manifest["budget"]["errors"] == "calibration outputs"
        assert manifest["budget"]["estimated_bytes"] == foot["weight_bytes"]
        proxies.append(manifest["budget"]["loss_proxy"])
        mixes |= set(manifest["mixed_precision"].values())
        picture = (out / "mixed_precision.svg").read_text()
        assert picture.count("<title>layer") == len(manifest["mixed_precision"])
    assert proxies[0] > proxies[1] > proxies[2]
    assert mixes == {2, 4, 8}
    for mb in (2.7, 3.3):                                      # the model files, as on disk
        out = tmp_path / f"size{mb}"
        build_llm(str(hf), out, BuildOptions(precision="int4", target_size_mb=mb))
        assert 0.99 * mb <= weight_footprint(out)["model_mb"] <= mb


def test_a_byte_budget_counts_an_untied_embedding_and_lm_head_as_built(tmp_path):
    hf = make_tiny("llama", tmp_path / "hf", hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=640, tie_word_embeddings=False)
    build_llm(str(hf), tmp_path / "out", BuildOptions(precision="int4", bits_per_weight=4.0))
    foot = weight_footprint(tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "pressa.json").read_text())
    assert manifest["budget"]["estimated_bytes"] == foot["weight_bytes"]
    assert 4.0 * 0.99 <= foot["bits_per_weight"] <= 4.0, foot
    assert "lm_head" in manifest["mixed_precision"]


@pytest.mark.parametrize("reads_rows", [True, False])
def test_a_large_weights_data_free_error_is_estimated_on_bands_of_its_rows(monkeypatch, reads_rows):
    """Above SAMPLE_ELEMENTS values a key's RTN error comes from evenly spaced bands of rows of each of
    its tensors: within 5% of the whole weight's error at 2, 4 and 8 bits on rows of very different
    scales; at or below it, the whole weight."""
    from types import SimpleNamespace

    from pressa.capture import mixed
    from pressa.quant.rtn import quant_error
    from pressa.sources.base import WeightReader

    rng = np.random.default_rng(0)
    tensors = {n: (rng.laplace(0, 1, (rows, 128)) * np.linspace(0.2, 3.0, rows)[:, None]).astype(np.float32)
               for n, rows in (("gate.weight", 2048), ("up.weight", 1536))}
    reads = []

    def rows(name, a, b):
        reads.append(b - a)
        return tensors[name][a:b]

    src = SimpleNamespace(weights=WeightReader(set(tensors), tensors.__getitem__, lambda n: tensors[n].shape,
                                               rows if reads_rows else None))
    whole = np.concatenate(list(tensors.values()))
    monkeypatch.setattr(mixed, "SAMPLE_ELEMENTS", whole.size)
    assert np.array_equal(mixed.sampled_weight(src, list(tensors)), whole)
    monkeypatch.setattr(mixed, "SAMPLE_ELEMENTS", 1 << 16)
    sample = mixed.sampled_weight(src, list(tensors))
    assert whole.size / 10 < sample.size <= (1 << 16) + 2 * mixed.BANDS * 128
    assert not reads_rows or sum(reads) * 128 == sample.size          # only the bands were read
    for bits in (2, 4, 8):
        full, est = quant_error(whole, bits, 32, False), quant_error(sample, bits, 32, False)
        assert abs(est / full - 1) < 0.05, (bits, full, est)


def test_rotary_tables_are_folded_from_the_graph_not_stored(tiny_artifact):
    """cos/sin tables come from Range, Mul, Cos and Sin over the inverse frequencies, which ONNX Runtime
    folds at load: the file holds none of their bytes, and they equal pressa.capture.rope's tables."""
    import onnx
    import onnxruntime as ort

    from pressa.capture.config import decoder_config
    from pressa.capture.rope import rope_cache

    folder = tiny_artifact("llama", "int4")
    model = onnx.load(str(folder / "model.onnx"))
    assert not [i for i in model.graph.initializer if i.name in ("cos_cache", "sin_cache")]
    assert max(int(np.prod(i.dims)) for i in model.graph.initializer if i.name.startswith("/model/rotary")) < 64
    cfg = decoder_config(json.loads((folder / "config.json").read_text()))
    keep = {"cos_cache", "sin_cache"}
    nodes = [n for n in model.graph.node if n.name.startswith("/model/rotary")]
    inits = [i for i in model.graph.initializer if i.name.startswith("/model/rotary")]
    graph = onnx.helper.make_graph(nodes, "rotary", [], [onnx.helper.make_tensor_value_info(
        n, onnx.TensorProto.FLOAT, None) for n in sorted(keep)], inits)
    sub = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    cos, sin = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})
    want_cos, want_sin = rope_cache(cfg.rope, cfg.rotary_dim, len(cos), cfg.max_position)
    np.testing.assert_allclose(cos, want_cos, atol=2e-6)
    np.testing.assert_allclose(sin, want_sin, atol=2e-6)
