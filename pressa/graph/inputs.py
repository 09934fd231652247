"""Made-up inputs for any ONNX graph (to check a rewrite, to time a model): token ids within the
vocabulary that the ids feed, padding masks with some padding, images as random pixels."""

from __future__ import annotations

import numpy as np

from pressa.graph.view import GraphView


def _vocab(v: GraphView, name: str) -> int:
    """Rows of the embedding that `name` indexes (first Gather consumer), else 2."""
    for n in v.consumers.get(name, []):
        if n.op_type == "Gather" and n.input[1] == name:
            t = v.inits.get(n.input[0])
            if t is not None and len(t.dims):
                return int(t.dims[0])
    return 2


def inputs_graph(specs) -> object:
    """An ONNX model holding only the inputs a session describes (name, "tensor(float)", dims), for
    sample_inputs on a graph pressa cannot read as ONNX (OpenVINO IR)."""
    from onnx import TensorProto, helper

    types = {"tensor(float)": TensorProto.FLOAT, "tensor(float16)": TensorProto.FLOAT16,
             "tensor(int64)": TensorProto.INT64, "tensor(int32)": TensorProto.INT32, "tensor(bool)": TensorProto.BOOL}
    inputs = [helper.make_tensor_value_info(s.name, types.get(s.type, TensorProto.FLOAT),
                                           [d if isinstance(d, int) else str(d) for d in s.shape]) for s in specs]
    return helper.make_model(helper.make_graph([], "inputs", inputs, []))


def sample_inputs(model, batch: int = 2, seq: int = 8, seed: int = 0, image: int = 32) -> dict[str, np.ndarray]:
    from onnx import helper

    rng = np.random.default_rng(seed)
    v = GraphView(model)
    out = {}
    for inp in model.graph.input:
        if inp.name in v.inits:
            continue
        t = inp.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        dims = []
        for j, d in enumerate(t.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            else:
                dims.append(batch if j == 0 else (image if len(t.shape.dim) == 4 else seq))
        lname = inp.name.lower()
        if np.issubdtype(dtype, np.integer):
            if "mask" in lname:
                a = np.ones(dims, dtype)
                if len(dims) == 2 and dims[0] > 1 and dims[1] > 2:
                    a[-1, dims[1] // 2:] = 0          # the last row padded
            elif "token_type" in lname:
                a = np.zeros(dims, dtype)
            elif "position" in lname and len(dims) == 2:
                a = np.broadcast_to(np.arange(dims[1], dtype=dtype), dims).copy()
            else:
                a = rng.integers(0, _vocab(v, inp.name), dims).astype(dtype)
        elif dtype == np.bool_:
            a = np.ones(dims, bool)
        else:
            a = rng.standard_normal(dims).astype(dtype)
        out[inp.name] = a
    return out


def run_model(model_or_path, feeds: dict, threads: int = 1) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    src = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def max_difference(a: list[np.ndarray], b: list[np.ndarray], mask: np.ndarray | None = None) -> float:
    """Largest |a - b| over all outputs, relative to each output's largest magnitude (at least 1).
    With a padding `mask` [B, S], positions of padded tokens in [B, S, ...] outputs are ignored."""
    worst = 0.0
    for x, y in zip(a, b):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            return float("inf")
        keep = np.ones(x.shape, bool)
        if mask is not None and x.ndim >= 2 and x.shape[:2] == mask.shape:
            keep = np.broadcast_to(mask.astype(bool).reshape(mask.shape + (1,) * (x.ndim - 2)), x.shape)
        if not keep.any():
            continue
        d = np.abs(x - y)[keep].max()
        worst = max(worst, float(d / max(1.0, np.abs(x[keep]).max())))
    return worst
