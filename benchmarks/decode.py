"""Decode speed and time to first token of pressa artifacts.

    python benchmarks/decode.py models/smol-int4 [more artifacts] [--runs 5] [--threads 2] [--json]

decode tokens/s: 128 new tokens, greedy, EOS ignored, timed from the first token to the last.
TTFT: prompt ids in, first token chosen (prefill of the whole prompt + sampling); for the chat
prompt (the model's template around a short question, ~41 tokens) and a 512-token WikiText prompt.
Medians over --runs after one warm-up. --concurrent N: also N sequences decoded together in one
engine batch (continuous batching's case), tokens/s summed over the sequences.
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


def measure_concurrent(folder: str, n: int, runs: int, threads: int | None, backend: str,
                       new_tokens: int = 64) -> dict:
    """n chat prompts generated together (one SlotBatch): generated tokens per second over the batch."""
    import statistics

    import pressa
    from pressa.genai.sampling import SamplingConfig

    m = pressa.load(folder, threads=threads, backend=backend, prefix_cache_mb=0)    # every run prefills
    prompts = [m.encode_prompt(f"{CHAT_QUESTION} ({i})") for i in range(n)]
    cfg = SamplingConfig(max_new_tokens=new_tokens, ignore_eos=True)

    def once():
        t0 = time.perf_counter()
        steps = list(m.generate_ids(prompts, cfg))
        return n * len(steps) / (time.perf_counter() - t0)

    once()
    return {"artifact": f"{folder} ({backend})", "sequences": n,
            "tokens_per_s": statistics.median([once() for _ in range(runs)])}


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
    ap.add_argument("--concurrent", type=int, default=0, help="also time N sequences decoded together")
    a = ap.parse_args()
    together = []
    if a.concurrent:
        together = [measure_concurrent(f, k, a.runs, a.threads, b) for b in a.backends.split(",")
                    for f in a.artifacts for k in sorted({1, a.concurrent})]
        for r in together:
            print(f"{r['artifact']}: {r['sequences']} sequences together, {r['tokens_per_s']:.1f} tok/s",
                  file=sys.stderr)
    results = [measure(f, a.runs, a.threads, backend=b) for b in a.backends.split(",") for f in a.artifacts]
    genai = [measure_genai(f, a.runs) for f in a.artifacts] if a.genai else []
    rows = [(r["artifact"], f"{r['size_mb']:.1f}", f"{r['decode_tokens_per_s']:.1f}",
             f"{r['ttft_chat_s'] * 1000:.0f} ({r['chat_prompt_tokens']} tok)",
             f"{r['ttft_s'] * 1000:.0f}", f"{r['prefill_tokens_per_s']:.0f}") for r in results]
    rows += [(g["artifact"], "", f"{g['decode_tokens_per_s']['median']:.1f}", "", "", "") for g in genai]
    emit({"benchmark": "decode", "results": results, "genai": genai, "concurrent": together, "threads": a.threads,
          "machine": machine()},
         rows,
         ("artifact", "size MB", "decode tok/s", "TTFT chat ms", "TTFT 512 ms", "prefill tok/s"), a.json)


if __name__ == "__main__":
    main()
