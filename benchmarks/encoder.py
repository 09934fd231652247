"""Encoder speed and accuracy: all-MiniLM-L6-v2, pressa fp32 / INT8 against PyTorch fp32 and
OpenVINO + NNCF INT8 (run in benchmarks/peers/.venvs/openvino, made by peers/run.py).

    python benchmarks/encoder.py [--threads 2] [--runs 200] [--no-openvino] [--json]

Same token ids for every engine: latency at batch 1 x 128 tokens (median of --runs), throughput at
batch 32 x 128 (sentences/s, median of 20), cosine of mean-pooled, normalized embeddings to PyTorch
fp32 over 500 WikiText sentences; INT8 is calibrated on 300 other lines of the same file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit, machine  # noqa: E402

WIKI = ROOT.parent / "shared" / "data" / "wikitext2-valid.txt"
OV_VENV = ROOT / "benchmarks" / "peers" / ".venvs" / "openvino"
SEQ = 128


def token_sets(folder: Path) -> dict[str, np.ndarray]:
    """bench (32 x 128), eval (500 sentences), calib (300 others), all padded to 128."""
    from pressa.quant.calib_data import TextEncoder, text_lines

    lines = text_lines(WIKI.read_text(), 1100)
    enc = TextEncoder(folder, ["input_ids", "attention_mask", "token_type_ids"], SEQ, pad_to=SEQ)
    long = [ln for ln in lines if len(ln) > 700][:32]
    sets = {"bench": enc((long * 32)[:32]), "eval": enc(lines[0::2][:500]), "calib": enc(lines[1::2][:300])}
    return {f"{s}_{k}": v for s, feeds in sets.items() for k, v in feeds.items()}


def feeds(d: dict, prefix: str, rows=slice(None)) -> dict:
    return {k[len(prefix) + 1:]: v[rows] for k, v in d.items() if k.startswith(prefix + "_")}


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    e = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return e / np.linalg.norm(e, axis=-1, keepdims=True)


def timed(fn, runs: int) -> float:
    from pressa.evaluate.latency import run_times

    return statistics.median(run_times(fn, runs))


def measure_pressa(name: str, folder: Path, d: dict, threads: int, runs: int, ref: np.ndarray,
                   backend: str = "onnxruntime") -> dict:
    """A pressa artifact on one of its runtimes: batch-1 latency under the latency hint, batch-32
    sentences/s under the throughput hint (on OpenVINO: a burst of 8 batches on its request queue when
    that beats one request)."""
    from pressa.graph.onnx_io import find_model
    from pressa.runtime.options import RuntimeOptions
    from pressa.runtime.session import open_session

    label = f"{name} on {backend}" if backend != "onnxruntime" else name
    if backend == "auto":                        # what --backend auto picks here (measured once, remembered)
        from pressa.runtime.choose import pick_backend

        backend = pick_backend(find_model(folder), RuntimeOptions(hint="latency", threads=threads))[0]
        label += f" (picks {backend})"

    def session(hint):
        return open_session(find_model(folder), runtime=RuntimeOptions(backend=backend, hint=hint, threads=threads))

    s1, st = session("latency"), session("throughput")
    b1, b32 = feeds(d, "bench", slice(0, 1)), feeds(d, "bench")
    emb = np.concatenate([pooled(st.run(None, feeds(d, "eval", slice(i, i + 32)))[0],
                                 d["eval_attention_mask"][i:i + 32]) for i in range(0, 500, 32)])
    size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file() and "model.onnx" in f.name)
    rate = 32 / timed(lambda: st.run(None, b32), 20)
    if hasattr(st, "run_many") and st.parallel_requests() > 1:
        rate = max(rate, 8 * 32 / timed(lambda: st.run_many([b32] * 8), 5))
    return {"engine": label,
            "latency_ms": timed(lambda: s1.run(None, b1), runs) * 1e3, "sentences_per_s": rate,
            "cosine_mean": float((emb * ref).sum(-1).mean()), "cosine_min": float((emb * ref).sum(-1).min()),
            "model_mb": size / 1e6}


def measure_torch(folder: Path, d: dict, threads: int, runs: int) -> tuple[dict, np.ndarray]:
    import torch
    from transformers import AutoModel

    torch.set_num_threads(threads)
    m = AutoModel.from_pretrained(folder).eval()
    t = lambda f: {k: torch.from_numpy(v) for k, v in f.items()}
    with torch.no_grad():
        ref = np.concatenate([pooled(m(**t(feeds(d, "eval", slice(i, i + 32)))).last_hidden_state.numpy(),
                                    d["eval_attention_mask"][i:i + 32]) for i in range(0, 500, 32)])
        b1, b32 = t(feeds(d, "bench", slice(0, 1))), t(feeds(d, "bench"))
        lat = timed(lambda: m(**b1), max(20, runs // 4))
        tput = 32 / timed(lambda: m(**b32), 5)
    return {"engine": "PyTorch fp32 (eager)", "latency_ms": lat * 1e3, "sentences_per_s": tput, "cosine_mean": 1.0,
            "cosine_min": 1.0, "model_mb": sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6}, ref


OV_SCRIPT = r"""
import json, os, statistics, subprocess, sys, time
import numpy as np, openvino as ov, nncf
folder, npz, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
d = dict(np.load(npz)); names = ["input_ids", "attention_mask", "token_type_ids"]
f = lambda p, r=slice(None): {k: d[p + "_" + k][r] for k in names}
out_dir = os.path.join(os.path.dirname(npz), "ov-fp32")
subprocess.run([os.path.join(os.path.dirname(sys.executable), "optimum-cli"), "export", "openvino", "--model", folder,
                "--task", "feature-extraction", "--weight-format", "fp32", out_dir], check=True, capture_output=True)
fp32 = ov.Core().read_model(os.path.join(out_dir, "openvino_model.xml"))
calib = [f("calib", slice(i, i + 1)) for i in range(300)]
t0 = time.perf_counter()
int8 = nncf.quantize(fp32, nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER, subset_size=300)
qtime = time.perf_counter() - t0
core = ov.Core()
def timed(fn, n):
    fn(); ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)
ref = np.load(npz.replace(".npz", "_ref.npy"))
out = []
for label, model in (("OpenVINO fp32", fp32), ("OpenVINO + NNCF INT8", int8)):
    cfg = {"INFERENCE_NUM_THREADS": threads}
    lat = core.compile_model(model, "CPU", {**cfg, "PERFORMANCE_HINT": "LATENCY"})
    tp = core.compile_model(model, "CPU", {**cfg, "PERFORMANCE_HINT": "THROUGHPUT"})
    r1, r32 = lat.create_infer_request(), tp.create_infer_request()
    b1, b32 = f("bench", slice(0, 1)), f("bench")
    embs = []
    for i in range(0, 500, 32):
        h = r32.infer(f("eval", slice(i, i + 32)))[0]
        mk = d["eval_attention_mask"][i:i + 32][..., None].astype(np.float32)
        e = (h * mk).sum(1) / mk.sum(1); embs.append(e / np.linalg.norm(e, axis=-1, keepdims=True))
    cos = (np.concatenate(embs) * ref).sum(-1)
    sync = 32 / timed(lambda: lat.create_infer_request().infer(b32), 10)     # one request, all threads
    queue = ov.AsyncInferQueue(tp, tp.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    def burst():                                            # the THROUGHPUT hint's streams all busy
        for _ in range(8):
            queue.start_async(b32)
        queue.wait_all()
    streams = 8 * 32 / timed(burst, 5)
    out.append({"engine": label, "latency_ms": timed(lambda: r1.infer(b1), runs) * 1e3,
                "sentences_per_s": max(sync, streams), "sync_sentences_per_s": sync,
                "async_sentences_per_s": streams, "cosine_mean": float(cos.mean()),
                "cosine_min": float(cos.min()), "quantize_s": qtime if "INT8" in label else None})
print(json.dumps(out))
"""


def measure_openvino(folder: Path, d: dict, ref: np.ndarray, threads: int, runs: int, tmp: Path) -> list[dict]:
    py = OV_VENV / "bin" / "python"
    if not py.is_file():
        print("OpenVINO venv missing: run benchmarks/peers/run.py --tools openvino once", file=sys.stderr)
        return []
    np.savez(tmp / "tokens.npz", **d)
    np.save(tmp / "tokens_ref.npy", ref)
    res = subprocess.run([str(py), "-c", OV_SCRIPT, str(folder), str(tmp / "tokens.npz"), str(threads), str(runs)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        print("OpenVINO failed:", res.stderr.strip().splitlines()[-1:], file=sys.stderr)
        return []
    return json.loads(res.stdout.strip().splitlines()[-1])


def build(tmp: Path) -> dict[str, Path]:
    from pressa.passes.base import apply_pass
    from pressa.sources.resolve import resolve_hf_folder

    def cli(*args):
        subprocess.run([sys.executable, "-m", "pressa", *map(str, args), "--overwrite"], check=True,
                       capture_output=True)

    calib = tmp / "calib.txt"
    from pressa.quant.calib_data import text_lines

    calib.write_text("\n".join(text_lines(WIKI.read_text(), 1100)[1::2][:300]) + "\n")
    cli("capture", "--model", resolve_hf_folder("all-MiniLM-L6-v2"), "-o", tmp / "fp32")
    cli("optimize", tmp / "fp32", "-o", tmp / "opt")
    apply_pass("quantize-dynamic", tmp / "opt", tmp / "dyn", {"per_channel": True}, overwrite=True)
    for src, name in (("fp32", "static"), ("opt", "static-opt")):        # default flags: no --max-drop
        t0 = time.perf_counter()
        apply_pass("quantize-static", tmp / src, tmp / name, {"calibration_data": str(calib)}, overwrite=True)
        print(f"static INT8 of {src}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return {"pressa fp32 (optimized)": tmp / "opt", "pressa INT8 dynamic (per-channel)": tmp / "dyn",
            "pressa INT8 static (default flags)": tmp / "static",
            "pressa INT8 static of the optimized graph (default flags)": tmp / "static-opt"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO + NNCF peer (its own venv)")
    ap.add_argument("--backends", default="onnxruntime,openvino,auto",
                    help="pressa's runtimes to time its artifacts on (auto: the one --backend auto picks)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from pressa.sources.resolve import resolve_hf_folder

    folder = resolve_hf_folder("all-MiniLM-L6-v2")
    d = token_sets(folder)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        arts = build(tmp)
        torch_row, ref = measure_torch(folder, d, a.threads, a.runs)
        rows = [torch_row] + [measure_pressa(n, p, d, a.threads, a.runs, ref, backend)
                              for backend in a.backends.split(",") for n, p in arts.items()]
        if not a.no_openvino:
            rows += measure_openvino(folder, d, ref, a.threads, a.runs, tmp)
    base = rows[0]["sentences_per_s"]
    table = [(r["engine"], f"{r['latency_ms']:.1f}", f"{r['sentences_per_s']:.1f}",
              f"{r['sentences_per_s'] / base:.2f}x", f"{r['cosine_mean']:.4f} / {r['cosine_min']:.4f}") for r in rows]
    emit({"benchmark": "encoder", "model": "all-MiniLM-L6-v2", "seq": SEQ, "threads": a.threads, "rows": rows,
          "machine": machine()}, table,
         ("engine", "batch 1 ms", "batch 32 sent/s", "vs PyTorch", "cosine mean / min"), a.json)


if __name__ == "__main__":
    main()
