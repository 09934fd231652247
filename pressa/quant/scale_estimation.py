"""Scale estimation: each group's scale refined against the calibration activations (as NNCF's
`scale_estimation` does), after round-to-nearest (or AWQ's scaled RTN) has chosen the codes.

For one row and one group with codes c = q - z and the group's block H_gg of H = X^T X, the scale that
minimises the group's output error (w - s c)^T H_gg (w - s c) for those codes is
s = c^T H_gg w / c^T H_gg c. The codes are then re-rounded with that scale and the two steps repeat.
A row keeps a new set of scales only where its whole output error e^T H e (all groups, cross terms
included) went down, so the layer's calibration error never grows."""

from __future__ import annotations

import numpy as np

from pressa.quant.rtn import QuantizedWeight, _blocks, encode, fp16_round, zero_points

ITERATIONS = 4


def row_errors(w: np.ndarray, qw_dense: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Each row's output error on the calibration inputs: e^T H e with e = w - w_quantized ([N])."""
    e = np.asarray(w, np.float32) - qw_dense
    return np.einsum("nk,nk->n", e @ h, e, dtype=np.float64)


def _dense(q: np.ndarray, s: np.ndarray, z: np.ndarray, k: int) -> np.ndarray:
    return ((q.astype(np.float32) - z[..., None]) * s[..., None]).reshape(len(q), -1)[:, :k]


def estimate_scales(w: np.ndarray, h: np.ndarray, qw: QuantizedWeight, iterations: int = ITERATIONS
                    ) -> QuantizedWeight:
    """`qw` with its scales (and codes) refined on H; zero points unchanged."""
    w = np.asarray(w, np.float32)
    n, k = w.shape
    bs = qw.block_size
    blocks = _blocks(w, bs)
    kp = blocks.shape[1] * bs
    h = np.asarray(h, np.float32)
    if kp != k:
        h = np.pad(h, ((0, kp - k), (0, kp - k)))
    diag_blocks = np.stack([h[i:i + bs, i:i + bs] for i in range(0, kp, bs)])          # [nb, bs, bs]
    z = zero_points(qw)
    q, s = qw.q, qw.scales.astype(np.float32)
    best = row_errors(w, _dense(q, s, z, k), h[:k, :k])
    for _ in range(iterations):
        c = q.astype(np.float32) - z[..., None]
        hc = np.einsum("nbi,bij->nbj", c, diag_blocks)
        num, den = (hc * blocks).sum(-1), (hc * c).sum(-1)
        fit = np.divide(num, den, out=s.copy(), where=den > 1e-30)
        s_new = fp16_round(np.where(np.isfinite(fit), fit, s).astype(np.float32))
        q_new = encode(blocks, s_new, z, qw.bits)
        err = row_errors(w, _dense(q_new, s_new, z, k), h[:k, :k])
        better = err < best
        if not better.any():
            break
        q = np.where(better[:, None, None], q_new, q)
        s = np.where(better[:, None], s_new, s)
        best = np.where(better, err, best)
    return QuantizedWeight(q, s, qw.zero_points, qw.bits, bs, k)
