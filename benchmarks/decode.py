"""Decode speed and time to first token of pressa artifacts.

    python benchmarks/decode.py models/smol-int4 [more artifacts] [--runs 5] [--threads 2] [--json]

decode tokens/s: 128 new tokens, greedy, EOS ignored, timed from the first token to the last.
TTFT: prompt ids in, first token chosen (prefill of the whole prompt + sampling); for the chat
prompt (the model's template around a short question, ~41 tokens) and a 512-token WikiText prompt.
Medians over --runs after one warm-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pressa.evaluate.latency import spread  # noqa: E402

from _common import ROOT, emit, machine  # noqa: E402

CHAT_QUESTION = "What is machine learning? Explain it in simple terms for a beginner."
WIKI = ROOT.parent / "shared" / "data" / "wikitext2-valid.txt"


def measure(folder: str, runs: int, threads: int | None, new_tokens: int = 128, backend: str = "onnxruntime") -> dict:
    from pressa.evaluate.latency import benchmark
    from pressa.runtime.options import RuntimeOptions

    text = WIKI.read_text()[:40000] if WIKI.is_file() else None
    r = benchmark(Path(folder), prompt_tokens=512, new_tokens=new_tokens, runs=runs, text=text,
                  chat_prompt=CHAT_QUESTION, runtime=RuntimeOptions(backend=backend, threads=threads))
    r["artifact"] = f"{folder} ({backend}: {r['backend']})"
    return r


def measure_genai(folder: str, runs: int, new_tokens: int = 128) -> dict:
    """onnxruntime-genai running the same folder, same prompt, same count (for comparison)."""
    import numpy as np
    import onnxruntime_genai as og

    import pressa

    ids = pressa.load(folder).encode_prompt(CHAT_QUESTION)
    model = og.Model(folder)

    def once():
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + new_tokens, min_length=len(ids) + new_tokens,
                                  do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(np.array(ids, dtype=np.int32))
        stamps = []
        while not gen.is_done():
            gen.generate_next_token()
            stamps.append(time.perf_counter())
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    once()
    return {"artifact": folder + " (onnxruntime-genai)",
            "decode_tokens_per_s": spread([once() for _ in range(runs)])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--genai", action="store_true", help="also time onnxruntime-genai on the same folders")
    ap.add_argument("--backends", default="onnxruntime", help="comma-separated: onnxruntime, openvino, auto")
    a = ap.parse_args()
    results = [measure(f, a.runs, a.threads, backend=b) for b in a.backends.split(",") for f in a.artifacts]
    genai = [measure_genai(f, a.runs) for f in a.artifacts] if a.genai else []
    rows = [(r["artifact"], f"{r['size_mb']:.1f}", f"{r['decode_tokens_per_s']:.1f}",
             f"{r['ttft_chat_s'] * 1000:.0f} ({r['chat_prompt_tokens']} tok)",
             f"{r['ttft_s'] * 1000:.0f}", f"{r['prefill_tokens_per_s']:.0f}") for r in results]
    rows += [(g["artifact"], "", f"{g['decode_tokens_per_s']['median']:.1f}", "", "", "") for g in genai]
    emit({"benchmark": "decode", "results": results, "genai": genai, "threads": a.threads, "machine": machine()},
         rows,
         ("artifact", "size MB", "decode tok/s", "TTFT chat ms", "TTFT 512 ms", "prefill tok/s"), a.json)


if __name__ == "__main__":
    main()
