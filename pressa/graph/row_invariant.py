"""Attention whose per-token result does not depend on how many new tokens a run scores, so that a
speculative verification step (k tokens of one sequence in one run) computes exactly what k one-token
steps compute, and greedy speculative decoding equals plain decoding token for token in any precision.

ONNX Runtime's GroupQueryAttention on CPU computes each head's probabilities x V as one GEMM over the new
tokens; for one token MLAS takes its one-row kernel (M = 1, alpha = 1), which rounds differently from the
general kernel (~2e-7 on the output), and the int8 activations of the next 4-bit linear turn that into
~0.5 in the logits and near-tie flips. Its scores and probabilities are row-invariant (equal bit for
bit in a one-node check; the whole graph's logits are tested: tests/test_row_invariant.py). So each node
also outputs its probabilities (qk_output = 2: [B, heads, S, T], zero past each row's causal length), and
probabilities x V is computed here by a MatMul with the query heads of one key/value head stacked along M
([B, kv_heads, group x S, T] x [B, kv_heads, T, head]): M = group x S is at least 2, so MLAS never takes
the one-row path, and a row's trailing zero probabilities add nothing to its sums. Six small nodes per
layer (one copies the layer's values up to the run's length), ~14% of a SmolLM2 int4 decode step; the
node's own output goes unused.

(The one-row kernel cannot be reproduced instead for verification rows: a batched MatMul with one row per
query gives it every row's K = the run's length, and MLAS's one-row kernel sums a row whose length is 3
mod 4 differently when trailing zeros pad it.)"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pressa.artifact.llm_io import ATTENTION_MASK
from pressa.errors import BadArgument

GQA = "GroupQueryAttention"
KEYS = "/row_invariant/keys"               # the attention mask's width as [1]: the positions a run reads


def _attr(node, name: str, default=None):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def check_attention(heads: int, kv_heads: int, capped: bool) -> None:
    """BadArgument (one line) when a model's attention cannot be made row-invariant here."""
    if heads == kv_heads:  # M would be S: one row in a one-token step (a scale to keep MLAS off that path, ORT fuses)
        raise BadArgument("--exact-speculation needs grouped-query attention (fewer key/value heads than query "
                          "heads); this model has one key/value head per query head: build it without")
    if capped:
        raise BadArgument("--exact-speculation: soft-capped or smooth-softmax attention is not supported; build "
                          "this model without it")


def _check(node) -> tuple[int, int]:
    """(query heads, key/value heads) of a node this can change; BadArgument otherwise."""
    hq, hkv = _attr(node, "num_heads"), _attr(node, "kv_num_heads")
    check_attention(hq, hkv, bool(_attr(node, "qk_output", 0) or _attr(node, "softcap", 0.0)
                                  or _attr(node, "smooth_softmax", 0)))
    return hq, hkv


def _probs_times_v(node, hq: int, hkv: int, head: int, const) -> list:
    """The nodes that recompute `node`'s output 0 (same name) from its probabilities and present values."""
    lab, out = f"{node.name}/row_invariant", node.output[0]
    probs = f"{lab}/probs"
    node.output[0] = f"{out}/unused"
    node.output.append(probs)
    node.attribute.append(helper.make_attribute("qk_output", 2))

    def op(op_type, inputs, suffix, output=None, **attrs):
        name = f"{lab}/{suffix}"
        return helper.make_node(op_type, inputs, [output or name], name=name, **attrs)

    steps = [op("Reshape", [probs, const([0, hkv, -1, 0])], "Reshape_probs"),        # [B, kv, group*S, T]
             op("Slice", [node.output[2], const([0]), KEYS, const([2])], "Slice_v"),  # [B, kv, T, head]
             ]
    steps.append(op("MatMul", [steps[0].output[0], steps[1].output[0]], "MatMul"))   # [B, kv, group*S, head]
    steps.append(op("Reshape", [steps[-1].output[0], const([0, hq, -1, head])], "Reshape_heads"))
    steps.append(op("Transpose", [steps[-1].output[0]], "Transpose", perm=[0, 2, 1, 3]))
    steps.append(op("Reshape", [steps[-1].output[0], const([0, 0, hq * head])], "Reshape_out", output=out))
    return steps


def row_invariant_attention(model: onnx.ModelProto, head_size: int) -> onnx.ModelProto:
    """`model` with every GroupQueryAttention's output recomputed row-invariantly (in place; returned)."""
    graph = model.graph
    inits: dict[tuple, str] = {}

    def const(values) -> str:
        key = tuple(values)
        if key not in inits:
            inits[key] = f"/row_invariant/const_{len(inits)}"
            graph.initializer.append(numpy_helper.from_array(np.asarray(values, np.int64), inits[key]))
        return inits[key]

    nodes = [helper.make_node("Shape", [ATTENTION_MASK], [f"{KEYS}/Shape"], name=f"{KEYS}/Shape"),
             helper.make_node("Gather", [f"{KEYS}/Shape", const([1])], [KEYS], name=KEYS, axis=0)]
    found = 0
    for node in graph.node:
        nodes.append(node)
        if node.op_type == GQA:
            kv_types = {t.type.tensor_type.elem_type for t in graph.output if t.name == node.output[2]}
            if kv_types != {onnx.TensorProto.FLOAT}:
                raise BadArgument("row-invariant attention needs float32 attention (a CPU build)")
            nodes.extend(_probs_times_v(node, *_check(node), head_size, const))
            found += 1
    if not found:
        raise BadArgument("row-invariant attention: the model has no GroupQueryAttention to change")
    graph.ClearField("node")
    graph.node.extend(nodes)
    return model


def rewrite_graph_file(path: Path, head_size: int) -> dict[str, int]:
    """The graph file at `path` made row-invariant (its external weights untouched); returns its op counts."""
    model = row_invariant_attention(onnx.load(str(path), load_external_data=False), head_size)
    onnx.save(model, str(path))
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))
