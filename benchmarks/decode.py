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
from _common import ROOT, emit, machine, median_spread  # noqa: E402

CHAT_QUESTION = "What is machine learning? Explain it in simple terms for a beginner."
WIKI = ROOT.parent / "shared" / "data" / "wikitext2-valid.txt"


def measure(folder: str, runs: int, threads: int | None, new_tokens: int = 128) -> dict:
    import pressa
    from pressa.genai.sampling import SamplingConfig

    m = pressa.load(folder, threads=threads)
    chat_ids = m.encode_prompt(CHAT_QUESTION, chat=m.has_chat_template)
    text = WIKI.read_text()[:40000] if WIKI.is_file() else "The quick brown fox jumps over the lazy dog. " * 200
    long_ids = m.tokenizer.encode(text, add_special_tokens=False)[:512]

    def ttft(ids):
        t0 = time.perf_counter()
        gen = m.generate_ids([ids], SamplingConfig(max_new_tokens=1, ignore_eos=True))
        next(gen)
        dt = time.perf_counter() - t0
        gen.close()
        return dt

    def decode():
        stamps = []
        for _ in m.generate_ids([chat_ids], SamplingConfig(max_new_tokens=new_tokens, ignore_eos=True)):
            stamps.append(time.perf_counter())
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    for f in (lambda: ttft(chat_ids), lambda: ttft(long_ids), decode):   # warm-up
        f()
    res = {
        "artifact": folder,
        "decode_tokens_per_s": median_spread([decode() for _ in range(runs)]),
        "ttft_chat_s": median_spread([ttft(chat_ids) for _ in range(runs)]),
        "ttft_512_s": median_spread([ttft(long_ids) for _ in range(runs)]),
        "chat_prompt_tokens": len(chat_ids),
        "long_prompt_tokens": len(long_ids),
        "size_mb": round(sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file()) / 1e6, 1),
    }
    res["prefill_tokens_per_s"] = len(long_ids) / res["ttft_512_s"]["median"]
    return res


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
            "decode_tokens_per_s": median_spread([once() for _ in range(runs)])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--genai", action="store_true", help="also time onnxruntime-genai on the same folders")
    a = ap.parse_args()
    results = [measure(f, a.runs, a.threads) for f in a.artifacts]
    genai = [measure_genai(f, a.runs) for f in a.artifacts] if a.genai else []
    rows = [(r["artifact"], f"{r['size_mb']:.1f}", f"{r['decode_tokens_per_s']['median']:.1f}",
             f"{r['ttft_chat_s']['median'] * 1000:.0f} ({r['chat_prompt_tokens']} tok)",
             f"{r['ttft_512_s']['median'] * 1000:.0f}", f"{r['prefill_tokens_per_s']:.0f}") for r in results]
    rows += [(g["artifact"], "", f"{g['decode_tokens_per_s']['median']:.1f}", "", "", "") for g in genai]
    emit({"benchmark": "decode", "results": results, "genai": genai, "threads": a.threads, "machine": machine()},
         rows,
         ("artifact", "size MB", "decode tok/s", "TTFT chat ms", "TTFT 512 ms", "prefill tok/s"), a.json)


if __name__ == "__main__":
    main()
