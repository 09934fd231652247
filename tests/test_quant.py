"""Quantization math against plain numpy references and ONNX Runtime's own kernels."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from pressa.quant.packing import matmulnbits_tensors, pack_codes, unpack_codes, unpack_matmulnbits
from pressa.quant.rtn import dequantize, quantize_rtn
from pressa.quant.sensitivity import assign_bits

from helpers import outlier_layer, output_error


def half(s):
    """A scale as float16 stores it, where float16 is at full precision (2**-14 <= |s| <= 65504)."""
    return float(np.float16(s)) if 2.0 ** -14 <= abs(s) <= 65504 else s


def reference_rtn(w, bits, bs, sym):
    """Element-by-block loop written plainly, independent of the vectorized code."""
    n, k = w.shape
    nb = -(-k // bs)
    out = np.zeros((n, nb * bs), np.float32)
    levels = 2 ** bits - 1
    for r in range(n):
        for j in range(nb):
            blk = np.zeros(bs, np.float32)
            seg = w[r, j * bs:(j + 1) * bs]
            blk[: seg.size] = seg
            if sym:
                m = blk[np.argmax(np.abs(blk))]
                s = half(m / -(2 ** (bits - 1)))
                q = np.clip(np.round(blk / s) + 2 ** (bits - 1), 0, levels) if s != 0 else np.full(bs, 2 ** (bits - 1))
                out[r, j * bs:(j + 1) * bs] = (q - 2 ** (bits - 1)) * s
            else:
                lo, hi = min(blk.min(), 0.0), max(blk.max(), 0.0)
                s = half((hi - lo) / levels)
                zp = np.clip(np.round(-lo / s), 0, levels) if s else 0
                q = np.clip(np.round(blk / s) + zp, 0, levels) if s else np.zeros(bs)
                out[r, j * bs:(j + 1) * bs] = (q - zp) * s
    return out[:, :k]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("bs", [16, 32, 64, 128])
@pytest.mark.parametrize("sym", [True, False])
def test_rtn_matches_reference(bits, bs, sym):
    rng = np.random.default_rng(bits * bs)
    w = rng.standard_normal((6, 200)).astype(np.float32)       # 200: not a multiple of the block
    w[0, :bs] = 0.0                                            # an all-zero block
    got = dequantize(quantize_rtn(w, bits, bs, sym))
    np.testing.assert_allclose(got, reference_rtn(w, bits, bs, sym), rtol=1e-6, atol=1e-6)
    step = np.abs(w).max() / (2 ** (bits - 1) - 1)
    assert np.abs(got - w).max() <= step                        # error within one step


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_roundtrip(bits):
    rng = np.random.default_rng(0)
    qw = quantize_rtn(rng.standard_normal((5, 96)).astype(np.float32), bits, 32, False)
    t = matmulnbits_tensors(qw)
    assert t["B"].shape == (5, 3, 32 * bits // 8)
    np.testing.assert_array_equal(unpack_matmulnbits(t["B"], bits, 32), qw.q)
    codes = rng.integers(0, 1 << bits, (4, 7)).astype(np.uint8)
    packed = pack_codes(codes, bits)
    per = 8 // bits
    assert packed.shape == (4, -(-7 // per))
    assert packed[0, 0] == sum(int(codes[0, j]) << (j * bits) for j in range(per))   # first code lowest
    np.testing.assert_array_equal(unpack_codes(packed, bits, 7), codes)


def _run(node, inputs, inits):
    import onnxruntime as ort

    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype),
                                                                          list(a.shape)) for n, a in inputs.items()],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for n, a in inits.items()])
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)[0]


@pytest.mark.parametrize("bits,sym,bs,k", [(4, True, 32, 256), (4, False, 32, 256), (4, False, 64, 256),
                                           (8, True, 32, 256), (8, False, 128, 256), (2, True, 32, 256),
                                           (2, False, 32, 256), (2, False, 128, 256),
                                           (4, False, 32, 265), (8, True, 32, 265)])   # a partial last block
def test_matmulnbits_equals_dequantized_matmul(bits, sym, bs, k):
    rng = np.random.default_rng(1)
    n = 48
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((3, k)).astype(np.float32)
    qw = quantize_rtn(w, bits, bs, sym)
    t = matmulnbits_tensors(qw)
    names = ["x", "B", "scales"] + (["zero_points"] if "zero_points" in t else [])
    node = helper.make_node("MatMulNBits", names, ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=bs, accuracy_level=0)
    y = _run(node, {"x": x}, {k2: v for k2, v in t.items()})
    np.testing.assert_allclose(y, x @ dequantize(qw).T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits,sym", [(4, False), (8, True), (8, False)])
def test_gather_block_quantized_equals_dequantized_rows(bits, sym):
    rng = np.random.default_rng(2)
    v, h, bs = 40, 64, 32
    e = rng.standard_normal((v, h)).astype(np.float32)
    qw = quantize_rtn(e, bits, bs, sym)
    t = matmulnbits_tensors(qw)
    inits = {"data": t["B"].reshape(v, -1), "scales": t["scales"].reshape(v, -1)}
    if "zero_points" in t:
        inits["zp"] = t["zero_points"].reshape(v, -1)
    ids = np.array([[0, 5, 39], [7, 7, 1]], np.int64)
    node = helper.make_node("GatherBlockQuantized", ["data", "ids", "scales"] + (["zp"] if "zp" in inits else []),
                            ["y"], domain="com.microsoft", gather_axis=0, quantize_axis=1, block_size=bs, bits=bits)
    y = _run(node, {"ids": ids}, inits)
    np.testing.assert_allclose(y, dequantize(qw)[ids], rtol=1e-6, atol=1e-6)


def test_ratio_keeps_most_sensitive_in_int8():
    errors = {"a": 0.1, "b": 0.5, "c": 0.2, "d": 0.9}
    sizes = {"a": 10, "b": 10, "c": 10, "d": 10}
    assert assign_bits(errors, sizes, 0.5) == {"a": 4, "c": 4, "b": 8, "d": 8}
    assert set(assign_bits(errors, sizes, 1.0).values()) == {4}
    assert set(assign_bits(errors, sizes, 0.0).values()) == {8}


def test_chunked_quantization_equals_whole(monkeypatch):
    from pressa.quant import rtn

    w = np.random.default_rng(3).standard_normal((700, 64)).astype(np.float32)
    whole = rtn.quantize_rtn(w, 4, 32, False)
    monkeypatch.setattr(rtn, "CHUNK_ELEMENTS", 1000)           # ~15 rows per chunk
    chunked = rtn.quantize_rtn(w, 4, 32, False)
    np.testing.assert_array_equal(chunked.q, whole.q)
    np.testing.assert_array_equal(chunked.scales, whole.scales)
    np.testing.assert_array_equal(chunked.zero_points, whole.zero_points)


@pytest.mark.parametrize("sym", [True, False])
def test_gptq_and_awq_beat_rtn_on_outliers(sym):
    from pressa.quant.awq import quantize_awq, search_scales
    from pressa.quant.gptq import quantize_gptq

    x, w = outlier_layer()
    rtn = output_error(x, w, dequantize(quantize_rtn(w, 4, 32, sym)))
    gptq = output_error(x, w, dequantize(quantize_gptq(w, x.T.astype(np.float64) @ x, 4, 32, sym)))
    s, _ = search_scales(w, np.abs(x).mean(0), x[:512], 4, 32, sym)
    awq = output_error(x, w, dequantize(quantize_awq(w, s, 4, 32, sym)) / s[None, :])
    assert gptq < 0.7 * rtn, (gptq, rtn)
    assert awq < 0.7 * rtn, (awq, rtn)


def test_gptq_inverse_hessian_factor_by_blocks_matches_the_float64_inverse():
    """The blocked Cholesky and triangular inverse (K above two LAPACK-sized blocks, one dead input):
    U upper with U^T U = (H + damping)^-1, as numpy's float64 inverse gives it."""
    from pressa.quant.gptq import BASE, _inverse_hessian_factor

    rng = np.random.default_rng(3)
    k = 2 * BASE + 77
    x = rng.standard_normal((3 * k, k)) * np.exp(rng.standard_normal(k))
    x[:, 5] = 0.0
    h = x.T @ x
    u = _inverse_hessian_factor(h.astype(np.float32), 0.01)
    held = h.copy()
    held[5, 5] = 1.0
    ref = np.linalg.inv(held + 0.01 * np.mean(np.diag(held)) * np.eye(k))
    assert np.abs(np.tril(u, -1)).max() == 0.0
    assert np.abs(u.T.astype(np.float64) @ u - ref).max() < 1e-4 * np.abs(ref).max()


def textbook_gptq(w, h, bits, block, sym, act_order, damp=0.01):
    """GPTQ as its paper writes it, in float64: one column at a time, each column's error applied to
    every later column at once through the upper Cholesky factor of (H + damping)^-1; groups' scales from
    the weights as updated when a group's first column is reached (or, in activation order, fixed
    from the weights beforehand). Returns the codes [N, K]."""
    from pressa.quant.rtn import group_params

    n, k = w.shape
    h = h + damp * np.mean(np.diag(h)) * np.eye(k)
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    wt = w.astype(np.float64).copy()
    s, z = np.zeros((n, k // block), np.float32), np.zeros((n, k // block), np.float32)
    if act_order:
        s, z = group_params(w.reshape(n, k // block, block).astype(np.float32), bits, sym, True)
    u = np.linalg.cholesky(np.linalg.inv(h[np.ix_(order, order)])).T
    codes = np.zeros((n, k), np.int64)
    for j, col in enumerate(order):
        g = col // block
        if not act_order and col % block == 0:
            gs, gz = group_params(wt[:, None, col:col + block].astype(np.float32), bits, sym, True)
            s[:, g], z[:, g] = gs[:, 0], gz[:, 0]
        inv = np.divide(1.0, s[:, g], out=np.zeros(n, np.float32), where=s[:, g] != 0)
        q = np.clip(np.rint(wt[:, col] * inv) + z[:, g], 0, (1 << bits) - 1)
        codes[:, col] = q
        e = (wt[:, col] - (q - z[:, g]) * s[:, g]) / u[j, j]
        wt[:, order[j + 1:]] -= e[:, None] * u[j, j + 1:][None, :]
    return codes


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_by_blocks_of_columns_equals_the_textbook_column_loop(act_order):
    """The blocked column loop (INNER columns, then the batch, then the rest) gives the codes of GPTQ's
    one-column-at-a-time loop in float64, over several batches and sub-blocks (K = 288, two lazy
    batches of 128 and a partial one), up to rounding ties float32 can flip."""
    from pressa.quant.gptq import quantize_gptq

    x, w = outlier_layer(2, n=48, k=288)
    h = (x.T @ x).astype(np.float64)
    got = quantize_gptq(w, h.astype(np.float32), 4, 32, False, search=True, act_order=act_order)
    want = textbook_gptq(w, h, 4, 32, False, act_order)
    assert (got.q.reshape(48, -1)[:, :288] != want).mean() < 0.002


def test_gram_by_upper_blocks_is_x_transpose_x():
    """Calibration's H, added batch by batch in its upper block triangle and mirrored when read, is
    X^T X of all the batches (float64 reference)."""
    from pressa.capture.calibrate import accumulate

    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 40, 1100)).astype(np.float32)
    stats = {}
    for i in range(3):
        accumulate(stats, "0.down", x[i:i + 1], i, 3)
    flat = x.reshape(-1, 1100).astype(np.float64)
    ref = flat.T @ flat
    assert np.abs(stats["0.down"].hessian() - ref).max() < 1e-5 * np.abs(ref).max()
    assert stats["0.down"].count == 120


def test_gptq_layout_is_matmulnbits_compatible():
    from pressa.quant.gptq import quantize_gptq

    x, w = outlier_layer(1, n=16, k=80)                      # K not a multiple of the group
    qw = quantize_gptq(w, x.T @ x, 4, 32, False)
    assert qw.q.shape == (16, 3, 32) and qw.scales.shape == (16, 3) and qw.zero_points.dtype == np.uint8
    assert qw.q.max() <= 15 and dequantize(qw).shape == w.shape


@pytest.mark.parametrize("sym", [True, False])
def test_scale_search_never_worse_per_block(sym):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    w[:, ::37] *= 6                                            # outliers inside blocks
    plain, searched = quantize_rtn(w, 4, 32, sym), quantize_rtn(w, 4, 32, sym, search=True)
    err = lambda qw: np.square(dequantize(qw) - w).reshape(64, -1, 32).sum(-1)
    assert np.all(err(searched) <= err(plain) + 1e-9)
    assert err(searched).sum() < 0.99 * err(plain).sum()


def test_scale_search_reproduces_a_q8_0_grid_exactly():
    """Values on llama.cpp's Q8_0 grid (d * q, q in [-127, 127], d = amax / 127 stored as float16)
    come back exactly: the search tries the extreme on +-127 as well as on -128. This is how a
    Q8_0 GGUF embedding is carried over without loss."""
    rng = np.random.default_rng(6)
    d = rng.uniform(0.001, 0.01, (8, 4, 1)).astype(np.float16).astype(np.float32)
    q = rng.integers(-127, 128, (8, 4, 32)).astype(np.float32)
    q[:, :, 0] = 127                                           # each block reaches the extreme
    w = (d * q).reshape(8, 128)
    qw = quantize_rtn(w, 8, 32, True, search=True)
    np.testing.assert_array_equal(dequantize(qw), w)
    np.testing.assert_array_equal(np.abs(qw.scales), d[..., 0])
    assert np.abs(dequantize(quantize_rtn(w, 8, 32, True)) - w).max() > 1e-5      # the plain grid is off


def test_group_larger_than_a_divisor_of_the_hidden_size(tmp_path):
    """hidden 96 with --group-size 64: the tied embedding's GatherBlockQuantized must not return padded
    rows (96 -> 128), so it and the lm_head use group 32; the int4 model stays close to fp32."""
    import onnx
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pressa.capture.build_options import BuildOptions
    from pressa.capture.llm import build_llm
    from pressa.genai.decoder_session import DecoderSession

    from conftest import write_tiny_tokenizer

    cfg = LlamaConfig(vocab_size=160, hidden_size=96, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=3, num_key_value_heads=1, tie_word_embeddings=True)   # head size 32
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    write_tiny_tokenizer(tmp_path / "hf")
    outs = {}
    for precision in ("fp32", "int4"):
        build_llm(str(tmp_path / "hf"), tmp_path / precision, BuildOptions(precision=precision, block_size=64))
        s = DecoderSession(tmp_path / precision, all_logits=True)
        outs[precision] = s.prefill([[5, 9, 17, 33, 4, 70]], capacity=8)[1][0]
    g = onnx.load(str(tmp_path / "int4" / "model.onnx"), load_external_data=False)
    blocks = {n.op_type: helper.get_attribute_value(next(a for a in n.attribute if a.name == "block_size"))
              for n in g.graph.node if n.name in ("/model/embed_tokens/GatherBlockQuantized", "lm_head/MatMulNBits")}
    assert blocks == {"GatherBlockQuantized": 32, "MatMulNBits": 32}
    a, b = outs["fp32"].ravel(), outs["int4"].ravel()
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.98


def test_the_largest_magnitude_is_the_first_by_argmax_in_either_layout():
    """Symmetric scales' extreme value equals argmax(|v|)'s pick, ties of +a and -a and all-zero blocks
    included, on contiguous blocks and on the transposed view GPTQ passes."""
    from pressa.quant.rtn import largest_magnitude

    rng = np.random.default_rng(7)
    w = rng.integers(-8, 9, (300, 64)).astype(np.float32)          # a coarse grid: +a / -a ties are common
    w[:3] = 0.0
    w[0, 0] = -0.0                                                   # argmax picks it: a scale of +0.0
    for blocks in (w.reshape(300, 2, 32), np.ascontiguousarray(w.T).T.reshape(300, 2, 32)):
        want = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1)[..., None], axis=-1)[..., 0]
        got = largest_magnitude(blocks)
        assert np.array_equal(got, want) and np.array_equal(np.signbit(got), np.signbit(want))
    blocks = w[3:].reshape(-1, 32)
    assert (blocks.max(-1) == -blocks.min(-1)).sum() > 10                     # ties were exercised
