"""GPTQ-style second-order quantization: columns are quantized one at a time and the error of each
is spread over the not-yet-quantized columns through the inverse Hessian H = X^T X of the layer's
calibration inputs (Frantar et al., 2022). Group scales are fixed when a group's first column is
reached, from the weights as updated so far. Output uses the same layout as RTN."""

from __future__ import annotations

import numpy as np

from pressa.quant.rtn import QuantizedWeight, encode, group_params


def _inverse_hessian_factor(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor U of H^-1 (dampened; H^-1 = U^T U), as GPTQ uses it: with J the reversal,
    J H J = M M^T gives H = R R^T for the upper R = J M J, so H^-1 = R^-T R^-1 and U = R^-1. One
    Cholesky and one triangular inverse (by blocks, in matrix products), in float32 as GPTQ computes it,
    with at most three K x K arrays alive (K = 8,960 for a 1.5B model's down_proj: 0.3 GB each)."""
    n = len(h)
    flipped = np.asarray(h, np.float32).ravel()[::-1].reshape(n, n).copy()     # J H J (both axes reversed)
    diag = np.diag_indices(n)
    flipped[diag] = np.where(flipped[diag] == 0, 1.0, flipped[diag])           # dead inputs
    step = damp * float(np.mean(flipped[diag], dtype=np.float64))
    for _ in range(6):
        flipped[diag] += step
        try:
            m = np.linalg.cholesky(flipped)
        except np.linalg.LinAlgError:
            continue
        del flipped
        r = m.ravel()[::-1].reshape(n, n).copy()
        del m
        return _upper_inverse(r)
    raise np.linalg.LinAlgError("Hessian is not positive definite even after damping")


def _upper_inverse(r: np.ndarray) -> np.ndarray:
    """The inverse of an upper-triangular matrix: [[A, B], [0, C]]^-1 = [[A^-1, -A^-1 B C^-1], [0, C^-1]]."""
    n = len(r)
    if n <= 256:
        return np.triu(np.linalg.inv(r))
    m = n // 2
    a, c = _upper_inverse(r[:m, :m]), _upper_inverse(r[m:, m:])
    out = np.empty_like(r)
    out[:m, :m], out[m:, m:], out[m:, :m] = a, c, 0.0
    out[:m, m:] = -(a @ r[:m, m:]) @ c
    return out


def quantize_gptq(w: np.ndarray, h: np.ndarray, bits: int = 4, block_size: int = 32, symmetric: bool = False,
                  damp: float = 0.01, lazy: int = 32, search: bool = False) -> QuantizedWeight:
    n, k = w.shape
    pad = (-k) % block_size
    w = np.pad(np.asarray(w, np.float64), ((0, 0), (0, pad)))
    h = np.pad(h, ((0, pad), (0, pad))) if pad else h
    kp = k + pad
    dead = np.diag(h) == 0
    w[:, dead] = 0.0
    u = _inverse_hessian_factor(h, damp)
    nb = kp // block_size
    scales = np.zeros((n, nb), np.float32)
    zps = np.zeros((n, nb), np.float32)
    codes = np.zeros((n, kp), np.uint8)
    lazy = max(block_size, lazy // block_size * block_size)
    for i1 in range(0, kp, lazy):
        i2 = min(i1 + lazy, kp)
        w1 = w[:, i1:i2].copy()
        err = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for j in range(i2 - i1):
            col = i1 + j
            if col % block_size == 0:
                g = col // block_size
                s, z = group_params(w1[:, j:j + block_size][:, None, :].astype(np.float32), bits, symmetric,
                                    search)
                scales[:, g], zps[:, g] = s[:, 0], z[:, 0]
            g = col // block_size
            q = encode(w1[:, j:j + 1].astype(np.float32), scales[:, g], zps[:, g], bits)[:, 0]
            codes[:, col] = q
            deq = (q.astype(np.float64) - zps[:, g]) * scales[:, g]
            e = (w1[:, j] - deq) / u1[j, j]
            w1[:, j:] -= np.outer(e, u1[j, j:])
            err[:, j] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return QuantizedWeight(codes.reshape(n, nb, block_size), scales, None if symmetric else zps.astype(np.uint8),
                           bits, block_size, k)
