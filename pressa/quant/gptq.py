"""GPTQ-style second-order quantization: columns are quantized one at a time and the error of each
is spread over the not-yet-quantized columns through the inverse Hessian H = X^T X of the layer's
calibration inputs (Frantar et al., 2022). Group scales are fixed when a group's first column is
reached, from the weights as updated so far. Output uses the same layout as RTN."""

from __future__ import annotations

import numpy as np

from pressa.quant.rtn import QuantizedWeight, encode, group_params


def _inverse_hessian_factor(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor of H^-1 (dampened), as GPTQ uses it."""
    h = h.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h += np.eye(len(h)) * damp * np.mean(np.diag(h))
    for _ in range(6):
        try:
            hinv = np.linalg.inv(np.linalg.cholesky(h))    # L^-1, H^-1 = L^-T L^-1
            return np.linalg.cholesky(hinv.T @ hinv).T      # upper factor of H^-1
        except np.linalg.LinAlgError:
            h += np.eye(len(h)) * damp * np.mean(np.diag(h))
    raise np.linalg.LinAlgError("Hessian is not positive definite even after damping")


def quantize_gptq(w: np.ndarray, h: np.ndarray, bits: int = 4, block_size: int = 32, symmetric: bool = False,
                  damp: float = 0.01, lazy: int = 128, search: bool = False) -> QuantizedWeight:
    n, k = w.shape
    pad = (-k) % block_size
    w = np.pad(np.asarray(w, np.float64), ((0, 0), (0, pad)))
    h = np.pad(h, ((0, pad), (0, pad)))
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
