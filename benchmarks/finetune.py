"""A real fine-tuning run: SmolLM2-135M-Instruct (the bundled model) with LoRA on the conversations of the PyPI
package chitchat-dataset (pip install chitchat-dataset), then int4 with the adapter merged (and as a run-time
adapter where the artifact has them).

    python benchmarks/finetune.py [--steps 100] [--conversations 2000] [--adapter DIR] [--shape DIR]
                                  [--adapter-energy 0.99,0.9] [--json]

--adapter DIR reuses an adapter `pressa finetune` wrote (its pressa.json has the training figures) instead of
training; --shape DIR (a checkpoint from benchmarks/synthetic.py) also measures decode with a random r=64
adapter on every linear over that model shape, and with one given the trained adapter's singular values
(random weights: speed only).

Reported: steps/s and peak RSS of the training, eval loss before/after on held-out conversations (the
assistant turns of the chat template), the loss curve (loss.png in the adapter), then each artifact's eval
loss on the same held-out turns (fp32 merged, int4 merged, int4 base, int4 run-time exact and at
--adapter-energy) and decode tokens/s of base vs adapter.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine  # noqa: E402

TURNS = 6


def chitchat_jsonl(path: Path, n: int) -> Path:
    """Conversations as chat `messages`: one speaker the user, the other the assistant."""
    import chitchat_dataset

    data = json.loads(Path(chitchat_dataset._PATH).read_text())
    out = []
    for conv in data.values():
        turns = [" ".join(u["text"] for u in turn) for turn in conv["messages"]][:TURNS]
        if len(turns) >= 2:
            out.append({"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
                                     for i, t in enumerate(turns)]})
        if len(out) == n:
            break
    path.write_text("\n".join(json.dumps(r) for r in out))
    return path


def artifact_eval_loss(folder: Path, exs, adapter: str | None = None) -> float:
    """Mean NLL per trained token of the artifact on the examples (pressa's ONNX Runtime decoder)."""
    import numpy as np

    from pressa.genai.decoder_session import DecoderSession

    s = DecoderSession(folder, all_logits=True)
    total, count = 0.0, 0
    for e in exs:
        _, logits = s.prefill([e.ids], capacity=len(e.ids) + 1, adapter=adapter)
        lg = logits[0, : len(e.ids) - 1].astype(np.float64)
        logp = lg - np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1, keepdims=True)) - lg.max(-1, keepdims=True)
        for t in range(1, len(e.ids)):
            if e.trained[t]:
                total -= logp[t - 1, e.ids[t]]
                count += 1
    return total / count


def decode_speeds(builds: dict[str, tuple[Path, str | None]], rounds: int = 7) -> tuple[dict, dict]:
    """Decode tokens/s of each (artifact, adapter), the builds run round by round in a shuffled order with a
    pause before each (a session run right after another's spinning threads is slowed, which a fixed
    order puts on the same build every round): the median of each, and each build's cost per token
    against the first build's as the median of the rounds' ratios (the machine is shared and drifts; only
    figures taken side by side compare)."""
    import random
    import statistics

    from pressa.evaluate.latency import benchmark

    seen: dict[str, list[float]] = {name: [] for name in builds}
    order = random.Random(0)
    for _ in range(rounds):
        for name in order.sample(list(builds), len(builds)):
            time.sleep(0.2)
            folder, adapter = builds[name]
            seen[name].append(benchmark(folder, prompt_tokens=128, new_tokens=64, runs=2,
                                        adapter=adapter)["decode_tokens_per_s"])
    first = seen[next(iter(builds))]
    cost = {name: round(statistics.median(f / v for f, v in zip(first, got)), 3) for name, got in seen.items()}
    return {name: round(statistics.median(v), 1) for name, v in seen.items()}, cost


def random_adapter_over(shape: Path, out: Path) -> Path:
    """A LoRA adapter as `finetune` makes by default (r=64, alpha 16, every linear) with random A and B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(shape), torch_dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=64, lora_alpha=16, target_modules="all-linear",
                                     init_lora_weights=False)).save_pretrained(str(out))
    return out


def with_spectrum_of(adapter: Path, trained: Path) -> None:
    """Give each update B A of `adapter` (random, over a synthetic shape) the singular values of the trained
    adapter's update of the same module in the layer at the same depth, with random singular vectors: the
    ranks --adapter-energy keeps, and so the decode cost, are then a trained adapter's (speed only)."""
    from safetensors.numpy import load_file, save_file

    from pressa.finetune.merge import lora_scale, read_adapter

    cfg, shape_pairs = read_adapter(adapter)
    tcfg, trained_pairs = read_adapter(trained)
    depth = {n: int(n.split(".layers.")[1].split(".")[0]) for n in {**shape_pairs, **trained_pairs}}
    layers, tlayers = max(depth[n] for n in shape_pairs) + 1, max(depth[n] for n in trained_pairs) + 1
    rng = np.random.default_rng(0)
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    for name, (a, b) in shape_pairs.items():
        twin = name.replace(f".layers.{depth[name]}.", f".layers.{depth[name] * tlayers // layers}.")
        ta, tb = trained_pairs[twin]
        sv = np.linalg.svd((tb * lora_scale(tcfg)).astype(np.float64) @ ta, compute_uv=False)[: a.shape[0]]
        u = np.linalg.qr(rng.standard_normal((b.shape[0], a.shape[0])))[0]
        v = np.linalg.qr(rng.standard_normal((a.shape[1], a.shape[0])))[0]
        module = "base_model.model." + name.removesuffix(".weight")
        tensors[f"{module}.lora_A.weight"] = np.ascontiguousarray(sv[:, None] * v.T, np.float32)   # C order:
        tensors[f"{module}.lora_B.weight"] = np.ascontiguousarray(u / lora_scale(cfg), np.float32)  # raw bytes
    save_file(tensors, str(adapter / "adapter_model.safetensors"))


def shape_decode(shape: Path, w: Path, trained: Path) -> tuple[dict, dict]:
    """Decode of an int4 base vs the same base with a run-time adapter over a synthetic model shape: a random
    r=64 adapter (flat spectrum: --adapter-energy keeps nearly every rank) and one with the trained
    adapter's spectrum (with_spectrum_of), each at the default energy."""
    runtime = {}
    for kind in ("random", "trained-spectrum"):
        adapter = random_adapter_over(shape, w / f"shape-adapter-{kind}")
        if kind != "random":
            with_spectrum_of(adapter, trained)
        pressa("auto-opt", "-m", str(shape), "--adapters", f"a={adapter}", "--precision", "int4", "-o",
               str(w / f"shape-{kind}"))
        runtime[f"int4-runtime ({kind} adapter)"] = (w / f"shape-{kind}", "a")
    pressa("auto-opt", "-m", str(shape), "--precision", "int4", "-o", str(w / "shape-base"))
    shutil.copytree(w / "shape-base", w / "shape-base-copy")          # the same graph again: the noise floor
    return decode_speeds({"int4-base": (w / "shape-base", None), "int4-base (a copy)": (w / "shape-base-copy", None),
                          **runtime})


def build_artifacts(w: Path, energies: list[str]) -> dict[str, Path]:
    """fp32 and int4 merged, int4 base, int4 run-time (the default --adapter-energy, and each energy given)
    builds of the adapter in w/adapter; returns the energy builds by their row name."""
    pressa("auto-opt", "--adapter_path", str(w / "adapter"), "--precision", "fp32", "-o", str(w / "fp32-merged"))
    pressa("auto-opt", "--adapter_path", str(w / "adapter"), "--precision", "int4", "-o", str(w / "int4-merged"))
    pressa("auto-opt", "--precision", "int4", "-o", str(w / "int4-base"))
    pressa("auto-opt", "--adapters", f"chat={w / 'adapter'}", "--precision", "int4", "-o", str(w / "int4-runtime"))
    out = {}
    for e in energies:
        out[f"int4-runtime at energy {float(e):g} (adapter chat)"] = w / f"int4-runtime-{e}"
        pressa("auto-opt", "--adapters", f"chat={w / 'adapter'}", "--precision", "int4", "--adapter-energy", e,
               "-o", str(w / f"int4-runtime-{e}"))
    return out


def pressa(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pressa", *args], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--conversations", type=int, default=2000)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--adapter", type=Path, help="reuse this adapter instead of training")
    ap.add_argument("--shape", type=Path, help="also: decode with a random adapter over this synthetic checkpoint")
    ap.add_argument("--adapter-energy", default="1.0",
                    help="also run-time builds keeping each update at the rank holding these shares of its energy "
                         "(comma-separated)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from pressa.finetune.data import DataOptions, examples, records
    from pressa.genai.tokenizer import TextTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp)
        data = chitchat_jsonl(w / "chitchat.jsonl", a.conversations)
        t0 = time.perf_counter()
        if a.adapter is None:
            pressa("finetune", "--data_files", str(data), "--use_chat_template", "--max_seq_len", str(a.max_seq_len),
                   "--max_steps", str(a.steps), "-o", str(w / "adapter"))
        else:
            shutil.copytree(a.adapter, w / "adapter")
        train_s = time.perf_counter() - t0
        ft = json.loads((w / "adapter" / "pressa.json").read_text())["finetune"]
        energies = build_artifacts(w, a.adapter_energy.split(","))
        opts = DataOptions(data_files=str(data), use_chat_template=True, max_seq_len=a.max_seq_len)
        tok = TextTokenizer(w / "int4-base")
        tok.eos_id = tok.token_id(tok.eos_token)
        held = examples(tok, records(opts)[1], opts, "eval")
        losses = {name: artifact_eval_loss(w / name, held) for name in ("fp32-merged", "int4-merged", "int4-base")}
        losses["int4-runtime (adapter chat)"] = artifact_eval_loss(w / "int4-runtime", held, "chat")
        losses.update({name: artifact_eval_loss(folder, held, "chat") for name, folder in energies.items()})
        speed, cost = decode_speeds({"int4-base": (w / "int4-base", None), "int4-merged": (w / "int4-merged", None),
                               "int4-runtime (no adapter)": (w / "int4-runtime", None),
                               "int4-runtime (adapter chat)": (w / "int4-runtime", "chat"),
                               **{name: (folder, "chat") for name, folder in energies.items()}})
        shape = shape_decode(a.shape, w, w / "adapter") if a.shape else None
        (Path.cwd() / "finetune-loss.png").write_bytes((w / "adapter" / "loss.png").read_bytes())
    result = {"benchmark": "finetune", "steps": ft["steps"], "steps_per_s": ft["steps_per_s"],
              "peak_rss_mb": ft["peak_rss_mb"], "train_wall_s": round(train_s, 1),
              "eval_loss_before": ft["eval_loss_before"], "eval_loss_after": ft["eval_loss_after"],
              "artifact_eval_loss": losses, "decode_tokens_per_s": speed, "held_out": len(held),
              "adapter_decode_cost": cost["int4-runtime (adapter chat)"],
              "adapter_decode_cost_at_energy": {name: cost[name] for name in energies},
              "shape": None if shape is None else {"model": str(a.shape), "decode_tokens_per_s": shape[0],
                                                   "adapter_decode_cost": shape[1]},
              "machine": machine()}
    rows = [("torch fp32, before", f"{ft['eval_loss_before']:.4f}", ""),
            ("torch fp32, after (LoRA)", f"{ft['eval_loss_after']:.4f}", ""),
            *[(f"pressa {n}", f"{v:.4f}", f"{speed[n]:.1f}" if n in speed else "") for n, v in losses.items()],
            ("pressa int4-runtime (no adapter)", "", f"{speed['int4-runtime (no adapter)']:.1f}")]
    emit(result, rows, ("model", "eval loss (held-out assistant turns)", "decode tok/s"), a.json)
    print(f"training: {ft['steps']} steps, {ft['steps_per_s']} steps/s, peak RSS {ft['peak_rss_mb']} MB; "
          "loss curve in finetune-loss.png", file=sys.stderr)
    print(f"decode with the adapter active costs {result['adapter_decode_cost']}x the base per token "
          f"({result['adapter_decode_cost_at_energy']})"
          + (f"; over {a.shape.name}: {result['shape']['adapter_decode_cost']}" if shape else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
