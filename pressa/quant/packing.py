"""Byte layouts of ONNX Runtime's MatMulNBits (2-, 4- and 8-bit codes) and GatherBlockQuantized (4, 8).
Codes below 8 bits are packed little-endian: the first code in a byte's lowest bits."""

from __future__ import annotations

import numpy as np

from pressa.quant.rtn import QuantizedWeight


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes of `bits` (2, 4 or 8) along the last axis into bytes, 8 // bits per byte."""
    if bits == 8:
        return np.asarray(codes, np.uint8)
    per = 8 // bits
    pad = (-codes.shape[-1]) % per
    if pad:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (pad,), codes.dtype)], axis=-1)
    groups = codes.reshape(codes.shape[:-1] + (-1, per)).astype(np.uint8)
    out = np.zeros(groups.shape[:-1], np.uint8)
    for j in range(per):
        out |= groups[..., j] << (j * bits)
    return out


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_codes: the first `count` codes."""
    if bits == 8:
        return packed[..., :count]
    per, mask = 8 // bits, (1 << bits) - 1
    out = np.stack([(packed >> (j * bits)) & mask for j in range(per)], axis=-1)
    return out.reshape(packed.shape[:-1] + (-1,))[..., :count]


def matmulnbits_tensors(qw: QuantizedWeight) -> dict[str, np.ndarray]:
    """B: uint8 [N, n_blocks, blob]; scales: float32 [N * n_blocks]; zero_points: uint8 [N * ceil(n_blocks
    * bits / 8)], packed along each row's blocks like the codes."""
    n, nb, bs = qw.q.shape
    out = {"B": np.ascontiguousarray(pack_codes(qw.q, qw.bits).reshape(n, nb, bs * qw.bits // 8)),
           "scales": np.ascontiguousarray(qw.scales.reshape(-1))}
    if qw.zero_points is not None:
        out["zero_points"] = np.ascontiguousarray(pack_codes(qw.zero_points, qw.bits).reshape(-1))
    return out


def packed_by_rows(read_rows, n_rows: int, bits: int, block: int, symmetric: bool, search: bool,
                   chunk: int = 8192) -> dict[str, np.ndarray]:
    """matmulnbits_tensors of an [n_rows, k] weight quantized `chunk` rows at a time (read_rows(start,
    stop) gives them), so the float weight is never whole in memory; identical to quantizing it whole
    (rows are quantized independently)."""
    from pressa.quant.rtn import quantize_rtn

    parts = [matmulnbits_tensors(quantize_rtn(read_rows(r, min(n_rows, r + chunk)), bits, block, symmetric, search))
             for r in range(0, n_rows, chunk)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def unpack_matmulnbits(b: np.ndarray, bits: int, block_size: int) -> np.ndarray:
    """Inverse of the B layout: codes [N, n_blocks, block_size]."""
    return unpack_codes(b, bits, block_size)
