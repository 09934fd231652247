"""Round-to-nearest block quantization along the input axis, as MatMulNBits stores it.

A weight W has Hugging Face layout [N, K] (out, in). Blocks of `block_size` run along K.
Dequantized value: (q - zero_point) * scale, q in [0, 2**bits - 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class QuantizedWeight:
    q: np.ndarray            # uint8 [N, n_blocks, block_size], unpacked codes
    scales: np.ndarray       # float32 [N, n_blocks]
    zero_points: np.ndarray | None   # uint8 [N, n_blocks]; None = symmetric (implicit 2**(bits-1))
    bits: int
    block_size: int
    k: int                   # original K before padding

    @property
    def n(self) -> int:
        return self.q.shape[0]


def _blocks(w: np.ndarray, block_size: int) -> np.ndarray:
    n, k = w.shape
    pad = (-k) % block_size
    if pad:
        w = np.pad(w, ((0, 0), (0, pad)))
    return w.reshape(n, -1, block_size)


CHUNK_ELEMENTS = 1 << 22     # rows are quantized in chunks of ~4M values to bound temporary memory
_POOL: list = []


def _pool():
    if not _POOL:
        import os
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(max_workers=max(1, min(os.cpu_count() or 1, 8)),
                                        thread_name_prefix="pressa-quant"))
    return _POOL[0]


# range shrink factors tried by the MSE search (besides plain min/max); on SmolLM2's weights the
# winners are plain (63% of blocks), 0.9 (27%) and 0.95 (10%); smaller factors almost never win
SEARCH = (0.95, 0.9)


def quantize_rtn(w: np.ndarray, bits: int = 4, block_size: int = 32, symmetric: bool = False,
                 search: bool = False) -> QuantizedWeight:
    """Round-to-nearest per block. Symmetric uses the full signed range [-2**(b-1), 2**(b-1)-1]
    by mapping the block's largest-magnitude value to -2**(b-1) (so no code is wasted).
    `search`: per block, the scale / zero point with the least squared error among shrunk ranges
    and zero points anchored at the block's min, max or centre (plain min/max is one candidate)."""
    w = np.asarray(w, dtype=np.float32)
    workers = _pool()._max_workers
    rows = max(1, min(CHUNK_ELEMENTS // max(1, w.shape[1]), -(-w.shape[0] // workers)))
    if w.shape[0] <= rows or w.size < 1 << 16:
        return _quantize_rows(w, bits, block_size, symmetric, search)
    # numpy's elementwise work releases the GIL: row chunks quantize in parallel, results identical
    return stack_rows(list(_pool().map(lambda i: _quantize_rows(w[i:i + rows], bits, block_size, symmetric,
                                                                search), range(0, w.shape[0], rows))))


def stack_rows(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """One weight from the quantized row chunks of it, in order."""
    first = parts[0]
    zps = None if first.zero_points is None else np.concatenate([p.zero_points for p in parts])
    return QuantizedWeight(np.concatenate([p.q for p in parts]), np.concatenate([p.scales for p in parts]), zps,
                           first.bits, first.block_size, first.k)


FP16_NORMAL = (2.0 ** -14, 65504.0)


def fp16_round(scales: np.ndarray) -> np.ndarray:
    """Scales rounded to the nearest float16 where float16 holds them at full precision (its normal
    range); others unchanged. Codes are chosen against the rounded scale, so an artifact can store
    its scales as float16 with no further loss (see `fp16_exact`); GGUF's own scales are float16."""
    s = np.asarray(scales, np.float32)
    a = np.abs(s)
    normal = (a >= FP16_NORMAL[0]) & (a <= FP16_NORMAL[1])
    return np.where(normal, s.astype(np.float16).astype(np.float32), s)


def fp16_exact(scales: np.ndarray) -> bool:
    """True when every scale survives a float16 round trip unchanged."""
    s = np.asarray(scales, np.float32)
    return bool(np.array_equal(s.astype(np.float16).astype(np.float32), s))


def group_params(blocks: np.ndarray, bits: int, symmetric: bool, search: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point of each block (last axis). Symmetric maps the block's largest-magnitude
    value to -2**(b-1), using the full signed range; its zero point is the implicit 2**(b-1).
    Scales are float16-rounded (`fp16_round`) before the zero points are chosen."""
    raw = _raw_scales(blocks, bits, symmetric)
    if search:
        return _searched_params(blocks, raw, bits, symmetric)
    return _with_zero_points(blocks, fp16_round(raw), bits, symmetric)


def _raw_scales(blocks: np.ndarray, bits: int, symmetric: bool) -> np.ndarray:
    """Plain min/max scales before rounding (symmetric: the largest-magnitude value over -2**(b-1))."""
    if symmetric:
        return (largest_magnitude(blocks) / -(1 << (bits - 1))).astype(np.float32)
    mn = np.minimum(blocks.min(axis=-1), 0.0)
    mx = np.maximum(blocks.max(axis=-1), 0.0)
    return ((mx - mn) / ((1 << bits) - 1)).astype(np.float32)


def largest_magnitude(blocks: np.ndarray) -> np.ndarray:
    """Each block's value of largest magnitude, the first of them where +a and -a tie (as argmax of |v|
    picks it), from the blocks' max and min: reductions that run across rows when GPTQ hands its blocks
    over as a transposed view (an argmax over that strided axis ran 40x slower)."""
    mx, mn = blocks.max(axis=-1), blocks.min(axis=-1)
    out = np.where(mx > -mn, mx, mn)
    tie = mx == -mn                           # +a and -a both present (or an all-zero block): the first
    if tie.any():
        tied = blocks[tie]
        out[tie] = np.take_along_axis(tied, np.abs(tied).argmax(axis=-1)[:, None], axis=-1)[:, 0]
    return out


def _with_zero_points(blocks: np.ndarray, scales: np.ndarray, bits: int, symmetric: bool
                      ) -> tuple[np.ndarray, np.ndarray]:
    if symmetric:
        return scales, np.full(scales.shape, 1 << (bits - 1), np.float32)
    inv = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales != 0)
    mn = np.minimum(blocks.min(axis=-1), 0.0)
    return scales, np.clip(np.rint(-mn * inv), 0, (1 << bits) - 1).astype(np.float32)


SEARCH_CHUNK = 1 << 18          # values searched at a time: every candidate's pass stays in the CPU's cache


def _searched_params(blocks: np.ndarray, raw: np.ndarray, bits: int, symmetric: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The search of `_search_rows` over rows of blocks a cache-sized chunk at a time (each block's
    choice is its own, so chunking changes nothing but the memory traffic)."""
    rows = max(1, SEARCH_CHUNK // max(1, blocks[0].size)) if blocks.ndim > 1 else len(blocks)
    if len(blocks) <= rows:
        return _search_rows(blocks, raw, bits, symmetric)
    best_s, best_z = np.empty_like(raw), np.empty_like(raw)
    for start in range(0, len(blocks), rows):
        part = slice(start, start + rows)
        best_s[part], best_z[part] = _search_rows(blocks[part], raw[part], bits, symmetric)
    return best_s, best_z


def _search_rows(blocks: np.ndarray, raw: np.ndarray, bits: int, symmetric: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    levels = (1 << bits) - 1
    half = 1 << (bits - 1)
    best_s, best_z = _with_zero_points(blocks, fp16_round(raw), bits, symmetric)
    best = _block_error(blocks, best_s, best_z, bits)   # plain min/max first: the search is never worse
    mn, mx = blocks.min(axis=-1), blocks.max(axis=-1)
    # symmetric also tries the extreme on +-(2**(b-1) - 1), the grid of llama.cpp's Q8_0/Q4_0
    for f in SEARCH + ((half / (half - 1),) if symmetric else ()):
        s = fp16_round(raw * f)
        inv = np.divide(1.0, s, out=np.zeros_like(s), where=s != 0)
        if symmetric:
            zs = [np.full(s.shape, half, np.float32)]
        else:
            zs = [np.clip(np.rint(z), 0, levels) for z in (-mn * inv, levels - mx * inv,
                                                              (levels - (mx + mn) * inv) / 2)]
        for z in zs:
            z = z.astype(np.float32)
            err = _block_error(blocks, s, z, bits)
            better = err < best
            best = np.where(better, err, best)
            best_s = np.where(better, s, best_s)
            best_z = np.where(better, z, best_z)
    return best_s, best_z


def _block_error(blocks: np.ndarray, s: np.ndarray, z: np.ndarray, bits: int) -> np.ndarray:
    """Squared error of each (float32) block encoded with (s, z): `encode`'s codes, computed in place."""
    inv = np.divide(1.0, s, out=np.zeros_like(s), where=s != 0)
    e = blocks * inv[..., None]
    np.rint(e, out=e)
    e += z[..., None]
    np.clip(e, 0, (1 << bits) - 1, out=e)
    e -= z[..., None]
    e *= s[..., None]
    e -= blocks
    np.square(e, out=e)
    return e.sum(axis=-1)


def encode(values: np.ndarray, scales: np.ndarray, zp: np.ndarray, bits: int) -> np.ndarray:
    """Codes of `values` [..., n] for per-row scales/zero points [...] (broadcast on the last axis)."""
    inv = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales != 0)
    return np.clip(np.rint(values * inv[..., None]) + zp[..., None], 0, (1 << bits) - 1).astype(np.uint8)


def _quantize_rows(w: np.ndarray, bits: int, block_size: int, symmetric: bool, search: bool = False
                   ) -> QuantizedWeight:
    blocks = _blocks(w, block_size)
    scales, zp = group_params(blocks, bits, symmetric, search)
    q = encode(blocks, scales, zp, bits)
    return QuantizedWeight(q, scales, None if symmetric else zp.astype(np.uint8), bits, block_size, w.shape[1])


def zero_points(qw: QuantizedWeight) -> np.ndarray:
    """float32 [N, n_blocks]: the stored zero points, or symmetric's implicit 2**(bits-1)."""
    if qw.zero_points is not None:
        return qw.zero_points.astype(np.float32)
    return np.full(qw.scales.shape, 1 << (qw.bits - 1), np.float32)


def dequantize(qw: QuantizedWeight) -> np.ndarray:
    """[N, K] float32 from a QuantizedWeight."""
    w = (qw.q.astype(np.float32) - zero_points(qw)[..., None]) * qw.scales[..., None]
    return w.reshape(qw.n, -1)[:, : qw.k]


def quant_error(w: np.ndarray, bits: int, block_size: int, symmetric: bool) -> float:
    """Mean squared reconstruction error of RTN, normalized by the weight's mean square."""
    qw = quantize_rtn(w, bits, block_size, symmetric)
    err = dequantize(qw) - w
    return float(np.mean(err * err) / max(float(np.mean(w * w)), 1e-30))
