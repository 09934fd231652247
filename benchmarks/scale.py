"""Builds of real model shapes side by side: wall time and peak RSS of `pressa auto-opt` (int4 RTN, int8, GPTQ,
AWQ) and of Olive's `auto-opt` (its own venv, as benchmarks/peers installs it), then each int4 artifact's load
time, RSS, decode tokens/s and TTFT-512 against its memory-bandwidth bound.

    python benchmarks/scale.py qwen2.5-0.5b qwen2.5-1.5b [--builds int4,int8,gptq,awq,olive] [--syn DIR] [--json]

The checkpoints come from benchmarks/synthetic.py (written into --syn when missing): random weights at the real
scale, so every figure here is time and memory only, never accuracy. Calibrated builds read 64 windows of 256
tokens of the shared WikiText-2 file. The bandwidth bound is the bytes a decode step reads (the artifact's
weights, less an untied embedding of which it gathers one row) at this machine's memory bandwidth, measured in
the same run (`_common.memory_bandwidth`: a matrix-vector product over 1 GiB with every core; ~28 GB/s on the
2-core machine of benchmarks/README, not the 64 GB/s issue 16 inferred from an 8B decode that did not
reproduce). `--builds` also takes `low:MB` (an int4 budget build at MB, mostly 2-bit where small).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))
from run import DATA, size_mb, timed, venv  # noqa: E402
from synthetic import write_checkpoint  # noqa: E402

from _common import emit, machine, memory_bandwidth  # noqa: E402

PRESSA = {"int4": ["--precision", "int4"], "int8": ["--precision", "int8"],
          "gptq": ["--precision", "int4", "--algorithm", "gptq", "--calibration-data", str(DATA)],
          "awq": ["--precision", "int4", "--algorithm", "awq", "--calibration-data", str(DATA)]}


def build(tool: str, shape: Path, out: Path) -> dict:
    """One build under the clock: wall s, the peak RSS of its largest process, the artifact's size."""
    shutil.rmtree(out, ignore_errors=True)
    if tool == "olive":
        shutil.rmtree(Path.cwd() / ".olive-cache", ignore_errors=True)      # no reuse of an earlier run's output
        cmd = [str(venv("olive") / "bin" / "olive"), "auto-opt", "--model_name_or_path", str(shape), "--output_path",
               str(out), "--device", "cpu", "--provider", "CPUExecutionProvider", "--use_ort_genai", "--precision",
               "int4", "--use_model_builder", "--log_level", "3"]
    else:
        flags = ["--target-size", tool.split(":")[1]] if tool.startswith("low:") else PRESSA[tool]
        cmd = [sys.executable, "-m", "pressa", "auto-opt", "-m", str(shape), "-o", str(out), *flags]
    wall, rss, rc = timed(cmd, {"CI": "1"})
    if tool == "olive":
        shutil.rmtree(Path.cwd() / ".olive-cache", ignore_errors=True)      # its cached copy of the model (GBs)
        found = next(out.rglob("genai_config.json"), None)
        out = found.parent if found else out
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(rss), "size_mb": round(size_mb(out), 1), "rc": rc,
            "folder": str(out)}


def bytes_per_token(folder: Path) -> int:
    """The bytes a decode step reads: the model files, less an untied token embedding (a step gathers one row
    of it; a tied one is read whole as the lm_head)."""
    import onnx

    total = sum(f.stat().st_size for f in folder.glob("*.onnx*"))
    if json.loads((folder / "config.json").read_text()).get("tie_word_embeddings", False):
        return total
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    gathered = sum(int(next((e.value for e in t.external_data if e.key == "length"), 0)) or len(t.raw_data)
                   for t in model.graph.initializer if t.name.startswith("model.embed_tokens."))
    return total - gathered


def run_artifact(folder: Path, bandwidth: float) -> dict:
    """pressa benchmark in its own process: load s, RSS, decode tok/s, TTFT of a 512-token prompt."""
    res = subprocess.run([sys.executable, "-m", "pressa", "benchmark", str(folder), "--json", "--prompt-tokens", "512",
                          "--new-tokens", "64", "--runs", "3"], capture_output=True, text=True, check=True)
    r = json.loads(res.stdout)
    bound = bandwidth / bytes_per_token(folder)
    return {"load_s": round(r["load_s"], 2), "rss_mb": round(r["peak_rss_mb"]), "decode_tok_s": round(
        r["decode_tokens_per_s"], 1), "ttft_512_ms": round(r["ttft_s"] * 1000), "bound_tok_s": round(bound, 1),
            "of_bound": round(r["decode_tokens_per_s"] / bound, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shapes", nargs="+")
    ap.add_argument("--builds", default="int4,int8,gptq,awq,olive")
    ap.add_argument("--syn", type=Path, default=Path("synthetic"))
    ap.add_argument("--work", type=Path, default=Path("scale-work"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    results, rows = {}, []
    bandwidth = memory_bandwidth()
    print(f"[scale] memory bandwidth {bandwidth / 1e9:.1f} GB/s", file=sys.stderr, flush=True)
    for shape in a.shapes:
        ckpt = a.syn / shape
        if not (ckpt / "config.json").exists():
            write_checkpoint(shape, ckpt)
        for tool in a.builds.split(","):
            print(f"[scale] {shape}: {tool}", file=sys.stderr, flush=True)
            r = build(tool, ckpt, a.work / f"{shape}-{tool}")
            if (tool == "int4" or tool.startswith("low:")) and r["rc"] == 0:
                r["run"] = run_artifact(Path(r["folder"]), bandwidth)
            results[f"{shape} {tool}"] = r
            run = r.get("run", {})
            rows.append((shape, tool, r["wall_s"], r["peak_rss_mb"], r["size_mb"], *(run.get(k, "") for k in (
                "load_s", "rss_mb", "decode_tok_s", "ttft_512_ms", "bound_tok_s", "of_bound"))))
            shutil.rmtree(a.work / f"{shape}-{tool}", ignore_errors=True)
    emit({"benchmark": "scale", "results": results, "bandwidth_gb_s": round(bandwidth / 1e9, 1), "machine": machine()},
         rows,
         ("shape", "build", "wall s", "peak RSS MB", "size MB", "load s", "loaded RSS MB", "decode tok/s",
          "TTFT-512 ms", "bound tok/s", "of bound"), a.json)


if __name__ == "__main__":
    main()
