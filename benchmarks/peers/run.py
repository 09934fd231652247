"""Side-by-side benchmark of pressa against the tools users would pick instead, on this machine, in
one run, one tool after another (never in CI: it installs four environments and takes ~40 min).

    python benchmarks/peers/run.py [--tools pressa,olive,openvino,llamacpp,pytorch] [--runs 3]

Each peer gets its own virtual environment under benchmarks/peers/.venvs (installs as PEERS.md
describes); the bundled SmolLM2-135M-Instruct is converted with each tool's own one-command int4
path (GGUF Q4_0 for llama.cpp) from the same fp32 weights (the bundled GGUF dequantized), then
measured by measure.py inside that environment. Writes results.json, results.md and results.png
here, and prints the JSON and the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORK = HERE / ".work"
VENVS = HERE / ".venvs"
DATA = ROOT.parent / "shared" / "data" / "wikitext2-valid.txt"
TORCH = "torch==2.13.0"

INSTALL = {
    "pytorch": [[TORCH], ["transformers", "accelerate", "gguf", "tokenizers", "numpy", "matplotlib"]],
    "olive": [[TORCH], ["olive-ai[auto-opt]==0.13.*", "requests", "onnxruntime-genai==0.14.1", "tokenizers"]],
    "openvino": [[TORCH], ["openvino", "openvino-genai", "openvino-tokenizers", "nncf", "optimum-intel[openvino]",
                           "transformers<5.6", "tokenizers"], ["-", "torchvision"]],
    "llamacpp": [["llama-cpp-python", "numpy", "tokenizers"]],
}


def log(msg: str) -> None:
    print(f"[peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def venv(tool: str) -> Path:
    if tool.startswith("pressa"):
        return Path(sys.executable).parent.parent
    d = VENVS / tool
    stamp = d / ".installed"
    if stamp.exists():
        return d
    log(f"installing {tool} (its own venv)")
    subprocess.run([sys.executable, "-m", "venv", str(d)], check=True)
    pip = [str(d / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run(pip[:-1] + ["--upgrade", "pip", "-q"], check=True)
    for group in INSTALL[tool]:
        if group[0] == "-":
            subprocess.run([str(d / "bin" / "python"), "-m", "pip", "uninstall", "-y", "-q", *group[1:]])
        else:
            subprocess.run(pip + group, check=True)
    stamp.touch()
    return d


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float, int]:
    """(wall s, peak RSS MB of the command's process tree's largest member, return code)."""
    pid = os.fork()
    if pid == 0:
        os.execvpe(cmd[0], cmd, {**os.environ, **(env or {})})
    t0 = time.perf_counter()
    _, status, usage = os.wait4(pid, 0)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 1e6


def make_hf_folder(gguf: Path) -> Path:
    """The fp32 reference every tool starts from: the bundled GGUF dequantized by transformers."""
    out = WORK / "SmolLM2-135M-Instruct"
    if (out / "model.safetensors").exists() and "architectures" in json.loads((out / "config.json").read_text()):
        return out
    py = venv("pytorch") / "bin" / "python"
    # transformers will not save_pretrained a GGUF-loaded model: write its weights and config directly
    code = f"""
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
m = AutoModelForCausalLM.from_pretrained({str(gguf.parent)!r}, gguf_file={gguf.name!r}, dtype=torch.float32)
t = AutoTokenizer.from_pretrained({str(gguf.parent)!r}, gguf_file={gguf.name!r})
sd = {{k: v.contiguous() for k, v in m.state_dict().items()}}
if m.config.tie_word_embeddings:
    sd.pop("lm_head.weight", None)
out = {str(out)!r}
import os; os.makedirs(out, exist_ok=True)
save_file(sd, out + "/model.safetensors", metadata={{"format": "pt"}})
if hasattr(m.config, "quantization_config"):
    del m.config.quantization_config
m.config.architectures = [type(m).__name__]          # Olive's model builder reads it
m.config.save_pretrained(out)
m.generation_config.save_pretrained(out)
t.save_pretrained(out)
"""
    subprocess.run([str(py), "-c", code], check=True)
    return out


def convert(tool: str, hf: Path, gguf: Path) -> tuple[Path, dict]:
    out = WORK / f"{tool}-int4"
    shutil.rmtree(out, ignore_errors=True)
    bin_ = venv(tool) / "bin"
    if tool.startswith("pressa"):
        cmd = [str(bin_ / "pressa"), "auto-opt", "-m", str(hf), "-o", str(out), "--precision", "int4",
               "--log_level", "3"]
        if tool == "pressa-gptq":         # the calibrated path: 64 x 256 tokens of the same text
            cmd += ["--algorithm", "gptq", "--calibration-data", str(DATA)]
    elif tool == "olive":
        cmd = [str(bin_ / "olive"), "auto-opt", "--model_name_or_path", str(hf), "--output_path", str(out),
               "--device", "cpu", "--provider", "CPUExecutionProvider", "--use_ort_genai", "--precision", "int4",
               "--use_model_builder", "--log_level", "3"]
    elif tool == "openvino":
        cmd = [str(bin_ / "optimum-cli"), "export", "openvino", "--model", str(hf), "--task",
               "text-generation-with-past", "--weight-format", "int4", "--group-size-fallback", "adjust", str(out)]
    elif tool == "llamacpp":
        out = WORK / "llamacpp-q4_0.gguf"
        code = ("import llama_cpp, sys; p = llama_cpp.llama_model_quantize_default_params(); p.ftype = 2; "
                "p.allow_requantize = True; sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), "
                "sys.argv[2].encode(), p))")
        cmd = [str(bin_ / "python"), "-c", code, str(gguf), str(out)]
    else:                       # pytorch: no conversion, the fp32 folder itself
        return hf, {"convert_wall_s": None, "convert_peak_rss_mb": None}
    for cache in (Path.cwd() / ".olive-cache", WORK / ".olive-cache"):     # no reuse of an earlier run's output
        shutil.rmtree(cache, ignore_errors=True)
    wall, rss, rc = timed(cmd, {"CI": "1"})
    if rc != 0:
        raise RuntimeError(f"{tool} conversion failed (exit {rc})")
    if tool == "olive" and not (out / "genai_config.json").exists():
        found = next(out.rglob("genai_config.json"), None)
        out = found.parent if found else out
    return out, {"convert_wall_s": wall, "convert_peak_rss_mb": rss}


def measure(tool: str, model: Path, hf: Path, runs: int) -> dict:
    py = venv(tool) / "bin" / "python"
    env = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "2"}
    kind = {"pressa-openvino": "pressa_openvino", "pressa-auto": "pressa_auto"}.get(tool, tool)
    kind = "pressa" if kind.startswith("pressa-") else kind
    res = subprocess.run([str(py), str(HERE / "measure.py"), kind, str(model), str(hf), str(DATA), "--runs",
                          str(runs)],
                         capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = "| tool | decode tok/s | TTFT chat ms | TTFT 512 ms | size MB | PPL | convert s / peak RSS MB |"
    out = [head, "|" + "---|" * 7]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['tool']} | error: {r['error'][:80]} | | | | | |")
            continue
        conv = (f"{r['convert_wall_s']:.1f} / {r['convert_peak_rss_mb']:.0f}" if r.get("convert_wall_s") else "—")
        out.append(f"| {r['tool']} | {r['decode_tokens_per_s']:.1f} | {r['ttft_chat_s'] * 1000:.0f} | "
                   f"{r['ttft_512_s'] * 1000:.0f} | {r['size_mb']:.1f} | {r['perplexity']:.2f} | {conv} |")
    return "\n".join(out)


def chart(rows: list[dict]) -> None:
    ok = [r for r in rows if "error" not in r]
    code = ("import json, sys, matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt; "
            "rows = json.loads(sys.argv[1]); fig, ax = plt.subplots(figsize=(7, 5)); "
            "[ax.scatter(r['perplexity'], r['decode_tokens_per_s'], s=r['size_mb'] * 4, alpha=0.5) or "
            "ax.annotate(f\"{r['tool']} ({r['size_mb']:.0f} MB)\", (r['perplexity'], r['decode_tokens_per_s'])) "
            "for r in rows]; ax.set_xlabel('WikiText-2 perplexity (lower is better)'); "
            "ax.set_ylabel('decode tokens/s (higher is better)'); ax.set_title('SmolLM2-135M int4, 2 threads'); "
            "fig.savefig(sys.argv[2], dpi=120, bbox_inches='tight')")
    subprocess.run([str(venv("pytorch") / "bin" / "python"), "-c", code, json.dumps(ok), str(HERE / "results.png")])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tools", default="pressa,pressa-gptq,olive,openvino,llamacpp,pytorch")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--reuse", action="store_true", help="keep earlier results of tools that succeeded")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from pressa.sources.bundled import bundled_path

    WORK.mkdir(parents=True, exist_ok=True)
    tools = a.tools.split(",")
    for tool in tools:                 # installs first, so that the measurements run back to back
        try:
            venv(tool if tool in INSTALL or tool.startswith("pressa") else "pytorch")
        except subprocess.CalledProcessError as err:
            log(f"{tool}: install failed ({err})")
    venv("pytorch")
    gguf = bundled_path()
    hf = make_hf_folder(gguf)
    rows = []
    for tool in tools:
        cached = WORK / f"result-{tool}.json"
        if a.reuse and cached.exists():
            rows.append(json.loads(cached.read_text()))
            continue
        row: dict = {"tool": tool}
        try:
            log(f"{tool}: convert")
            model, conv = convert(tool, hf, gguf)
            row.update(conv)
            row["size_mb"] = size_mb(model)
            log(f"{tool}: measure")
            row.update({k: v for k, v in measure(tool, model, hf, a.runs).items() if k != "tool"})
            cached.write_text(json.dumps(row))
        except Exception as err:                       # one tool failing must not stop the others
            row["error"] = str(err)
            log(f"{tool}: {err}")
        rows.append(row)
    import platform

    result = {"date": time.strftime("%Y-%m-%d"), "machine": {"cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count()}, "threads": 2, "rows": rows}
    (HERE / "results.json").write_text(json.dumps(result, indent=2))
    (HERE / "results.md").write_text(table(rows) + "\n")
    try:
        chart(rows)
    except Exception as err:
        log(f"chart: {err}")
    print(json.dumps(result))
    print(table(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
