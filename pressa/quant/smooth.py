"""SmoothQuant for static INT8: per-channel scales that move activation outliers into the weights.

A MatMul's input channel j is divided by s_j and the weight's row j multiplied by it, which leaves the
float result unchanged: X W = (X / s) (s W). With s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)
(Xiao et al., SmoothQuant, 2022) the channels that carry outliers (after a GELU, or LayerNorm's
large-gamma channels) shrink to the others' range, so one per-tensor activation scale resolves them
all, while the weights, quantized per output channel, absorb the factor.

MatMuls reading the same tensor share one s (over all their weights). The division folds into a
LayerNormalization that feeds only them (its scale and bias divided by s: free); otherwise one Mul by
1/s is inserted before them (an elementwise op, far cheaper than the MatMul it makes quantizable).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def groups(model, op_types: Iterable[str], exclude: set[str]) -> dict[str, list]:
    """Input tensor -> the MatMuls with a constant 2-D float weight that read it."""
    from pressa.graph.view import GraphView

    v = GraphView(model)
    out: dict[str, list] = {}
    for n in model.graph.node:
        if n.op_type != "MatMul" or "MatMul" not in op_types or n.name in exclude:
            continue
        w = v.inits.get(n.input[1])
        if w is not None and len(w.dims) == 2 and w.data_type == 1 and n.input[0] not in v.inits:
            out.setdefault(n.input[0], []).append(n)
    return out


def activation_absmax(model, names: list[str], batches: Iterable[dict]) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of the named tensors over the calibration batches (fp32 graph)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out: dict[str, np.ndarray] = {}
    for feeds in batches:
        for name, value in zip(names, s.run(names, feeds)):
            m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            out[name] = m if name not in out else np.maximum(out[name], m)
    return out


def smooth(model, batches: Iterable[dict], alpha: float, op_types=("MatMul",), exclude: set[str] = frozenset()) -> int:
    """Apply SmoothQuant to `model` in place; returns the number of inputs smoothed."""
    from onnx import helper, numpy_helper

    from pressa.graph.view import GraphView

    found = groups(model, op_types, set(exclude))
    if not found or alpha <= 0:
        return 0
    xmax = activation_absmax(model, list(found), batches)
    v = GraphView(model)
    for i, (name, nodes) in enumerate(found.items()):
        weights = [numpy_helper.to_array(v.inits[n.input[1]]) for n in nodes]
        wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        s = np.power(np.maximum(xmax[name], 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1 - alpha)
        s = np.clip(s, 1e-2, 1e2).astype(np.float32)
        for n, w in zip(nodes, weights):
            scaled = numpy_helper.from_array((w * s[:, None]).astype(np.float32), f"{n.input[1]}/smoothed")
            model.graph.initializer.append(scaled)
            n.input[1] = scaled.name
        if not _fold_into_layernorm(v, model, name, nodes, s):
            inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{name}/smooth_scale")
            model.graph.initializer.append(inv)
            out = f"{name}/smoothed"
            model.graph.node.append(helper.make_node("Mul", [name, inv.name], [out], name=f"smooth_{i}"))
            for n in nodes:
                n.input[0] = out
    from pressa.graph.view import topological_sort

    topological_sort(model.graph)
    GraphView(model).prune()
    return len(found)


def _fold_into_layernorm(v, model, name: str, nodes: list, s: np.ndarray) -> bool:
    """Divide a LayerNormalization's scale and bias by s when its output feeds only `nodes`."""
    from onnx import numpy_helper

    ln = v.producer.get(name)
    if ln is None or ln.op_type != "LayerNormalization" or name in v.outputs or ln.output[0] != name:
        return False
    if {id(c) for c in v.consumers.get(name, [])} != {id(n) for n in nodes}:
        return False
    params = ln.input[1:3]
    if not all(p in v.inits and len(v.consumers[p]) == 1 for p in params):
        return False
    for p in params:
        t = v.inits[p]
        t.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(t) / s).astype(np.float32), p))
    return True


def signed_activations_to_int8(model, one_sided: float = 0.5) -> int:
    """Activations quantized as uint8 with a zero point, rewritten where the tensor is two-sided (its
    calibrated min below -one_sided x its max) to int8 with zero point 0 and the same reach: the form
    OpenVINO's CPU plugin runs in its plain INT8 kernels, with no zero-point arithmetic. One-sided
    tensors (after GELU, Softmax) keep uint8 and their zero point, which holds their mean (without it
    the small negative GELU outputs would be lost, a bias the following MatMul sums up). Returns the
    tensors rewritten."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    seen: set[tuple[str, str]] = set()
    rewritten, signed = 0, set()
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits or len(n.input) < 3 or n.input[2] not in inits:
            continue
        key = (n.input[1], n.input[2])
        scale, zero = (numpy_helper.to_array(inits[k]) for k in key)
        if key in signed:
            signed.add(n.output[0])
        if key in seen or zero.dtype != np.uint8 or scale.size != 1:
            continue
        seen.add(key)
        lo, hi = float(scale) * (0 - int(zero)), float(scale) * (255 - int(zero))
        if lo >= -one_sided * hi:
            continue
        inits[key[0]].CopyFrom(numpy_helper.from_array(np.array(max(-lo, hi) / 127, np.float32), key[0]))
        inits[key[1]].CopyFrom(numpy_helper.from_array(np.array(0, np.int8), key[1]))
        signed.update((key, n.output[0]))
        rewritten += 1
    for vi in model.graph.value_info:                 # quantized tensors typed uint8 by the quantizer
        if vi.name in signed:
            vi.type.tensor_type.elem_type = TensorProto.INT8
    return rewritten
