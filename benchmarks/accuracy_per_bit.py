"""Accuracy per bit: perplexity gap to fp32 against bits per weight, pressa's algorithms and byte budgets
next to llama.cpp's Q4_0, Q4_K_M and Q3_K_M (made by llama.cpp's own quantizer from the bundled GGUF)
and OpenVINO's int4 AWQ + scale estimation (optimum-intel with NNCF, the same calibration text), one
run on this machine. Never in CI: it uses the peer environments of benchmarks/peers (run.py installs
them) and takes ~40 min.

    python benchmarks/accuracy_per_bit.py [--only NAME,...] [--reuse]

Perplexity is the shared protocol (benchmarks/peers/measure.py: the first 32 windows of 512 tokens of
shared/data/wikitext2-valid.txt, no cache), each tool through its own runtime. Bits per weight are the
model files' bytes x 8 over the model's 134.5M parameters for every tool (pressa's also by `pressa
eval`'s weight count, which leaves out its rotary tables and file padding). Writes accuracy_per_bit.json
and accuracy_per_bit.png beside benchmarks/peers/results.*, prints the JSON and a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(HERE.parent))

from run import DATA, WORK, make_hf_folder, size_mb, venv  # noqa: E402

PARAMS = 134_515_008            # SmolLM2-135M (pressa eval's count; transformers' num_parameters agrees)
CALIB = ["--calibration-data", str(DATA)]
PRESSA = {                      # name -> auto-opt flags
    "pressa int4 RTN": [],
    "pressa int4 GPTQ": ["--algorithm", "gptq", *CALIB],
    "pressa int4 GPTQ, no act order": ["--algorithm", "gptq", "--no-act-order", *CALIB],
    "pressa int4 AWQ+GPTQ": ["--algorithm", "awq+gptq", *CALIB],
    "pressa int4 AWQ + scale estimation": ["--algorithm", "awq", "--scale-estimation", *CALIB],
    "pressa int4 RTN + scale estimation": ["--scale-estimation", *CALIB],
    "pressa int4 GPTQ + scale estimation": ["--algorithm", "gptq", "--scale-estimation", *CALIB],
    "pressa RTN+SE at Q4_K_M's size": ["--scale-estimation", "--target-size", "{Q4_K_M}", *CALIB],
    "pressa RTN+SE at Q3_K_M's size": ["--scale-estimation", "--target-size", "{Q3_K_M}", *CALIB],
    "pressa RTN+SE at Q4_0's size": ["--scale-estimation", "--target-size", "{Q4_0}", *CALIB],
    "pressa RTN+SE at 90 MB": ["--scale-estimation", "--target-size", "90", *CALIB],
    "pressa RTN+SE at 5.0 bits/weight": ["--scale-estimation", "--bits-per-weight", "5.0", *CALIB],
    "pressa RTN+SE at 4.5 bits/weight": ["--scale-estimation", "--bits-per-weight", "4.5", *CALIB],
    # a 4-bit tied embedding, calibrated as the lm_head (its scales refined, or GPTQ, on the final norm's H)
    "pressa int4 RTN+SE, 4-bit embedding": ["--scale-estimation", "--embedding-bits", "4", *CALIB],
    "pressa int4 GPTQ, 4-bit embedding": ["--algorithm", "gptq", "--embedding-bits", "4", *CALIB],
    "pressa RTN+SE e4 at Q4_0's size": ["--scale-estimation", "--embedding-bits", "4", "--target-size", "{Q4_0}",
                                        *CALIB],
    "pressa RTN+SE e4 at Q3_K_M's size": ["--scale-estimation", "--embedding-bits", "4", "--target-size",
                                          "{Q3_K_M}", *CALIB],
    "pressa RTN+SE e4 at 72 MB": ["--scale-estimation", "--embedding-bits", "4", "--target-size", "72", *CALIB],
}
LLAMA = {"llama.cpp Q4_0": 2, "llama.cpp Q4_K_M": 15, "llama.cpp Q3_K_M": 12}     # llama_ftype


def log(msg: str) -> None:
    print(f"[accuracy-per-bit {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_pressa(name: str, flags: list[str], hf: Path, sizes: dict[str, float]) -> Path:
    out = WORK / ("apb-" + name.replace(" ", "_").replace("'", "").replace("/", "-"))
    flags = [f.format(**{k.split()[-1]: f"{v:.3f}" for k, v in sizes.items()}) for f in flags]
    cmd = [sys.executable, "-m", "pressa", "auto-opt", "-m", str(hf), "-o", str(out), "--overwrite",
           "--log_level", "2", *flags]
    subprocess.run(cmd, check=True)
    return out


def build_llama(ftype: int, gguf: Path, name: str) -> Path:
    out = WORK / f"apb-{name.split()[-1]}.gguf"
    code = ("import llama_cpp, sys; p = llama_cpp.llama_model_quantize_default_params(); "
            f"p.ftype = {ftype}; p.allow_requantize = True; sys.exit(llama_cpp.llama_model_quantize("
            "sys.argv[1].encode(), sys.argv[2].encode(), p))")
    subprocess.run([str(venv("llamacpp") / "bin" / "python"), "-c", code, str(gguf), str(out)], check=True)
    return out


def build_openvino(hf: Path) -> Path:
    """optimum-intel's int4 weight compression with AWQ and scale estimation (NNCF underneath), group 32
    asymmetric like pressa's default, calibrated on 64 paragraphs of the same text."""
    out = WORK / "apb-openvino-awq-se"
    code = f"""
import sys
from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig
text = open({str(DATA)!r}, encoding="utf-8").read().split("\\n")
paras = [p.strip() for p in text if len(p.strip()) > 400][:64]
cfg = OVWeightQuantizationConfig(bits=4, sym=False, group_size=32, ratio=1.0, awq=True, scale_estimation=True,
                                 dataset=paras, num_samples=len(paras))
m = OVModelForCausalLM.from_pretrained({str(hf)!r}, export=True, quantization_config=cfg)
m.save_pretrained({str(out)!r})
from transformers import AutoTokenizer
AutoTokenizer.from_pretrained({str(hf)!r}).save_pretrained({str(out)!r})
"""
    subprocess.run([str(venv("openvino") / "bin" / "python"), "-c", code], check=True)
    return out


def perplexity(kind: str, model: Path, hf: Path) -> float:
    py = venv(kind) / "bin" / "python" if kind in ("llamacpp", "openvino") else Path(sys.executable)
    res = subprocess.run([str(py), str(HERE / "peers" / "measure.py"), kind, str(model), str(hf), str(DATA),
                          "--perplexity-only"], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])["perplexity"]


def model_files_mb(path: Path) -> float:
    if path.is_file():
        return size_mb(path)
    return sum(f.stat().st_size for f in path.iterdir() if f.name.startswith(("model.onnx", "openvino_model.bin",
                                                                                "openvino_model.xml"))) / 1e6


def row_for(name: str, kind: str, model: Path, hf: Path, fp32: float) -> dict:
    ppl = perplexity(kind, model, hf)
    mb = model_files_mb(model)
    row = {"name": name, "size_mb": mb, "bits_per_weight": mb * 8e6 / PARAMS, "perplexity": ppl, "gap": ppl - fp32}
    if kind == "pressa":
        from pressa.evaluate.footprint import weight_footprint

        row["pressa_eval_bits_per_weight"] = weight_footprint(model)["bits_per_weight"]
    return row


def table(rows: list[dict], fp32: float) -> str:
    out = [f"fp32 perplexity {fp32:.2f}", "", "| model | size MB | bits/weight | PPL | gap to fp32 |",
           "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r.get("bits_per_weight", 99)):
        if "error" in r:
            out.append(f"| {r['name']} | error: {r['error']} | | | |")
        else:
            out.append(f"| {r['name']} | {r['size_mb']:.1f} | {r['bits_per_weight']:.2f} | {r['perplexity']:.2f} | "
                       f"+{r['gap']:.2f} |")
    return "\n".join(out)


def series(name: str) -> str:
    """The plot's line a row belongs to: pressa's AWQ+GPTQ sizes, its other algorithms, each peer."""
    if name.startswith("pressa"):
        return ("pressa RTN + scale estimation (mixed precision at a size)" if "RTN+SE" in name or
                name.endswith("RTN + scale estimation") else "pressa, other algorithms")
    return name.split()[0]


def plot(rows: list[dict], path: Path, top: float = 4.0) -> None:
    """Gap against bits per weight; a gap above `top` is drawn at the top, its value in its label."""
    ok = [{**r, "series": series(r["name"]), "gap": min(r["gap"], top),
           "name": r["name"] + (f" (+{r['gap']:.1f}, off the scale)" if r["gap"] > top else "")}
          for r in rows if "error" not in r]
    code = ("import json, sys, matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt; "
            "rows = json.loads(sys.argv[1]); fig, ax = plt.subplots(figsize=(8.5, 5.5)); groups = {}; "
            "[groups.setdefault(r['series'], []).append(r) for r in rows]; "
            "[ax.plot(*zip(*sorted((r['bits_per_weight'], r['gap']) for r in g)), "
            "'o-' if k.startswith('pressa RTN') else ('x' if k.startswith('pressa') else 's'), label=k) "
            "for k, g in groups.items()]; "
            "[ax.annotate(r['name'].split(' ', 1)[1], (r['bits_per_weight'], r['gap']), fontsize=6) for r in rows]; "
            "ax.set_xlabel('bits per weight (model files over 134.5M parameters)'); "
            "ax.set_ylabel('perplexity gap to fp32 (lower is better)'); "
            f"ax.set_ylim(0, {top * 1.05}); "
            "ax.set_title('SmolLM2-135M, WikiText-2, shared protocol'); ax.legend(fontsize=8); ax.grid(alpha=0.3); "
            "fig.savefig(sys.argv[2], dpi=120, bbox_inches='tight')")
    subprocess.run([str(venv("pytorch") / "bin" / "python"), "-c", code, json.dumps(ok), str(path)], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated names (default: all)")
    ap.add_argument("--reuse", action="store_true", help="keep earlier rows that succeeded")
    a = ap.parse_args()
    from pressa.sources.bundled import bundled_path

    WORK.mkdir(parents=True, exist_ok=True)
    gguf = bundled_path()
    hf = make_hf_folder(gguf)
    cache = WORK / "accuracy_per_bit.rows.json"
    done = {r["name"]: r for r in json.loads(cache.read_text())} if a.reuse and cache.exists() else {}
    fp32 = done.get("fp32", {}).get("perplexity") or perplexity("pytorch", hf, hf)
    done["fp32"] = {"name": "fp32", "perplexity": fp32, "error": "reference"}
    only = set(filter(None, a.only.split(",")))
    jobs = [(n, "llamacpp", lambda n=n, f=f: build_llama(f, gguf, n)) for n, f in LLAMA.items()]
    jobs.append(("OpenVINO int4 AWQ + scale estimation", "openvino", lambda: build_openvino(hf)))
    sizes = {}
    for name, kind, build in jobs + [(n, "pressa", None) for n in PRESSA]:
        if (only and name not in only) or (name in done and "error" not in done[name]):
            if name in done and "size_mb" in done[name]:
                sizes[name] = done[name]["size_mb"]
            continue
        log(f"{name}: build")
        try:
            model = build() if build else build_pressa(name, PRESSA[name], hf, sizes)
            log(f"{name}: perplexity")
            done[name] = row_for(name, kind, model, hf, fp32)
            sizes[name] = done[name]["size_mb"]
        except Exception as err:                       # one variant failing must not stop the others
            done[name] = {"name": name, "error": str(err)[-300:]}
            log(f"{name}: {err}")
        cache.write_text(json.dumps(list(done.values())))
    rows = [r for n, r in done.items() if n in PRESSA or n in LLAMA or n.startswith("OpenVINO")]
    result = {"date": time.strftime("%Y-%m-%d"), "fp32_perplexity": fp32, "parameters": PARAMS, "rows": rows}
    (HERE / "peers" / "accuracy_per_bit.json").write_text(json.dumps(result, indent=2))
    try:
        plot(rows, HERE / "peers" / "accuracy_per_bit.png")
    except Exception as err:
        log(f"plot: {err}")
    print(json.dumps(result))
    print(table(rows, fp32), file=sys.stderr)


if __name__ == "__main__":
    main()
