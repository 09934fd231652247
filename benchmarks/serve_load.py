"""A bounded load test of `pressa serve` on loopback: N concurrent clients for S seconds against the
bundled int4 SmolLM2 (chat completions, with continuous batching and with one sequence at a time)
and all-MiniLM-L6-v2 INT8 (TF-Serving predict with JSON answers, KServe v2 infer with binary answers;
each with dynamic batching and with batch size 1). It starts and stops its own servers.

    python benchmarks/serve_load.py [--clients 64] [--seconds 60] [--json]
    python benchmarks/serve_load.py --ray       # plain `pressa serve` against Ray Serve with 2 replicas
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine  # noqa: E402

PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name: str, path: Path, port: int, max_batch: int, concurrency: int, extra: tuple = ()) -> subprocess.Popen:
    proc = subprocess.Popen([PY, "-m", "pressa", "serve", "--model_name", name, "--model_path", str(path),
                             "--port", str(port), "--max-batch", str(max_batch), "--max-queue", "256",
                             "--max-concurrency", str(concurrency), "--no-access-log", *extra],
                            stderr=subprocess.DEVNULL)
    for _ in range(1800):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server for {name} did not start")


def load(url: str, body: dict, clients: int, seconds: float, tokens_of=None) -> dict:
    """`clients` threads, each sending requests back to back until `seconds` pass (bounded)."""
    data = json.dumps(body).encode()
    lat, errors, tokens = [], [0], [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client():
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=120) as r:
                    raw = r.read()
                out = json.loads(raw) if tokens_of else None
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    tokens[0] += tokens_of(out) if tokens_of else 0
            except (urllib.error.URLError, OSError, ValueError):
                with lock:
                    errors[0] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [float("nan")] * 99
    return {"requests": len(lat), "errors": errors[0], "requests_per_s": len(lat) / wall,
            "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3, "tokens_per_s": tokens[0] / wall, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--ray", action="store_true", help="plain serve against Ray Serve, 2 replicas of 1 thread")
    a = ap.parse_args()
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([PY, "-m", "pressa", "auto-opt", "-o", str(tmp / "smol"), "--log_level", "3"], check=True)
        subprocess.run([PY, "-m", "pressa", "capture", "--model", "all-MiniLM-L6-v2", "-o", str(tmp / "minilm")],
                       check=True, capture_output=True)
        subprocess.run([PY, "-m", "pressa", "quantize", str(tmp / "minilm"), "-o", str(tmp / "minilm-int8"),
                        "--mode", "dynamic"], check=True, capture_output=True)
        sentence = ("The history of the region is long and complex, shaped by trade, migration and the rise "
                    "and fall of several kingdoms.")
        chat = {"model": "smol", "messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 32,
                "temperature": 0}
        infer = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [sentence]}],
                 "parameters": {"binary_data_output": True}}
        completion_tokens = lambda o: o["usage"]["completion_tokens"]  # noqa: E731
        # (label, name, artifact, max batch, max concurrency, route, body, tokens of an answer)
        cases = [
            ("SmolLM2 int4 chat (32 tokens), continuous batching (8 slots)", "smol", tmp / "smol", 1, 8,
             "/v1/chat/completions", chat, completion_tokens),
            ("SmolLM2 int4 chat (32 tokens), one sequence at a time", "smol", tmp / "smol", 1, 1,
             "/v1/chat/completions", chat, completion_tokens),
            ("MiniLM INT8 :predict (JSON), dynamic batching", "minilm", tmp / "minilm-int8", 32, 8,
             "/v1/models/minilm:predict", {"instances": [sentence]}, None),
            ("MiniLM INT8 :predict (JSON), batch size 1", "minilm", tmp / "minilm-int8", 1, 8,
             "/v1/models/minilm:predict", {"instances": [sentence]}, None),
            ("MiniLM INT8 v2 infer (binary out), dynamic batching", "minilm", tmp / "minilm-int8", 32, 8,
             "/v2/models/minilm/infer", infer, None),
            ("MiniLM INT8 v2 infer (binary out), batch size 1", "minilm", tmp / "minilm-int8", 1, 8,
             "/v2/models/minilm/infer", infer, None),
        ]
        if a.ray:                      # the same two cases, one process against two Ray Serve replicas
            ray = ("--executor", "ray", "--replicas", "2", "--threads", "1")
            cases = [(label + how, *rest, extra) for label, *rest in (cases[0], cases[4])
                     for how, extra in ((", pressa serve", ()), (", Ray Serve 2 replicas x 1 thread", ray))]
        for label, name, path, max_batch, concurrency, route, body, toks, *extra in cases:
            port = free_port()
            proc = start(name, path, port, max_batch, concurrency, *extra)
            try:
                r = load(f"http://127.0.0.1:{port}{route}", body, a.clients, a.seconds, toks)
            finally:
                proc.terminate()
                proc.wait(30)
            r["case"] = label
            results.append(r)
            rows.append((label, f"{r['requests_per_s']:.1f}", f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}",
                         f"{r['tokens_per_s']:.1f}" if toks else "", str(r["errors"])))
    rate = [r["requests_per_s"] for r in results]
    if a.ray:
        emit({"benchmark": "serve_load_ray", "clients": a.clients, "seconds": a.seconds, "results": results,
              "ray_over_plain": {"chat": rate[1] / max(rate[0], 1e-9), "infer": rate[3] / max(rate[2], 1e-9)},
              "machine": machine(), "cpus": os.cpu_count()}, rows,
             ("case", "requests/s", "p50 ms", "p99 ms", "tokens/s", "errors"), a.json)
        return
    speedups = {"continuous_batching": rate[0] / max(rate[1], 1e-9),
                "dynamic_batching_predict_json": rate[2] / max(rate[3], 1e-9),
                "dynamic_batching_infer_binary": rate[4] / max(rate[5], 1e-9)}
    emit({"benchmark": "serve_load", "clients": a.clients, "seconds": a.seconds, "results": results,
          "speedups": speedups, "machine": machine(), "cpus": os.cpu_count()}, rows,
         ("case", "requests/s", "p50 ms", "p99 ms", "tokens/s", "errors"), a.json)
    for k, v in speedups.items():
        print(f"{k.replace('_', ' ')}: {v:.2f}x over one at a time", file=sys.stderr)


if __name__ == "__main__":
    main()
