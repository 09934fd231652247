"""What the general path (a causal LM outside the architecture table, exported through torch) costs
against a table row, on the same model: build time, size, decode tokens/s, time to first token.

    python benchmarks/general_path.py [--precision int4] [--layers 30] [--runs 3] [--json]

The model is SmolLM2-135M's shape (a llama row) with random weights and the bundled SmolLM2 tokenizer:
speed only, no accuracy. Both artifacts come from the same Hugging Face folder; the general one is built
by calling the general path directly (auto-opt takes it only for families outside the table).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import measure  # noqa: E402

from _common import emit, machine  # noqa: E402

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, rms_norm_eps=1e-5,
               rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)


def hf_folder(folder: Path, layers: int) -> Path:
    """A llama of SmolLM2's shape with random weights, with the bundled model's tokenizer files."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from pressa.sources import open_source

    cfg = AutoConfig.for_model("llama", **{**SMOLLM2, "num_hidden_layers": layers})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    for name, data in open_source(None).tokenizer_files.items():
        (folder / name).write_bytes(data)
    return folder


def build_both(hf: Path, work: Path, precision: str) -> dict[str, tuple[Path, float]]:
    from pressa.capture.build_options import BuildOptions
    from pressa.capture.general import build_general_into
    from pressa.capture.llm import build_llm
    from pressa.sources import open_source

    out = {}
    t0 = time.perf_counter()
    build_llm(str(hf), work / "table", BuildOptions(precision=precision))
    out["table row (llama)"] = (work / "table", time.perf_counter() - t0)
    (work / "general").mkdir()
    t0 = time.perf_counter()
    build_general_into(open_source(str(hf)), work / "general", BuildOptions(precision=precision), "cpu",
                       "benchmark", lambda s: print(s, file=sys.stderr))
    out["general path"] = (work / "general", time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", default="int4", choices=["int4", "int8", "fp32"])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        built = build_both(hf_folder(work / "hf", a.layers), work, a.precision)
        results = []
        for label, (folder, seconds) in built.items():
            r = measure(str(folder), a.runs, a.threads, new_tokens=64)
            results.append({**r, "path": label, "build_s": seconds})
    rows = [(r["path"], f"{r['build_s']:.1f}", f"{r['size_mb']:.1f}", f"{r['decode_tokens_per_s']:.1f}",
             f"{r['ttft_chat_s'] * 1000:.0f}", f"{r['ttft_s'] * 1000:.0f}") for r in results]
    emit({"benchmark": "general_path", "precision": a.precision, "layers": a.layers, "results": results,
          "machine": machine()}, rows,
         ("path", "build s", "size MB", "decode tok/s", "TTFT chat ms", "TTFT 512 ms"), a.json)


if __name__ == "__main__":
    main()
