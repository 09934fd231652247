"""GPTQ-style second-order quantization: columns are quantized one at a time and the error of each
is spread over the not-yet-quantized columns through the inverse Hessian H = X^T X of the layer's
calibration inputs (Frantar et al., 2022). Group scales are fixed when a group's first column is
reached, from the weights as updated so far. Output uses the same layout as RTN.

The dense linear algebra is written as blocks of matrix products (BLAS-3), which run at the matrix
multiply's rate: LAPACK's own Cholesky reaches a tenth of it on this kind of machine (2 cores: 2.5 s
against 0.3 s for a 4,864-wide Hessian)."""

from __future__ import annotations

import math

import numpy as np

from pressa.quant.rtn import QuantizedWeight, group_params

BASE = 512          # below this width the blocked algorithms call LAPACK directly
INNER = 8           # columns whose errors reach each other one by one; then one product per INNER columns


def _inverse_hessian_factor(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor U of H^-1 (dampened; H^-1 = U^T U), as GPTQ uses it: H = R R^T with R
    upper gives H^-1 = R^-T R^-1, so U = R^-1. One Cholesky and one triangular inverse, in float32 as
    GPTQ computes them, with at most three K x K arrays alive (K = 8,960 for a 1.5B model's down_proj:
    0.3 GB each)."""
    h = np.asarray(h, np.float32)
    diag = np.diag_indices(len(h))
    held = np.where(np.diag(h) == 0, 1.0, np.diag(h)).astype(np.float32)       # dead inputs
    step = damp * float(np.mean(held, dtype=np.float64))
    for tries in range(1, 7):
        r = h.copy()
        r[diag] = held + np.float32(step * tries)
        try:
            return _upper_factor(r)
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("Hessian is not positive definite even after damping")


def _upper_factor(a: np.ndarray) -> np.ndarray:
    """R^-1 for a = R R^T with R upper (R written over a, zeros below). By blocks, [[A, B], [B^T, C]]:
    R22 = chol(C), R12 = B R22^-T, R11 = chol(A - R12 R12^T), and R^-1 = [[R11^-1, -R11^-1 R12 R22^-1],
    [0, R22^-1]]. A small block is LAPACK's lower Cholesky of the block with both axes reversed."""
    n = len(a)
    if n <= BASE:
        a[:] = np.linalg.cholesky(a[::-1, ::-1])[::-1, ::-1]
        return np.triu(np.linalg.inv(a))
    m = n // 2
    c_inv = _upper_factor(a[m:, m:])
    a[:m, m:] = a[:m, m:] @ c_inv.T
    a[:m, :m] -= a[:m, m:] @ a[:m, m:].T
    a[m:, :m] = 0.0
    a_inv = _upper_factor(a[:m, :m])
    out = np.empty_like(a)
    out[:m, :m], out[m:, m:], out[m:, :m] = a_inv, c_inv, 0.0
    out[:m, m:] = -(a_inv @ a[:m, m:]) @ c_inv
    return out


def quantize_gptq(w: np.ndarray, h: np.ndarray, bits: int = 4, block_size: int = 32, symmetric: bool = False,
                  damp: float = 0.01, lazy: int = 128, search: bool = False, act_order: bool = False,
                  static: tuple[np.ndarray, np.ndarray] | None = None) -> QuantizedWeight:
    """Columns left to right, `lazy` at a time, and within a batch INNER at a time: a column's error
    updates the later columns of its INNER at once, the rest of the batch gets those INNER errors in one
    product, and the columns after the batch get the batch's errors in one product (the same sums as
    updating every later column at once, in fewer passes over memory). Works on W^T so that a column is
    a contiguous row.

    `act_order`: columns in order of decreasing H diagonal (the inputs that carry most energy first,
    while the most columns are left to absorb their error), with each group's scale and zero point
    fixed beforehand from the weights as they are ("static groups"), so the stored layout stays
    MatMulNBits' contiguous groups; `static`: those scales and zero points ([N, n_blocks] each, e.g.
    refined by scale estimation) instead of the plain ones."""
    n, k = w.shape
    pad = (-k) % block_size
    kp = k + pad
    h = np.pad(h, ((0, pad), (0, pad))) if pad else h
    dead = np.diag(h) == 0
    wt = np.zeros((kp, n), np.float32)
    wt[:k] = np.asarray(w, np.float32).T
    wt[dead] = 0.0
    nb = kp // block_size
    scales = np.zeros((nb, n), np.float32)
    zps = np.zeros((nb, n), np.float32)
    order = np.arange(kp)
    if act_order:
        s, z = static or group_params(wt.T.reshape(n, nb, block_size), bits, symmetric, search)
        scales[:], zps[:] = s.T, z.T
        order = np.argsort(-np.diag(h), kind="stable")
        h, wt = h[np.ix_(order, order)], wt[order]
    u = _inverse_hessian_factor(h, damp)
    codes = np.zeros((kp, n), np.uint8)
    lazy = max(block_size, lazy // block_size * block_size)
    inner = math.gcd(INNER, block_size)          # a group's first column starts a sub-block
    top = (1 << bits) - 1
    inverse = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales != 0)
    for i1 in range(0, kp, lazy):
        i2 = min(i1 + lazy, kp)
        batch, u1 = wt[i1:i2], u[i1:i2, i1:i2]
        err = np.empty_like(batch)
        for j1 in range(0, i2 - i1, inner):
            j2 = min(j1 + inner, i2 - i1)
            for j in range(j1, j2):
                col = int(order[i1 + j])
                g = col // block_size
                if not act_order and col % block_size == 0:
                    s, z = group_params(batch[j:j + block_size].T[:, None, :], bits, symmetric, search)
                    scales[g], zps[g] = s[:, 0], z[:, 0]
                    inverse[g] = np.divide(1.0, scales[g], out=np.zeros(n, np.float32), where=scales[g] != 0)
                q = np.clip(np.rint(batch[j] * inverse[g]) + zps[g], 0, top)      # rtn.encode, one column
                codes[col] = q
                e = (batch[j] - (q - zps[g]) * scales[g]) / u1[j, j]
                batch[j + 1:j2] -= u1[j, j + 1:j2, None] * e[None, :]
                err[j] = e
            batch[j2:] -= u1[j1:j2, j2:].T @ err[j1:j2]
        wt[i2:] -= u[i1:i2, i2:].T @ err
    return QuantizedWeight(codes.T.reshape(n, nb, block_size), np.ascontiguousarray(scales.T),
                           None if symmetric else zps.T.astype(np.uint8), bits, block_size, k)
