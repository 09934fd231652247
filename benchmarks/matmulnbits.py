"""ONNX Runtime's MatMulNBits at one row (a decode step) by bits, group size and zero points: microseconds per
call and GB/s of weight bytes read, on one weight shape (default Qwen2.5-0.5B's gate_up, 9,728 x 896), the
builder's own packing and accuracy level 4 (int8 activations), every core.

    python benchmarks/matmulnbits.py [--n 9728] [--k 896] [--runs 40] [--json]

Decode of a quantized LLM is these calls; what a format costs per byte here is what it costs per token.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, memory_bandwidth  # noqa: E402

FORMATS = [(4, 32, False), (4, 32, True), (4, 64, False), (4, 128, False), (4, 128, True), (2, 32, False),
           (2, 64, False), (2, 128, False), (2, 128, True), (8, 32, True), (8, 128, True)]
SPAN = 600e6                       # bytes of weights per session run: past this CPU's caches (a 1 GiB matrix-vector
                                   # product reads 27 GB/s here, one of 64 MB 48 GB/s)


def session(w, bits: int, block: int, sym: bool):
    """A graph of MatMulNBits over one input, `w` quantized, then as many more weights of its layout with
    random codes as span SPAN bytes (as a model's layers do, so each call reads memory, not cache; ONNX
    Runtime shares identical initializers, so copies would not do); the session, the calls per run and
    one weight's stored bytes."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from pressa.quant.packing import matmulnbits_tensors
    from pressa.quant.rtn import quantize_rtn

    n, k = w.shape
    t = matmulnbits_tensors(quantize_rtn(w, bits, block, sym))
    stored = t["B"].nbytes + t["scales"].size * 2 + (t["zero_points"].nbytes if "zero_points" in t else 0)
    calls = max(1, int(SPAN // stored))
    rng = np.random.default_rng(1)
    inits, nodes = [], []
    for i in range(calls):
        if i:
            t = {**t, "B": rng.integers(0, 256, t["B"].shape, np.uint8)}
        ins = ["x", f"B{i}", f"S{i}"] + ([f"Z{i}"] if "zero_points" in t else [])
        inits += [numpy_helper.from_array(t["B"], f"B{i}"), numpy_helper.from_array(t["scales"].astype("float32"),
                                                                                    f"S{i}")]
        if "zero_points" in t:
            inits.append(numpy_helper.from_array(t["zero_points"], f"Z{i}"))
        nodes.append(helper.make_node("MatMulNBits", ins, [f"y{i}"], domain="com.microsoft", K=k, N=n, bits=bits,
                                      block_size=block, accuracy_level=4))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, k])],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(calls)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), calls, stored


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=9728)
    ap.add_argument("--k", type=int, default=896)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((a.n, a.k)) * 0.02).astype(np.float32)
    x = rng.standard_normal((1, 1, a.k)).astype(np.float32)
    times: dict[tuple, list[float]] = {f: [] for f in FORMATS}
    stored: dict[tuple, int] = {}
    # one live session at a time, two rounds (the second in reverse order): an idle session's spinning pool
    # slows another's runs (interleaved, 4-bit groups of 32 read 446 us where alone they took ~310)
    for order in (FORMATS, FORMATS[::-1]):
        for f in order:
            s, calls, stored[f] = session(w, *f)
            for _ in range(3):
                s.run(None, {"x": x})
            for _ in range(a.runs // 2):
                t = time.perf_counter()
                s.run(None, {"x": x})
                times[f].append((time.perf_counter() - t) / calls)
            del s
    bandwidth = memory_bandwidth()
    results, rows = [], []
    for (bits, block, sym), size in stored.items():
        us = statistics.median(times[(bits, block, sym)]) * 1e6
        gbs = size / us / 1e3
        results.append({"bits": bits, "group": block, "symmetric": sym, "us": round(us, 1), "stored_mb": round(
            size / 1e6, 2), "gb_s": round(gbs, 1), "of_bandwidth": round(gbs * 1e9 / bandwidth, 2)})
        rows.append((bits, block, "sym" if sym else "asym", f"{size / 1e6:.2f}", f"{us:.0f}", f"{gbs:.1f}",
                     f"{gbs * 1e9 / bandwidth:.2f}"))
    emit({"benchmark": "matmulnbits", "n": a.n, "k": a.k, "bandwidth_gb_s": round(bandwidth / 1e9, 1),
          "results": results, "machine": machine()}, rows,
         ("bits", "group", "zero points", "stored MB", "us per call", "GB/s", "of bandwidth"), a.json)


if __name__ == "__main__":
    main()
