"""Builds an ONNX graph node by node, streaming every large initializer straight into the external
data file so that the weights are never held in memory all at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS = "com.microsoft"
ALIGN = 4096           # page-aligned offsets let ONNX Runtime memory-map initializers
INLINE_BYTES = 1024    # small tensors stay inside model.onnx


class GraphWriter:
    def __init__(self, model_path: Path, data_name: str = "model.onnx.data"):
        self.model_path = Path(model_path)
        self.data_name = data_name
        self._data = open(self.model_path.parent / data_name, "wb")
        self._offset = 0
        self._shared: dict[int, tuple[int, int]] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: dict[str, int] = {}
        self.op_counts: dict[str, int] = {}

    # -- initializers -------------------------------------------------------------------------
    def _write(self, raw: bytes) -> tuple[int, int]:
        pad = (-self._offset) % ALIGN
        if pad:
            self._data.write(b"\0" * pad)
            self._offset += pad
        start = self._offset
        self._data.write(raw)
        self._offset += len(raw)
        return start, len(raw)

    def weight(self, name: str, array: np.ndarray, share_key: int | None = None,
               dims: tuple[int, ...] | None = None) -> str:
        """Add an initializer. `share_key`: tensors with the same key reuse one stretch of the data
        file (e.g. a tied embedding read by Gather and by MatMulNBits with another shape); a tensor
        sharing bytes already written is read for its dtype and shape only."""
        if share_key is None or share_key not in self._shared:
            array = np.ascontiguousarray(array)
        dims = tuple(array.shape) if dims is None else dims
        if array.nbytes <= INLINE_BYTES and share_key is None:
            t = numpy_helper.from_array(array.reshape(dims), name)
        else:
            if share_key is not None and share_key in self._shared:
                start, length = self._shared[share_key]
            else:
                start, length = self._write(array.tobytes())
                if share_key is not None:
                    self._shared[share_key] = (start, length)
            t = self._external(name, array.dtype, dims, start, length)
        self.inits.append(t)
        return name

    def _external(self, name: str, dtype, dims, start: int, length: int) -> TensorProto:
        """A tensor whose bytes lie at [start, start + length) of the data file."""
        t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims=dims)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.data_name), ("offset", str(start)), ("length", str(length))):
            e = t.external_data.add()
            e.key, e.value = k, v
        return t

    def weight_from_chunks(self, name: str, shape: tuple[int, ...], dtype, chunks) -> str:
        """An external initializer written a chunk of rows at a time (never whole in memory)."""
        start, length = None, 0
        for chunk in chunks:
            raw = np.ascontiguousarray(chunk, dtype).tobytes()
            if start is None:
                start, _ = self._write(raw)
            else:
                self._data.write(raw)
                self._offset += len(raw)
            length += len(raw)
        self.inits.append(self._external(name, dtype, shape, start, length))
        return name

    def const(self, name: str, value, dtype=np.int64) -> str:
        return self.weight(name, np.asarray(value, dtype=dtype))

    # -- nodes --------------------------------------------------------------------------------
    def unique(self, base: str) -> str:
        n = self._names.get(base, 0)
        self._names[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def node(self, op: str, inputs: list[str], name: str, n_out: int = 1, domain: str = "",
             outputs: list[str] | None = None, **attrs) -> list[str]:
        name = self.unique(name)
        outs = outputs or [f"{name}/output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain or None,
                                           **{k: v for k, v in attrs.items() if v is not None}))
        self.op_counts[op] = self.op_counts.get(op, 0) + 1
        return outs

    def op(self, op: str, inputs: list[str], name: str, domain: str = "", **attrs) -> str:
        return self.node(op, inputs, name, 1, domain, **attrs)[0]

    def add_input(self, name: str, elem: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def add_output(self, name: str, elem: int, shape: list) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))

    # -- finish -------------------------------------------------------------------------------
    def save(self, graph_name: str = "pressa", opset: int = 21) -> int:
        """Write model.onnx; returns the external data size in bytes."""
        self._data.close()
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                        helper.make_opsetid(MS, 1)],
                                  producer_name="pressa")
        model.ir_version = 10
        with open(self.model_path, "wb") as f:
            f.write(model.SerializeToString())
        return self._offset

    def abort(self) -> None:
        if not self._data.closed:
            self._data.close()
