"""Grammar engines for structured output, side by side: the cost of one token's allowed-token mask
(compute the mask, then advance by the chosen token) over a JSON-schema-constrained answer, at the
vocabulary of a real model (SmolLM2: 49,152 tokens), plus the time to compile the schema.

    python benchmarks/grammar.py --tokenizer models/smol-int4      # llguidance and outlines-core here;
                                                                  # xgrammar in the pytorch peer venv

xgrammar needs torch and transformers, so it runs in benchmarks/peers/.venvs/pytorch when that exists
(`pip install --no-deps xgrammar apache-tvm-ffi` there). Prints JSON, then a table."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"}, "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                    "required": ["street", "city"], "additionalProperties": False},
        "status": {"enum": ["active", "inactive", "pending"]},
        "score": {"type": "number"},
    },
    "required": ["name", "age", "email", "tags", "address", "status", "score"],
    "additionalProperties": False,
}
ANSWER = {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org",
          "tags": ["mathematics", "computing", "poetry of science"],
          "address": {"street": "12 St James's Square", "city": "London"}, "status": "active", "score": 98.25}
ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / "benchmarks/peers/.venvs/pytorch/bin/python"


def _vocab_size(folder: Path) -> int:
    return json.loads((folder / "config.json").read_text())["vocab_size"]


def _ids(folder: Path) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json")).encode(json.dumps(ANSWER),
                                                                       add_special_tokens=False).ids


def run_llguidance(folder: Path, ids: list[int]) -> dict:
    import llguidance
    import numpy as np
    from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

    n_vocab = _vocab_size(folder)
    t0 = time.perf_counter()
    tok = llguidance.LLTokenizer((folder / "tokenizer.json").read_text(), n_vocab=n_vocab)
    t1 = time.perf_counter()
    m = llguidance.LLMatcher(tok, llguidance.LLMatcher.grammar_from_json_schema(SCHEMA))
    t2 = time.perf_counter()
    mask = allocate_token_bitmask(1, n_vocab)
    per = []
    for t in ids:
        s = time.perf_counter()
        fill_next_token_bitmask(m, mask)
        assert (mask[0, t // 32] >> (t % 32)) & 1, "token not allowed"
        assert m.consume_token(t), m.get_error()
        per.append(time.perf_counter() - s)
    fill_next_token_bitmask(m, mask)
    del np
    return {"tokenizer_s": t1 - t0, "compile_s": t2 - t1, "per_token_us": per, "accepting": m.is_accepting()}


def run_outlines(folder: Path, ids: list[int]) -> dict:
    import numpy as np
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema
    from tokenizers import Tokenizer

    from pressa.genai.tokenizer import BYTE_OF_CHAR as byte_of  # byte-level BPE's stand-in characters

    n_vocab = _vocab_size(folder)
    t0 = time.perf_counter()
    tk = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eos = tk.token_to_id("<|endoftext|>") or 0
    vocab: dict[bytes, list[int]] = {}
    for token, i in tk.get_vocab().items():
        if i == eos:
            continue
        try:
            key = bytes(byte_of[c] for c in token)
        except KeyError:
            key = token.encode()
        vocab.setdefault(key, []).append(i)
    v = Vocabulary(eos, vocab)
    t1 = time.perf_counter()
    index = Index(build_regex_from_schema(json.dumps(SCHEMA)), v)
    guide = Guide(index)
    t2 = time.perf_counter()
    mask = np.zeros((n_vocab + 31) // 32, np.int32)
    per = []
    for t in ids:
        s = time.perf_counter()
        guide.write_mask_into(mask.ctypes.data, mask.size, 4)
        assert (mask[t // 32] >> (t % 32)) & 1, "token not allowed"
        guide.advance(t, return_tokens=False)
        per.append(time.perf_counter() - s)
    return {"tokenizer_s": t1 - t0, "compile_s": t2 - t1, "per_token_us": per, "accepting": guide.is_finished()}


def run_xgrammar(folder: Path, ids: list[int]) -> dict:
    import torch
    import xgrammar as xgr
    from transformers import PreTrainedTokenizerFast

    n_vocab = _vocab_size(folder)
    t0 = time.perf_counter()
    hf = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=n_vocab)
    compiler = xgr.GrammarCompiler(info)
    t1 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False)
    matcher = xgr.GrammarMatcher(compiled)
    t2 = time.perf_counter()
    mask = xgr.allocate_token_bitmask(1, n_vocab)
    per = []
    for t in ids:
        s = time.perf_counter()
        matcher.fill_next_token_bitmask(mask)
        assert (int(mask[0, t // 32]) >> (t % 32)) & 1, "token not allowed"
        assert matcher.accept_token(t)
        per.append(time.perf_counter() - s)
    del torch
    return {"tokenizer_s": t1 - t0, "compile_s": t2 - t1, "per_token_us": per, "accepting": matcher.is_terminated()
            or matcher.accept_token(info.stop_token_ids[0])}


ENGINES = {"llguidance": run_llguidance, "outlines-core": run_outlines, "xgrammar": run_xgrammar}


def one(engine: str, folder: Path) -> dict:
    ids = _ids(folder)
    runs = [ENGINES[engine](folder, ids) for _ in range(3)]
    per = [statistics.median(col) * 1e6 for col in zip(*(r["per_token_us"] for r in runs))]
    return {"engine": engine, "tokens": len(ids), "mean_us": statistics.mean(per), "median_us": statistics.median(per),
            "max_us": max(per), "compile_ms": min(r["compile_s"] for r in runs) * 1e3,
            "tokenizer_ms": min(r["tokenizer_s"] for r in runs) * 1e3, "accepting": runs[0]["accepting"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=str(ROOT / "models/smol-int4"), help="an artifact folder (tokenizer.json)")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    folder = Path(a.tokenizer)
    if a.one:
        print(json.dumps(one(a.one, folder)))
        return
    results = []
    for engine in a.engines.split(","):
        python = sys.executable
        if engine == "xgrammar" and PEER.exists():
            python = str(PEER)
        got = subprocess.run([python, __file__, "--tokenizer", str(folder), "--one", engine], capture_output=True,
                             text=True)
        if got.returncode:
            results.append({"engine": engine, "error": got.stderr.strip().splitlines()[-1]})
        else:
            results.append(json.loads(got.stdout.strip().splitlines()[-1]))
    print(json.dumps(results, indent=1))
    print(f"\n{'engine':<14} {'tokens':>6} {'mean us':>9} {'median us':>10} {'max us':>9} {'compile ms':>11}")
    for r in results:
        if "error" in r:
            print(f"{r['engine']:<14} error: {r['error']}")
        else:
            print(f"{r['engine']:<14} {r['tokens']:>6} {r['mean_us']:>9.1f} {r['median_us']:>10.1f} "
                  f"{r['max_us']:>9.1f} {r['compile_ms']:>11.1f}")


if __name__ == "__main__":
    main()
