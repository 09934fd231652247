"""Self-attention fused into one packed QKV MatMul and ONNX Runtime's MultiHeadAttention.

Exporters spell attention differently (eager or SDPA, a transpose of K through 3-D reshapes, the
scale on the scores or split over Q and K, a NaN guard after Softmax), so the match is by what the
subgraph computes, anchored on each Softmax:

    scores = (x Wq + bq) (x Wk + bk)^T * scale + mask(attention_mask)
    out    = softmax(scores) (x Wv + bv), heads merged back to [B, S, D]

Between a projection and the score MatMul only layout ops (Reshape, Transpose, Squeeze, Unsqueeze)
and scalar Mul/Div are allowed; the mask term must depend on the `attention_mask` input alone (a
padding mask). The caller checks the fused graph against the original numerically and keeps the
original when they differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pressa.graph.view import GraphView

LAYOUT = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
MS = "com.microsoft"


@dataclass
class Projection:
    x: str                  # input [B, S, D]
    weight: np.ndarray      # [D, Dout]
    bias: np.ndarray | None
    reshapes: list          # Reshape nodes met on the way to the score MatMul (head layout)


@dataclass
class Match:
    q: Projection
    k: Projection
    v: Projection
    scale: float
    mask_input: str | None
    context: str            # the merged-heads output [B, S, D] that the fused op replaces
    label: str


def _scaled(v: GraphView, node) -> tuple[str, float] | None:
    """(other input, factor) for Mul/Div by a scalar constant."""
    a, b = (v.scalar(i) for i in node.input)
    if node.op_type == "Mul" and b is not None:
        return node.input[0], b
    if node.op_type == "Mul" and a is not None:
        return node.input[1], a
    if node.op_type == "Div" and b is not None and b != 0:
        return node.input[0], 1.0 / b
    return None


def _projection(v: GraphView, name: str) -> tuple[Projection | None, float]:
    factor, reshapes = 1.0, []
    for _ in range(32):
        n = v.producer.get(name)
        if n is None:
            return None, factor
        if n.op_type in LAYOUT:
            if n.op_type == "Reshape":
                reshapes.append(n)
            name = n.input[0]
            continue
        if n.op_type in ("Mul", "Div"):
            s = _scaled(v, n)
            if s is None:
                return None, factor
            name, f = s
            factor *= f
            continue
        if n.op_type == "Add":
            for a, b in ((0, 1), (1, 0)):
                bias, mm = v.const(n.input[b]), v.producer.get(n.input[a])
                if bias is not None and bias.ndim == 1 and mm is not None and mm.op_type == "MatMul":
                    w = v.const(mm.input[1])
                    if w is not None and w.ndim == 2 and w.shape[1] == bias.shape[0]:
                        return Projection(mm.input[0], w, bias, reshapes), factor
            return None, factor
        if n.op_type == "MatMul":
            w = v.const(n.input[1])
            if w is not None and w.ndim == 2:
                return Projection(n.input[0], w, None, reshapes), factor
        return None, factor
    return None, factor


def _score_matmul(v: GraphView, name: str):
    """(QK^T MatMul, scale factor, mask tensor or None) behind a Softmax input."""
    factor, mask = 1.0, None
    for _ in range(8):
        n = v.producer.get(name)
        if n is None:
            return None
        if n.op_type == "MatMul" and v.const(n.input[0]) is None and v.const(n.input[1]) is None:
            return n, factor, mask
        if n.op_type in ("Mul", "Div"):
            s = _scaled(v, n)
            if s is None:
                return None
            name, f = s
            factor *= f
            continue
        if n.op_type == "Add" and mask is None:
            sides = [(a, b) for a, b in ((0, 1), (1, 0)) if _score_matmul(v, n.input[a]) is not None]
            if len(sides) != 1:
                return None
            a, b = sides[0]
            name, mask = n.input[a], n.input[b]
            continue
        return None
    return None


def _context(v: GraphView, softmax):
    """(probs x V MatMul, merged-heads output) after a Softmax, through an optional NaN guard."""
    probs = softmax.output[0]
    users = v.consumers.get(probs, [])
    mm = [c for c in users if c.op_type == "MatMul" and c.input[0] == probs]
    if not mm:
        guards = [c for c in users if c.op_type == "Where" and c.input[2] == probs]
        if len(guards) == 1:
            g = guards[0].output[0]
            mm = [c for c in v.consumers.get(g, []) if c.op_type == "MatMul" and c.input[0] == g]
    if len(mm) != 1:
        return None
    t = v.single_consumer(mm[0].output[0], "Transpose")
    if t is None or list(v.attr(t, "perm", [])) != [0, 2, 1, 3]:
        return None
    r = v.single_consumer(t.output[0], "Reshape")
    return (mm[0], r.output[0]) if r is not None else None


def _head_size(v: GraphView, p: Projection) -> int | None:
    """The last dimension of the first head-splitting Reshape (constant, or a Concat of pieces)."""
    for r in p.reshapes:
        shape = v.const(r.input[1])
        if shape is None:
            cat = v.producer.get(r.input[1])
            if cat is None or cat.op_type != "Concat":
                continue
            shape = v.const(cat.input[-1])
        if shape is not None and shape.size >= 1 and int(shape.reshape(-1)[-1]) > 0 and len(r.input) > 1:
            h = int(shape.reshape(-1)[-1])
            if p.weight.shape[1] % h == 0 and h < p.weight.shape[1]:
                return h
    return None


def find_attention(v: GraphView) -> list[Match]:
    found = []
    for sm in [n for n in v.g.node if n.op_type == "Softmax"]:
        if v.attr(sm, "axis", -1) not in (-1, 3):
            continue
        sc = _score_matmul(v, sm.input[0])
        ctx = _context(v, sm)
        if sc is None or ctx is None:
            continue
        mm1, factor, mask = sc
        q, fq = _projection(v, mm1.input[0])
        k, fk = _projection(v, mm1.input[1])
        val, fv = _projection(v, ctx[0].input[1])
        if q is None or k is None or val is None or not (q.x == k.x == val.x) or fv != 1.0:
            continue
        if not (q.weight.shape == k.weight.shape == val.weight.shape):
            continue
        mask_input = None
        if mask is not None:
            deps = v.input_ancestors(mask)
            if len(deps) != 1:
                continue
            mask_input = next(iter(deps))
        found.append(Match(q, k, val, factor * fq * fk, mask_input, ctx[1], sm.name or sm.output[0]))
    return found


def fuse_attention(model, num_heads: int | None = None) -> int:
    """Rewrite every matched attention in place; returns how many. `num_heads` is used when the
    head size cannot be read from the graph's reshapes."""
    from onnx import TensorProto, helper, numpy_helper

    v = GraphView(model)
    matches = find_attention(v)
    if not matches:
        return 0
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    casts: dict[str, str] = {}
    done = 0
    for i, m in enumerate(matches):
        d = m.q.weight.shape[1]
        h = _head_size(v, m.q)
        heads = d // h if h else num_heads
        if not heads or d % heads:
            continue
        p = f"/pressa/attention_{i}"
        w = np.concatenate([m.q.weight, m.k.weight, m.v.weight], axis=1).astype(m.q.weight.dtype)
        zeros = np.zeros(d, m.q.weight.dtype)
        b = np.concatenate([x.bias if x.bias is not None else zeros for x in (m.q, m.k, m.v)])
        model.graph.initializer.extend([numpy_helper.from_array(w, f"{p}/qkv.weight"),
                                        numpy_helper.from_array(b.astype(w.dtype), f"{p}/qkv.bias")])
        nodes = [helper.make_node("MatMul", [m.q.x, f"{p}/qkv.weight"], [f"{p}/qkv"], name=f"{p}/MatMul")]
        outs = [f"{p}/q", f"{p}/k", f"{p}/v"]
        if opset >= 13:
            model.graph.initializer.append(numpy_helper.from_array(np.array([d, d, d], np.int64), f"{p}/sizes"))
            nodes.append(helper.make_node("Split", [f"{p}/qkv", f"{p}/sizes"], outs, name=f"{p}/Split", axis=-1))
        else:
            nodes.append(helper.make_node("Split", [f"{p}/qkv"], outs, name=f"{p}/Split", axis=-1, split=[d] * 3))
        mask = ""
        if m.mask_input is not None:
            if m.mask_input not in casts:
                casts[m.mask_input] = f"/pressa/{m.mask_input}_int32"
                nodes.append(helper.make_node("Cast", [m.mask_input], [casts[m.mask_input]],
                                              name=f"/pressa/{m.mask_input}/Cast", to=TensorProto.INT32))
            mask = casts[m.mask_input]
        out = f"{p}/output"
        nodes.append(helper.make_node("MultiHeadAttention", outs + [f"{p}/qkv.bias", mask], [out],
                                      name=f"{p}/MultiHeadAttention", domain=MS, num_heads=int(heads),
                                      scale=float(m.scale)))
        model.graph.node.extend(nodes)
        elem = helper.np_dtype_to_tensor_dtype(w.dtype)       # typed, so that quantizers see them
        model.graph.value_info.extend(helper.make_tensor_value_info(t, elem, None)
                                      for t in [f"{p}/qkv", *outs, out])
        _replace_uses(v, m.context, out)
        done += 1
    from pressa.graph.view import topological_sort

    topological_sort(model.graph)
    GraphView(model).prune()
    return done


def _replace_uses(v: GraphView, old: str, new: str) -> None:
    for n in v.consumers.get(old, []):
        for j, name in enumerate(n.input):
            if name == old:
                n.input[j] = new
    if old in v.outputs:              # keep the graph's output name: the unfused producer lets go of it
        from onnx import helper

        prod = v.producer[old]
        prod.output[list(prod.output).index(old)] = f"{old}/unfused"
        v.g.node.append(helper.make_node("Identity", [new], [old], name=f"{old}/Identity"))
