"""The quantization plan (pressa.quant.plan) as a pure function: what it folds keeps the layer's
float function exactly (checked against the unscaled matrix products), and without AWQ it holds no
weights until the emitter asks."""

from __future__ import annotations

import numpy as np

from pressa.capture.calibrate import InputStats
from pressa.quant.plan import LINEARS, QuantSettings, plan_layer


def _stats(x: np.ndarray) -> InputStats:
    return InputStats(h=x.T @ x, abs_sum=np.abs(x).astype(np.float64).sum(0), count=len(x), rows=[x])


def test_awq_plan_keeps_the_float_layer_and_rtn_plan_reads_lazily():
    rng = np.random.default_rng(0)
    hidden, inter, qkv_out = 64, 96, 64 + 2 * 32
    w = {"qkv": rng.normal(size=(qkv_out, hidden)), "o": rng.normal(size=(hidden, hidden)),
         "gate_up": rng.normal(size=(2 * inter, hidden)), "down": rng.normal(size=(hidden, inter))}
    w = {k: v.astype(np.float32) for k, v in w.items()}
    # activations with a few loud channels, as AWQ expects
    x = (rng.normal(size=(128, hidden)) * np.where(np.arange(hidden) % 9 == 0, 20, 1)).astype(np.float32)
    xa = (rng.normal(size=(128, hidden)) * np.where(np.arange(hidden) % 7 == 0, 15, 1)).astype(np.float32)
    xd = (rng.normal(size=(128, inter)) * np.where(np.arange(inter) % 5 == 0, 10, 1)).astype(np.float32)
    calib = {"3.qkv": _stats(x), "3.gate_up": _stats(x), "3.o": _stats(xa), "3.down": _stats(xd)}
    load = {k: (lambda k=k: w[k].copy()) for k in LINEARS}
    plan = plan_layer(3, load, dict.fromkeys(LINEARS, 4), calib, QuantSettings("awq", 32), inter)
    assert set(plan.norm_divisors) == {"input", "mlp"} and set(plan.input_scales) == {"o"}
    gu = plan.weight("gate_up")
    # a norm's output divided by s, then the scaled weight: the same product
    np.testing.assert_allclose((x / plan.norm_divisors["input"]) @ plan.weight("qkv").T, x @ w["qkv"].T,
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose((x / plan.norm_divisors["mlp"]) @ gu.T[:, :inter], x @ w["gate_up"].T[:, :inter],
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose((xa / plan.input_scales["o"]) @ plan.weight("o").T, xa @ w["o"].T, rtol=1e-4, atol=1e-3)
    # the up rows carry down's 1/s: act(gate) * up * (1/s) @ (W_down * s).T == act(gate) * up @ W_down.T
    up_new = (x / plan.norm_divisors["mlp"]) @ gu[inter:].T
    up_old = x @ w["gate_up"][inter:].T
    np.testing.assert_allclose(up_new @ plan.weight("down").T, up_old @ w["down"].T, rtol=1e-3, atol=1e-2)
    assert np.allclose(plan.up_bias_divisor * (up_new / up_old).mean(0), 1, rtol=1e-3)
    assert not np.allclose(plan.norm_divisors["input"], 1)
    # RTN: the plan folds nothing and reads each weight only when the emitter takes it
    reads = []
    lazy = {k: (lambda k=k: reads.append(k) or w[k]) for k in LINEARS}
    rtn = plan_layer(0, lazy, {"qkv": 4, "o": 8, "gate_up": 4, "down": None}, {}, QuantSettings(), inter)
    assert reads == [] and rtn.bits["o"] == 8 and rtn.bits["down"] is None and not rtn.norm_divisors
    assert rtn.weight("o") is w["o"] and reads == ["o"]
