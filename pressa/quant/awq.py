"""AWQ-style activation-aware scaling: input channels that see large activations are scaled up
before quantization (and the input scaled down by the same factor, folded into the previous op),
so that their weights lose less precision. The per-channel scale is mean|x| ** alpha, with alpha
searched on a grid to minimize the layer's output error on calibration inputs (Lin et al., 2023)."""

from __future__ import annotations

import numpy as np

from pressa.quant.rtn import QuantizedWeight, dequantize, quantize_rtn


def output_error(x: np.ndarray, w: np.ndarray, wq: np.ndarray) -> float:
    d = x @ (wq - w).T
    return float(np.mean(d * d))


def search_scales(w: np.ndarray, x_absmean: np.ndarray, x_sample: np.ndarray, bits: int = 4,
                  block_size: int = 32, symmetric: bool = False, grid: int = 20) -> tuple[np.ndarray, float]:
    """Best per-input-channel scales s (W' = W * s, x' = x / s) and their output error."""
    best_s, best = np.ones(w.shape[1], np.float32), np.inf
    base = np.maximum(x_absmean.astype(np.float64), 1e-8)
    for alpha in np.linspace(0.0, 1.0, grid + 1):
        s = base ** alpha
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
        wq = dequantize(quantize_rtn(w * s[None, :], bits, block_size, symmetric)) / s[None, :]
        err = output_error(x_sample, w, wq)
        if err < best:
            best, best_s = err, s
    return best_s, best


def quantize_awq(w: np.ndarray, scales: np.ndarray, bits: int = 4, block_size: int = 32,
                 symmetric: bool = False, search: bool = False) -> QuantizedWeight:
    """RTN of the scaled weight; the caller divides the layer's input by `scales`."""
    return quantize_rtn(w * scales[None, :], bits, block_size, symmetric, search)
