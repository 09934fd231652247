"""The fine-tuning tests' synthetic task: questions whose answer is a fixed token mapping."""

from __future__ import annotations

import json
import random

MAP = {f"t{20 + i}": f"t{100 + (i * 7) % 40}" for i in range(12)}
TEMPLATE = "t5 {question} t6 {answer}"


def mapping_records(n: int, seed: int) -> list[dict]:
    """Questions with random filler before the mapped token; the answer is the mapping's."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q = rng.choice(sorted(MAP))
        filler = " ".join(f"t{rng.randrange(40, 90)}" for _ in range(rng.randrange(1, 4)))
        out.append({"question": f"{filler} {q}", "answer": MAP[q]})
    return out


def write_jsonl(path, recs):
    path.write_text("\n".join(json.dumps(r) for r in recs))
    return path
