"""Rotary embedding caches (cos, sin) of shape [positions, rotary_dim / 2] for GroupQueryAttention."""

from __future__ import annotations

import math

import numpy as np

from pressa.capture.config import Rope
from pressa.errors import UnsupportedArchitecture


def inv_freq(rope: Rope, rotary_dim: int, max_position: int) -> tuple[np.ndarray, float]:
    """Inverse frequencies and the attention factor that scales cos/sin, per rope type."""
    base = rope.theta ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    freq = 1.0 / base
    p = rope.params
    if rope.kind == "default":
        return freq, 1.0
    if rope.kind == "linear":
        return freq / float(p["factor"]), 1.0
    if rope.kind == "llama3":
        factor, low, high = float(p["factor"]), float(p["low_freq_factor"]), float(p["high_freq_factor"])
        old = float(p["original_max_position_embeddings"])
        wavelen = 2 * math.pi / freq
        smooth = (old / wavelen - low) / (high - low)
        scaled = np.where(wavelen > old / low, freq / factor, freq)
        mid = (wavelen <= old / low) & (wavelen >= old / high)
        return np.where(mid, (1 - smooth) * freq / factor + smooth * freq, scaled), 1.0
    if rope.kind == "longrope":
        old = float(p.get("original_max_position_embeddings") or max_position)
        # short factors: exact for prompts within the original context (the common deployment case)
        factors = np.asarray(p["short_factor"], np.float64)
        scale = max_position / old
        attn = float(p.get("attention_factor") or (
            math.sqrt(1 + math.log(scale) / math.log(old)) if scale > 1 else 1.0))
        return freq / factors, attn
    raise UnsupportedArchitecture(f"rope type {rope.kind!r} is not supported (default, linear, llama3, longrope)")


def rope_cache(rope: Rope, rotary_dim: int, positions: int, max_position: int) -> tuple[np.ndarray, np.ndarray]:
    freq, attn = inv_freq(rope, rotary_dim, max_position)
    # float32 products as transformers computes them, so parity holds at long positions
    angles = np.arange(positions, dtype=np.float32)[:, None] * freq.astype(np.float32)[None, :]
    return (np.cos(angles) * attn).astype(np.float32), (np.sin(angles) * attn).astype(np.float32)
