"""What an artifact's weights cost: parameters, bytes and bits per weight, read off its ONNX graph.

Bits per weight counts everything the weights need to be read back: codes, scales, zero points, the
embedding and the float tensors (norms, biases), over the source model's parameter count (a quantized
weight counts its N x K logical values, scales and zero points count none). A stretch of external data
shared by two tensors (a tied embedding and lm_head) counts once. The rotary cos/sin tables are not
weights (GroupQueryAttention's inputs 7 and 8, and what the graph computes them from) and count in
neither. Comparable with llama.cpp's
bits per weight (file bytes over parameters) up to the small file headers each format adds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from pressa.errors import CorruptModel

ROTARY_INPUTS = (7, 8)           # GroupQueryAttention's cos_cache, sin_cache


def _bytes(init: onnx.TensorProto) -> tuple[tuple | None, int]:
    """(where its external data lies, or None) and its size in bytes."""
    if init.data_location == onnx.TensorProto.EXTERNAL:
        ext = {e.key: e.value for e in init.external_data}
        return (ext.get("location"), int(ext.get("offset", 0))), int(ext["length"])
    if init.raw_data:
        return None, len(init.raw_data)
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    return None, int(np.prod(init.dims, dtype=np.int64)) * itemsize


def _roles(graph: onnx.GraphProto) -> tuple[dict[str, int], set[str], set[str]]:
    """{quantized weight: parameters it holds (negative: -bits, resolved from its dims)}, the names that
    hold no parameters (scales, zero points, and their float16 copies), the rotary tables (stored, or
    the constants the graph computes them from)."""
    counts: dict[str, int] = {}
    overhead: set[str] = set()
    rotary: set[str] = set()
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMulNBits":
            counts[node.input[1]] = int(attrs["N"]) * int(attrs["K"])
            overhead.update(node.input[2:])
        elif node.op_type == "GatherBlockQuantized":
            counts.setdefault(node.input[0], -int(attrs.get("bits", 4)))
            overhead.update(node.input[2:])
        elif node.op_type == "GroupQueryAttention":
            rotary.update(node.input[i] for i in ROTARY_INPUTS if i < len(node.input))
    producers = {o: n for n in graph.node for o in n.output}
    for node in reversed(graph.node):                          # scales stored as float16 and cast back
        if node.op_type == "Cast" and node.output[0] in overhead:
            overhead.add(node.input[0])
    todo = list(rotary)                                        # tables computed in the graph: what they read
    while todo:
        node = producers.get(todo.pop())
        for name in node.input if node is not None else ():
            if name and name not in rotary:
                rotary.add(name)
                todo.append(name)
    return counts, overhead, rotary


FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def weight_footprint(folder: Path) -> dict:
    """{"parameters", "weight_bytes", "bits_per_weight", "model_mb"} of the artifact at `folder`."""
    path = Path(folder) / "model.onnx"
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:                                   # noqa: BLE001 - any parse failure
        raise CorruptModel(f"{path}: not a readable ONNX model ({err})") from None
    counts, overhead, rotary = _roles(model.graph)
    params = size = 0
    seen: set = set()
    for init in model.graph.initializer:
        if init.name in counts:
            c = counts[init.name]
            p = c if c > 0 else int(np.prod(init.dims, dtype=np.int64)) * (8 // -c)
        elif init.name in overhead:
            p = 0
        elif init.data_type in FLOATS and init.name not in rotary:
            p = int(np.prod(init.dims, dtype=np.int64))
        else:
            continue                                           # shapes, indices, rotary tables: not weights
        where, n = _bytes(init)
        if where is not None and where in seen:                # one stretch shared by two tensors
            continue
        seen.add(where)
        params, size = params + p, size + n
    files = [p for p in Path(folder).iterdir() if p.name.startswith("model.onnx")]
    return {"parameters": params, "weight_bytes": size, "bits_per_weight": 8 * size / max(params, 1),
            "model_mb": sum(p.stat().st_size for p in files) / 1e6}
