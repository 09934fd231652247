"""Layer-by-layer calibration (pressa.capture.layerwise): the same decisions as calibrating the whole model
at once, memory that does not grow with depth, and an interrupted build that resumes to the same bytes."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from calibration_reference import whole_model_stats

from pressa.capture.build_options import BuildOptions
from pressa.capture.calibrate import calibration_ids
from pressa.capture.config import decoder_config
from pressa.capture.decoder import DecoderBuilder
from pressa.capture.layerwise import LayerCache, LayerwiseCalibration
from pressa.capture.llm import build_llm
from pressa.quant.rtn import dequantize, quantize_rtn
from pressa.sources import open_source

from conftest import make_tiny

TEXT = "\n".join(" ".join(f"t{(i * 7 + j * 13) % 150 + 5}" for j in range(40)) for i in range(60))


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def prepared(folder):
    src = open_source(str(folder))
    cfg = decoder_config(src.config)
    src.weights = cfg.arch.canonical(src.weights, cfg.num_layers, cfg.num_heads, cfg.num_experts)
    return src, cfg, calibration_ids(src.tokenizer_files, TEXT, 12, 32)


def whole_model_decisions(cfg, weights, windows, opts) -> dict:
    """Every layer quantized from the whole model's statistics, as the builder records them."""
    builder = DecoderBuilder(cfg, weights, opts, whole_model_stats(cfg, weights, windows))
    builder.record = {}
    for i in range(cfg.num_layers):
        plan = builder.plan(i)
        for key in ("qkv", "o", "gate_up", "down"):
            builder.quantize(plan.weight(key), plan.bits[key], f"{i}.{key}")
    return builder.record


@pytest.mark.parametrize("algorithm,estimate", [("gptq", False), ("awq", False), ("awq+gptq", False),
                                                ("awq", True), ("rtn", True), ("gptq", True)])
def test_layer_by_layer_decisions_equal_the_whole_model_calibration(tiny_dir, tmp_path, algorithm, estimate):
    src, cfg, windows = prepared(tiny_dir("llama"))
    opts = BuildOptions(precision="int4", algorithm=algorithm, scale_estimation=estimate, calibration_feed="float")
    want = whole_model_decisions(cfg, src.weights, windows, opts)
    got = LayerwiseCalibration(cfg, src.weights, opts, windows).run(LayerCache(tmp_path / "c"))
    assert len(want) == cfg.num_layers * 4
    for key, decided in want.items():
        mine = got[key]
        if algorithm.startswith("awq"):
            assert np.allclose(mine.awq_scale, decided["awq_scale"], rtol=1e-4), key
        a, b = dequantize(mine.quantized), dequantize(decided["quantized"])
        step = np.repeat(decided["quantized"].scales, 32, axis=1)[:, : a.shape[1]]
        assert np.mean(a == b) > 0.999 and np.all(np.abs(a - b) <= step * 1.001), key


def python_peak(depth: int, tmp_path, whole: bool) -> int:
    folder = make_tiny("llama", tmp_path / f"deep{depth}", num_hidden_layers=depth, hidden_size=128,
                       intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)
    src, cfg, windows = prepared(folder)
    opts = BuildOptions(precision="int4", algorithm="gptq")
    tracemalloc.start()
    if whole:
        stats = whole_model_stats(cfg, src.weights, windows)
        del stats
    else:
        LayerwiseCalibration(cfg, src.weights, opts, windows).run(LayerCache(tmp_path / f"c{depth}"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_calibration_memory_does_not_grow_with_depth(tmp_path):
    """numpy's allocations (statistics, hidden states, weights read), traced: four times the layers, the
    same peak; the whole-model calibration's peak grows with them (so the measure can tell)."""
    shallow, deep = python_peak(2, tmp_path, False), python_peak(8, tmp_path, False)
    assert deep < 1.2 * shallow, (shallow, deep)
    assert python_peak(8, tmp_path, True) > 2.5 * python_peak(2, tmp_path, True)


def test_an_interrupted_calibrated_build_resumes_to_the_same_bytes(tiny_dir, tmp_path):
    folder = tiny_dir("llama")
    kw = dict(calibration_text=TEXT, calibration_samples=12, calibration_seqlen=32)
    build_llm(str(folder), tmp_path / "whole", BuildOptions(precision="int4", algorithm="gptq"), **kw)

    def stop_at_layer_2(done, total, what):
        if what == "calibrating layer 2/3":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_llm(str(folder), tmp_path / "resumed", BuildOptions(precision="int4", algorithm="gptq"),
                  progress=stop_at_layer_2, **kw)
    assert not (tmp_path / "resumed").exists()
    said = []
    build_llm(str(folder), tmp_path / "resumed", BuildOptions(precision="int4", algorithm="gptq"), log=said.append,
              **kw)
    assert any("resuming at layer 2 of 3" in s for s in said), said
    for name in ("model.onnx", "model.onnx.data"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_awq_then_gptq_lowers_each_layers_calibration_error_below_awq(tiny_dir):
    """GPTQ on AWQ-scaled weights needs the Hessian of the scaled inputs (H / s s^T): with it, every
    linear's output error on the calibration inputs falls below AWQ's own (with H unscaled it would not)."""
    from pressa.sources.base import WeightReader

    src, cfg, windows = prepared(tiny_dir("llama"))
    loud = np.ones(cfg.hidden_size, np.float32)
    loud[[3, 17, 40]] = 12.0                          # a few loud input channels, as LLM activations have

    def read(name):
        w = plain(name)
        return w * loud if name.endswith("layernorm.weight") else w

    plain = src.weights
    src.weights = WeightReader(plain.names, read, plain.shapes)
    stats = whole_model_stats(cfg, src.weights, windows)
    found = {a: whole_model_decisions(cfg, src.weights, windows, BuildOptions(precision="int4", algorithm=a))
             for a in ("awq", "awq+gptq")}
    builder = DecoderBuilder(cfg, src.weights, BuildOptions(precision="fp32"))
    better = 0
    for key in found["awq"]:
        i, part = key.split(".")
        w = builder.stacked(int(i), part)
        h = stats[key].hessian().astype(np.float64)
        errs = {}
        for a, decided in found.items():
            e = dequantize(decided[key]["quantized"]) / decided[key]["awq_scale"][None, :] - w
            errs[a] = float(np.sum((e @ h) * e))
        better += errs["awq+gptq"] < errs["awq"]
    assert better == len(found["awq"]) == cfg.num_layers * 4, better


def final_norm_io(folder, windows):
    """transformers' final norm on the windows: (its inputs, its outputs) [n, seq, hidden], by a hook."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    seen = []
    model.model.norm.register_forward_hook(lambda mod, args, out: seen.append((args[0].numpy(), out.numpy())))
    with torch.no_grad():
        model(torch.tensor(windows))
    return seen[0]


def head_error(qw, w, h) -> float:
    e = dequantize(qw) - w
    return float(np.sum((e @ h) * e))


@pytest.mark.parametrize("kind,embedding_bits", [("qwen2", 4), ("qwen2", 8), ("llama", 4)])
def test_the_lm_head_is_quantized_with_the_hessian_of_the_final_norms_output(tiny_dir, kind, embedding_bits):
    """The lm_head's statistics are X^T X of transformers' final-norm output; GPTQ with them (for a tied
    embedding on the embedding's own grid) loses less on those inputs than the RTN the build used before."""
    folder = tiny_dir(kind)
    src, cfg, windows = prepared(folder)
    before, after = final_norm_io(folder, windows)
    opts = BuildOptions(precision="int4", algorithm="gptq", embedding_bits=embedding_bits)
    stats = LayerwiseCalibration(cfg, src.weights, opts, windows).head_stats(before)
    x = after.reshape(-1, cfg.hidden_size).astype(np.float64)
    h = stats["lm_head"].hessian()
    assert np.allclose(h, x.T @ x, rtol=1e-4, atol=1e-3 * np.abs(x.T @ x).max())
    builder = DecoderBuilder(cfg, src.weights, opts, stats)
    name, bits, grid = builder.head_weight()
    assert name == ("model.embed_tokens.weight" if cfg.tie_embeddings else "lm_head.weight")
    w = src.weights(name)
    gptq = builder.quantize_head(rows=100)                            # row chunks as a big vocabulary takes them
    rtn = quantize_rtn(w, bits, *(grid or (opts.block_size, opts.symmetric, True)))
    assert (gptq.bits, gptq.block_size) == (rtn.bits, rtn.block_size)
    assert head_error(gptq, w, h) < 0.8 * head_error(rtn, w, h)


def test_a_calibrated_build_stores_the_lm_heads_decisions(tiny_dir, tmp_path):
    """The artifact's tied embedding (GatherBlockQuantized and the lm_head's MatMulNBits read the same
    bytes) is the calibration's GPTQ of it, not a plain RTN."""
    import onnx
    from onnx import numpy_helper

    from pressa.capture.layerwise import cache_key, cache_root
    from pressa.quant.packing import matmulnbits_tensors

    folder = tiny_dir("qwen2")
    src, cfg, windows = prepared(folder)
    opts = BuildOptions(precision="int4", algorithm="gptq", embedding_bits=4)
    cache = LayerCache(cache_root() / cache_key(src.location, windows, opts))
    decided = LayerwiseCalibration(cfg, src.weights, opts, windows).run(cache)["lm_head"].quantized
    said = []
    build_llm(str(folder), tmp_path / "out", BuildOptions(precision="int4", algorithm="gptq", embedding_bits=4),
              calibration_text=TEXT, calibration_samples=12, calibration_seqlen=32, log=said.append)
    assert any("all 3 layers finished" in s for s in said), said
    model = onnx.load(tmp_path / "out" / "model.onnx")
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    want = matmulnbits_tensors(decided)
    assert np.array_equal(stored["model.embed_tokens.qweight"].reshape(-1), want["B"].reshape(-1))
    plain = matmulnbits_tensors(quantize_rtn(src.weights("model.embed_tokens.weight"), 4, 32, False, True))
    assert not np.array_equal(plain["B"].reshape(-1), want["B"].reshape(-1))


def _codes_agreement(artifact, want: dict) -> dict[str, float]:
    """Per linear of the whole-model decisions `want`: the share of the artifact's codes equal to them."""
    import onnx
    from onnx import numpy_helper

    from pressa.quant.packing import matmulnbits_tensors

    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(artifact / "model.onnx").graph.initializer}
    out = {}
    for key, decided in want.items():
        packed = matmulnbits_tensors(decided["quantized"])["B"].reshape(-1)
        found = [v for v in stored.values() if v.dtype == np.uint8 and v.size == packed.size]
        out[key] = max(float(np.mean(v.reshape(-1) == packed)) for v in found)
    return out


def test_calibration_feed_float_builds_the_whole_model_calibrations_weights(tiny_dir, tmp_path):
    """--calibration-feed float: every layer quantized from the float model's activations, as one
    whole-model calibration does (one pass per layer); the default feeds each layer the quantized
    layers' outputs, so deeper layers decide otherwise (the switch reaches the calibration)."""
    folder = tiny_dir("llama")
    src, cfg, windows = prepared(folder)
    want = whole_model_decisions(cfg, src.weights, windows, BuildOptions(precision="int4", algorithm="gptq"))
    kw = dict(calibration_text=TEXT, calibration_samples=12, calibration_seqlen=32)
    agree = {}
    for feed in ("float", "quantized"):
        build_llm(str(folder), tmp_path / feed, BuildOptions(precision="int4", algorithm="gptq",
                                                             calibration_feed=feed), **kw)
        agree[feed] = _codes_agreement(tmp_path / feed, want)
    assert min(agree["float"].values()) > 0.999, agree["float"]
    last = [k for k in want if k.startswith(f"{cfg.num_layers - 1}.")]
    assert max(agree["quantized"][k] for k in last) < 0.99, agree["quantized"]
