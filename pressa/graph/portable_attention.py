"""GroupQueryAttention spelled in standard ONNX operators, for runtimes that cannot keep the contrib
operator in their own format (OpenVINO reads it from ONNX, but its IR has no such operation).

Each GroupQueryAttention node (packed or separate q/k/v, rotary from the cos/sin caches, grouped
key/value heads, causal and padding masks, a sliding window, soft-capping) becomes: rotary embedding
at positions past_len + [0, S), the past joined with the new keys and values (present = concat, the
past holding exactly past_len positions), key/value heads repeated to the query heads, masked scaled
dot-product attention. The graph's past_len is the attention mask's width minus the new tokens."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pressa.artifact.llm_io import ATTENTION_MASK, INPUT_IDS


class _Nodes:
    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.inits, self.n = prefix, [], [], 0

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        self.n += 1
        out = f"{self.prefix}/{op_type}_{self.n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def const(self, value, dtype=np.int64) -> str:
        self.n += 1
        name = f"{self.prefix}/const_{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name


def _shared(g: _Nodes) -> dict:
    """past_len, the new tokens' positions and the key mask, computed once from the graph inputs."""
    s = g.op("Gather", [g.op("Shape", [INPUT_IDS]), g.const(1)], axis=0)
    t = g.op("Gather", [g.op("Shape", [ATTENTION_MASK]), g.const(1)], axis=0)
    p = g.op("Sub", [t, s])
    positions = g.op("Range", [p, t, g.const(1)])                                  # [S]
    keys = g.op("Range", [g.const(0), t, g.const(1)])                              # [T]
    rel = g.op("Sub", [g.op("Unsqueeze", [keys, g.const([0])]), g.op("Unsqueeze", [positions, g.const([1])])])
    pad = g.op("Cast", [g.op("Unsqueeze", [ATTENTION_MASK, g.const([1, 2])])], to=TensorProto.BOOL)  # [B,1,1,T]
    return {"positions": positions, "rel": rel, "pad": pad}


def _rotary(g: _Nodes, x: str, heads: int, head: int, cos: str, sin: str, rot: int) -> str:
    """x [B, S, heads*head] -> [B, heads, S, head], the first `rot` dims rotated (halves, not interleaved)."""
    x = g.op("Transpose", [g.op("Reshape", [x, g.const([0, 0, heads, head])])], perm=[0, 2, 1, 3])
    half = rot // 2
    x1 = g.op("Slice", [x, g.const([0]), g.const([half]), g.const([3])])
    x2 = g.op("Slice", [x, g.const([half]), g.const([rot]), g.const([3])])
    a = g.op("Sub", [g.op("Mul", [x1, cos]), g.op("Mul", [x2, sin])])
    b = g.op("Add", [g.op("Mul", [x2, cos]), g.op("Mul", [x1, sin])])
    parts = [a, b]
    if rot < head:
        parts.append(g.op("Slice", [x, g.const([rot]), g.const([head]), g.const([3])]))
    return g.op("Concat", parts, axis=3)


def _attention(g: _Nodes, node, shared: dict, head: int, rot: int, dtype: int) -> list:
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    hq, hkv = a["num_heads"], a["kv_num_heads"]
    q, k, v = node.input[0], node.input[1], node.input[2]
    if not k:                                                   # packed qkv
        q, k, v = (g.op("Slice", [node.input[0], g.const([lo]), g.const([hi]), g.const([2])])
                   for lo, hi in ((0, hq * head), (hq * head, (hq + hkv) * head),
                                  ((hq + hkv) * head, (hq + 2 * hkv) * head)))
    cos = g.op("Unsqueeze", [g.op("Gather", [node.input[7], shared["positions"]], axis=0), g.const([0, 1])])
    sin = g.op("Unsqueeze", [g.op("Gather", [node.input[8], shared["positions"]], axis=0), g.const([0, 1])])
    qr = _rotary(g, q, hq, head, cos, sin, rot)
    kr = _rotary(g, k, hkv, head, cos, sin, rot)
    vr = g.op("Transpose", [g.op("Reshape", [v, g.const([0, 0, hkv, head])])], perm=[0, 2, 1, 3])
    present_k = g.op("Concat", [node.input[3], kr], axis=2)
    present_v = g.op("Concat", [node.input[4], vr], axis=2)
    group = hq // hkv

    def repeat(x):                                              # [B, hkv, T, D] -> [B, hq, T, D]
        if group == 1:
            return x
        e = g.op("Unsqueeze", [x, g.const([2])])
        shape = g.op("Concat", [g.op("Slice", [g.op("Shape", [e]), g.const([0]), g.const([2])]), g.const([group]),
                                g.op("Slice", [g.op("Shape", [e]), g.const([3]), g.const([5])])], axis=0)
        return g.op("Reshape", [g.op("Expand", [e, shape]), g.const([0, hq, -1, head])])

    fdt = np.float32 if dtype == TensorProto.FLOAT else np.float16
    scale = a.get("scale") or 1.0 / np.sqrt(head)
    scores = g.op("Mul", [g.op("MatMul", [qr, g.op("Transpose", [repeat(present_k)], perm=[0, 1, 3, 2])]),
                          g.const(scale, fdt)])
    if a.get("softcap"):
        c = g.const(a["softcap"], fdt)
        scores = g.op("Mul", [g.op("Tanh", [g.op("Div", [scores, c])]), c])
    allowed = g.op("LessOrEqual", [shared["rel"], g.const(0)])                        # causal: key <= query
    window = a.get("local_window_size", -1)
    if window and window > 0:
        allowed = g.op("And", [allowed, g.op("Greater", [shared["rel"], g.const(-window)])])
    allowed = g.op("And", [g.op("Unsqueeze", [allowed, g.const([0, 1])]), shared["pad"]])
    scores = g.op("Where", [allowed, scores, g.const(-3.0e38 if fdt == np.float32 else -6.0e4, fdt)])
    probs = g.op("Softmax", [scores], axis=-1)
    out = g.op("MatMul", [probs, repeat(present_v)])
    out = g.op("Reshape", [g.op("Transpose", [out], perm=[0, 2, 1, 3]), g.const([0, 0, hq * head])])
    return [out, present_k, present_v, probs]          # probs: qk_output's, for pressa.graph.row_invariant


def portable_attention(model: onnx.ModelProto, head_size: int) -> onnx.ModelProto:
    """`model` with every GroupQueryAttention replaced by standard operators (in place; returned)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    g = _Nodes("/portable_attention")
    shared = None
    nodes = []
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            nodes.append(node)
            continue
        shared = shared or _shared(g)
        start = len(g.nodes)
        rot = 2 * int(inits[node.input[7]].dims[1]) if node.input[7] in inits else head_size
        dtype = inits[node.input[7]].data_type if node.input[7] in inits else TensorProto.FLOAT
        outs = _attention(g, node, shared, head_size, rot, dtype)
        for produced, wanted in zip(outs, node.output):         # the node's outputs keep their names
            g.nodes.append(helper.make_node("Identity", [produced], [wanted], name=f"{wanted}/Identity"))
        nodes.extend(g.nodes[start:])
        del g.nodes[start:]
    if shared is not None:
        first = next(i for i, n in enumerate(nodes) if n.op_type != "Constant")
        nodes[first:first] = g.nodes                             # the shared computations, first
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.initializer.extend(g.inits)
    return model
