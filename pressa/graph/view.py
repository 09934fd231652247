"""An index over an ONNX graph for rewriting passes: who produces and who consumes each tensor,
constant values, and removal of what no output needs."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


class GraphView:
    def __init__(self, model):
        self.model = model
        self.g = model.graph
        self.refresh()

    def refresh(self) -> None:
        self.producer = {o: n for n in self.g.node for o in n.output if o}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in self.g.node:
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.inits = {t.name: t for t in self.g.initializer}
        self.inputs = {v.name for v in self.g.input if v.name not in self.inits}
        self.outputs = {v.name for v in self.g.output}

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output; None for computed tensors."""
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        n = self.producer.get(name)
        if n is not None and n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name == "value_float":
                    return np.asarray(a.f, np.float32)
                if a.name == "value_int":
                    return np.asarray(a.i, np.int64)
        return None

    def scalar(self, name: str) -> float | None:
        v = self.const(name)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None

    def attr(self, node, name: str, default=None):
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def single_consumer(self, name: str, op: str | None = None):
        cs = self.consumers.get(name, [])
        if len(cs) != 1 or name in self.outputs or (op and cs[0].op_type != op):
            return None
        return cs[0]

    def input_ancestors(self, name: str, through_shape: bool = False) -> set[str]:
        """Graph inputs that the value of `name` depends on; a Shape node's output depends on its
        input's shape only, which is not counted unless `through_shape`."""
        seen, stack, found = set(), [name], set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in self.inputs:
                found.add(t)
                continue
            n = self.producer.get(t)
            if n is None or (n.op_type == "Shape" and not through_shape):
                continue
            stack.extend(i for i in n.input if i)
        return found

    def prune(self) -> int:
        """Remove nodes whose outputs nothing needs, then unused initializers; returns nodes removed."""
        needed = set(self.outputs)
        keep = []
        for n in reversed(list(self.g.node)):
            if any(o in needed for o in n.output):
                keep.append(n)
                needed.update(i for i in n.input if i)
                needed.update(_subgraph_inputs(n))
        removed = len(self.g.node) - len(keep)
        del self.g.node[:]
        self.g.node.extend(reversed(keep))
        used = [t for t in self.g.initializer if t.name in needed]
        del self.g.initializer[:]
        self.g.initializer.extend(used)
        self.refresh()
        return removed


def _subgraph_inputs(node) -> set[str]:
    """Names used inside If/Loop/Scan bodies (outer-scope references)."""
    from onnx import AttributeProto

    names = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            for n in g.node:
                names.update(i for i in n.input if i)
                names.update(_subgraph_inputs(n))
    return names


def topological_sort(graph) -> None:
    """Order nodes so that every input is produced before use (fusions append new nodes at the end)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input) and _subgraph_inputs(n) <= available | _outer(n):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):        # a cycle or an outer-scope name: keep the remaining order
            ordered.extend(rest)
            break
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _outer(node) -> set[str]:
    """Names defined inside a node's own subgraphs (not to be waited for outside)."""
    from onnx import AttributeProto

    names = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            names.update(i.name for i in g.input)
            names.update(t.name for t in g.initializer)
            for n in g.node:
                names.update(n.output)
    return names
