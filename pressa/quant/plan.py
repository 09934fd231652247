"""The quantization plan as data: for one decoder layer, what the emitter writes for each linear
weight (the weight, scaled where AWQ scales it; its bits per weight), the divisors folded into the
norms before them, the input scales applied by a Mul, and the divisor of the up projection's bias.
`plan_layer` is a pure function of the layer's weights and calibration statistics; the builder
(pressa.capture.decoder) only emits what the plan says."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

LINEARS = ("qkv", "o", "gate_up", "down")
Loader = Callable[[], np.ndarray]


@dataclass
class QuantSettings:
    algorithm: str = "rtn"            # rtn | gptq | awq | awq+gptq
    block_size: int = 32
    symmetric: bool = False
    groups: dict[str, int] = field(default_factory=dict)     # key -> its own group size (mixed precision)


@dataclass
class LayerPlan:
    """`weights`: key -> the [N, K] weight to write, or a loader of the unscaled one (read when it is
    emitted, so that a plan without scales holds no weights); `bits`: key -> bits (None: float)."""
    weights: dict[str, np.ndarray | Loader]
    bits: dict[str, int | None]
    norm_divisors: dict[str, np.ndarray] = field(default_factory=dict)   # norm role -> divisor
    input_scales: dict[str, np.ndarray] = field(default_factory=dict)    # key -> s (x / s before it)
    up_bias_divisor: np.ndarray | float = 1.0
    scales: dict[str, np.ndarray] = field(default_factory=dict)          # key -> AWQ's s for its weight

    def weight(self, key: str) -> np.ndarray:
        w = self.weights.pop(key)
        return w() if callable(w) else w


def plan_layer(layer: int, load: dict[str, Loader], bits: dict[str, int | None], calib: dict,
               settings: QuantSettings, intermediate_size: int) -> LayerPlan:
    """What to write for layer `layer`'s four linear weights (keys `qkv`, `o`, `gate_up`, `down`,
    loaded with `load`). With AWQ the scales are searched on the calibration statistics (`calib`,
    keyed "<layer>.<key>") and folded: into the norms before qkv (`input`) and gate_up (`mlp`), into
    the up rows before down (and the up bias), and a Mul before o."""
    if not settings.algorithm.startswith("awq"):
        return LayerPlan(dict(load), dict(bits))
    from pressa.quant.awq import search_scales

    def scales(key: str, w: np.ndarray) -> np.ndarray | None:
        st = calib.get(f"{layer}.{key}")
        if st is None or bits[key] is None:
            return None
        s = getattr(st, "awq_scale", None)            # searched before, by a layer-by-layer calibration
        if s is None:
            s = search_scales(w, st.absmean, st.sample(), bits[key], settings.groups.get(key, settings.block_size),
                              settings.symmetric)[0]
        plan.scales[key] = s
        return s

    plan = LayerPlan({}, dict(bits))
    w_gu, w_down = load["gate_up"](), load["down"]()
    s = scales("down", w_down)
    if s is not None:                      # down's input is act(gate) * up: scale the up rows
        w_gu[intermediate_size:] /= s[:, None]
        w_down = w_down * s[None, :]
        plan.up_bias_divisor = s
    plan.weights["down"] = w_down
    s = scales("gate_up", w_gu)
    plan.weights["gate_up"] = w_gu * s[None, :] if s is not None else w_gu
    if s is not None:
        plan.norm_divisors["mlp"] = s
    w_qkv = load["qkv"]()
    s = scales("qkv", w_qkv)
    plan.weights["qkv"] = w_qkv * s[None, :] if s is not None else w_qkv
    if s is not None:
        plan.norm_divisors["input"] = s
    w_o = load["o"]()
    s = scales("o", w_o)
    plan.weights["o"] = w_o * s[None, :] if s is not None else w_o
    if s is not None:
        plan.input_scales["o"] = s
    return plan
