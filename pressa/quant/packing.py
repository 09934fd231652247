"""Byte layouts of ONNX Runtime's MatMulNBits and GatherBlockQuantized for 4- and 8-bit codes."""

from __future__ import annotations

import numpy as np

from pressa.quant.rtn import QuantizedWeight


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Pairs of 4-bit codes along the last axis into bytes, the first code in the low nibble."""
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (1,), codes.dtype)], axis=-1)
    pairs = codes.reshape(codes.shape[:-1] + (-1, 2)).astype(np.uint8)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    out = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[:-1] + (-1,))
    return out[..., :count]


def matmulnbits_tensors(qw: QuantizedWeight) -> dict[str, np.ndarray]:
    """B: uint8 [N, n_blocks, blob]; scales: float32 [N * n_blocks]; zero_points: uint8, packed for 4 bits."""
    n, nb, bs = qw.q.shape
    b = pack_nibbles(qw.q) if qw.bits == 4 else qw.q
    out = {"B": np.ascontiguousarray(b.reshape(n, nb, bs * qw.bits // 8)),
           "scales": np.ascontiguousarray(qw.scales.reshape(-1))}
    if qw.zero_points is not None:
        zp = pack_nibbles(qw.zero_points) if qw.bits == 4 else qw.zero_points
        out["zero_points"] = np.ascontiguousarray(zp.reshape(-1))
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
    return unpack_nibbles(b, block_size) if bits == 4 else b
