"""Every CLI command against a table of bad inputs: missing, empty, truncated, corrupt, wrong kind,
non-UTF-8, read-only destination, an output over an input, out-of-range options. Each must exit 2
with one line on stderr and no traceback, leave every input byte-for-byte as it was, write no
partial output, and leave nothing in the temporary folder. The table is README's Errors section."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

NOT_UTF8 = b"caf\xe9 au lait, cr\xe8me br\xfbl\xe9e and more words to calibrate on\n" * 20
READ_ONLY = "/proc/pressa-test/out"          # no one may create entries in /proc, root included

WORKFLOW = {"input_model": {"type": "OnnxModel", "model_path": "onnx"},
            "passes": {"q": {"type": "OnnxDynamicQuantization"}}, "output_dir": "wf-out",
            "engine": {"cache_dir": "wf-cache"}}


def _config(**changes) -> str:
    cfg = json.loads(json.dumps(WORKFLOW))
    for path, value in changes.items():
        node = cfg
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return json.dumps(cfg)


def _tiny_onnx(folder: Path) -> None:
    """A MatMul graph with its weights in model.onnx.data."""
    from onnx import TensorProto, helper, numpy_helper

    from pressa.graph.onnx_io import save_model

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])], [w])
    folder.mkdir()
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder)


@pytest.fixture(scope="module")
def lab(tiny_artifact, tiny_dir, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lab")
    shutil.copytree(tiny_artifact("llama"), d / "llm")
    shutil.copytree(tiny_dir("llama"), d / "hf")
    _tiny_onnx(d / "onnx")
    (d / "parent").mkdir()
    shutil.copytree(d / "onnx", d / "parent" / "sub")
    shutil.copytree(d / "llm", d / "bad-genai")
    (d / "bad-genai" / "genai_config.json").write_text('{"model": {"decoder": ')
    shutil.copytree(d / "llm", d / "bad-tok")
    (d / "bad-tok" / "tokenizer.json").write_text("not a tokenizer")
    (d / "bad-onnx").mkdir()
    (d / "bad-onnx" / "model.onnx").write_bytes((d / "onnx" / "model.onnx").read_bytes()[:40])
    (d / "empty").mkdir()
    shutil.copytree(d / "hf", d / "trunc-hf")
    st = d / "trunc-hf" / "model.safetensors"
    st.write_bytes(st.read_bytes()[:3000])
    (d / "with-gguf").mkdir()
    (d / "with-gguf" / "m.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(64))
    (d / "latin1.txt").write_bytes(NOT_UTF8)
    (d / "text.txt").write_text("plain words for a prompt file\n" * 20)
    (d / "latin1.json").write_bytes(b'{"output_dir": "caf\xe9"}')
    (d / "broken.json").write_text('{"input_model": ')
    for name, cfg in {"empty-values": _config(**{"passes.q.per_channel": {"values": []}}),
                      "bad-range": _config(**{"passes.q": {"type": "OnnxMatMul4Quantizer",
                                                            "block_size": {"range": [32, 16, 0]}}}),
                      "no-model": _config(**{"input_model.model_path": "/nonexistent/model.onnx"}),
                      "out-is-cache": _config(output_dir="wf-cache"),
                      "out-is-input": _config(output_dir="onnx"),
                      "cache-read-only": _config(**{"engine.cache_dir": READ_ONLY}),
                      "out-read-only": _config(output_dir=READ_ONLY),
                      "typo": _config(**{"passes.q.per_chanel": True})}.items():
        (d / f"{name}.json").write_text(cfg)
    (d / "dup.yaml").write_text("models:\n  - {name: a, path: llm}\n  - {name: a, path: onnx}\n")
    (d / "none.yaml").write_text("models: []\n")
    (d / "typo.yaml").write_text("models:\n  - {name: a, path: llm, max_concurency: 2}\n")
    return d


# (id, arguments ({lab} = the folder above; bytes pass as they are), a fragment of the one line, stdin)
CASES = [
    # the CLI framework's own checks
    ("no-such-command", ["nonexistent"], "No such command", None),
    ("missing-argument", ["generate"], "Missing argument", None),
    ("unknown-option", ["generate", "{lab}/llm", "hi", "--frobnicate"], "No such option", None),
    ("ratio-out-of-range", ["auto-opt", "-m", "{lab}/hf", "-o", "{lab}/o", "--ratio", "2"], "--ratio", None),
    ("log-level-out-of-range", ["auto-opt", "--log_level", "9"], "--log_level", None),
    ("negative-new-tokens", ["generate", "{lab}/llm", "hi", "--max-new-tokens", "-1"], "--max-new-tokens", None),
    ("zero-threads", ["generate", "{lab}/llm", "hi", "--threads", "0"], "--threads", None),
    ("negative-temperature", ["generate", "{lab}/llm", "hi", "--temperature", "-1"], "--temperature", None),
    ("port-zero", ["serve", "--port", "0"], "--port", None),
    # auto-opt
    ("auto-opt-missing-model", ["auto-opt", "-m", "{lab}/nope", "-o", "{lab}/o"], "no such file", None),
    ("auto-opt-truncated-safetensors", ["auto-opt", "-m", "{lab}/trunc-hf", "-o", "{lab}/o", "--precision",
                                        "fp32"], "re-download", None),
    ("auto-opt-size-below-smallest", ["auto-opt", "-m", "{lab}/hf", "-o", "{lab}/o", "--target-size", "0.01"],
     "smallest mixed build", None),
    ("auto-opt-size-and-ratio", ["auto-opt", "-m", "{lab}/hf", "-o", "{lab}/o", "--target-size", "5", "--ratio",
                                 "0.5"], "one of", None),
    ("auto-opt-scale-estimation-no-data", ["auto-opt", "-m", "{lab}/hf", "-o", "{lab}/o", "--scale-estimation"],
     "--calibration-data", None),
    ("auto-opt-scale-estimation-gptq", ["auto-opt", "-m", "{lab}/hf", "-o", "{lab}/o", "--scale-estimation",
                                        "--algorithm", "gptq", "--no-act-order"], "needs act_order", None),
    ("auto-opt-device-tpu", ["auto-opt", "-m", "{lab}/hf", "-o", "{lab}/o", "--device", "tpu"], "--device", None),
    ("auto-opt-group-size", ["auto-opt", "-m", "{lab}/hf", "-o", "{lab}/o", "--group-size", "48"], "group size",
     None),
    ("auto-opt-output-is-input", ["auto-opt", "-m", "{lab}/hf", "-o", "{lab}/hf", "--overwrite"], "is the input",
     None),
    ("auto-opt-output-holds-gguf", ["auto-opt", "-m", "{lab}/with-gguf/m.gguf", "-o", "{lab}/with-gguf",
                                    "--overwrite"], "contains the input", None),
    ("auto-opt-output-read-only", ["auto-opt", "-m", "{lab}/hf", "-o", READ_ONLY], "cannot write", None),
    ("auto-opt-calibration-not-utf8", ["auto-opt", "-m", "{lab}/hf", "-o", "{lab}/o", "--algorithm", "gptq",
                                       "--calibration-data", "{lab}/latin1.txt"], "not UTF-8", None),
    ("auto-opt-calibration-missing", ["auto-opt", "-m", "{lab}/hf", "-o", "{lab}/o", "--algorithm", "gptq",
                                      "--calibration-data", "{lab}/none.txt"], "no such file", None),
    # capture
    ("capture-output-is-input", ["capture", "-m", "{lab}/hf", "-o", "{lab}/hf", "--overwrite"], "is the input", None),
    ("capture-truncated-safetensors", ["capture", "-m", "{lab}/trunc-hf", "-o", "{lab}/o"], "re-download", None),
    ("capture-output-read-only", ["capture", "-m", "{lab}/hf", "-o", READ_ONLY], "cannot write", None),
    # optimize, quantize, convert-fp16
    ("optimize-llm-artifact", ["optimize", "{lab}/llm", "-o", "{lab}/o"], "auto-opt", None),
    ("optimize-truncated-onnx", ["optimize", "{lab}/bad-onnx", "-o", "{lab}/o"], "not a readable ONNX", None),
    ("optimize-empty-folder", ["optimize", "{lab}/empty", "-o", "{lab}/o"], "not a model", None),
    ("optimize-output-read-only", ["optimize", "{lab}/onnx", "-o", READ_ONLY], "cannot write", None),
    ("quantize-llm-artifact", ["quantize", "{lab}/llm", "-o", "{lab}/o", "--mode", "dynamic"], "auto-opt", None),
    ("quantize-output-holds-input", ["quantize", "{lab}/parent/sub", "-o", "{lab}/parent", "--mode", "dynamic",
                                     "--overwrite"], "contains the input", None),
    ("quantize-output-inside-input", ["quantize", "{lab}/onnx", "-o", "{lab}/onnx/q", "--mode", "dynamic"],
     "lies inside the input", None),
    ("quantize-bad-mode", ["quantize", "{lab}/onnx", "-o", "{lab}/o", "--mode", "int3"], "--mode", None),
    ("quantize-max-drop-dynamic", ["quantize", "{lab}/onnx", "-o", "{lab}/o", "--mode", "dynamic", "--max-drop",
                                   "0.1"], "--max-drop", None),
    ("quantize-output-read-only", ["quantize", "{lab}/onnx", "-o", READ_ONLY, "--mode", "dynamic"], "cannot write",
     None),
    ("convert-fp16-llm-artifact", ["convert-fp16", "{lab}/llm", "-o", "{lab}/o"], "auto-opt", None),
    ("convert-fp16-output-read-only", ["convert-fp16", "{lab}/onnx", "-o", READ_ONLY], "cannot write", None),
    ("convert-fp16-output-is-input", ["convert-fp16", "{lab}/onnx", "-o", "{lab}/onnx", "--overwrite"],
     "is the input", None),
    # generate, chat, benchmark, eval, embed, compare
    ("generate-encoder", ["generate", "{lab}/onnx", "hi"], "not a text generator", None),
    ("generate-missing", ["generate", "{lab}/nope", "hi"], "genai_config.json", None),
    ("generate-genai-config-not-json", ["generate", "{lab}/bad-genai", "hi"], "genai_config.json", None),
    ("generate-tokenizer-corrupt", ["generate", "{lab}/bad-tok", "hi"], "tokenizer.json", None),
    ("generate-prompt-not-utf8", ["generate", "{lab}/llm", b"caf\xe9"], "UTF-8", None),
    ("generate-stdin-not-utf8", ["generate", "{lab}/llm", "-"], "UTF-8", NOT_UTF8),
    ("generate-empty-stop", ["generate", "{lab}/llm", "hi", "--stop", ""], "stop", None),
    ("chat-encoder", ["chat", "{lab}/onnx"], "not a text generator", b"hi\n"),
    ("chat-genai-config-not-json", ["chat", "{lab}/bad-genai"], "genai_config.json", b"hi\n"),
    ("chat-new-tokens-fill-context", ["chat", "{lab}/llm", "--max-new-tokens", "5000"], "context", b"hi\n"),
    ("benchmark-missing", ["benchmark", "{lab}/nope"], "nope", None),
    ("eval-llm-on-openvino", ["eval", "{lab}/llm", "--perplexity", "{lab}/text.txt", "--backend", "openvino"],
     "onnxruntime", None),
    ("embed-unknown-backend", ["embed", "{lab}/onnx", "hi", "--backend", "tensorrt"], "--backend", None),
    ("embed-bad-streams", ["embed", "{lab}/onnx", "hi", "--backend", "openvino", "--streams", "many"], "streams",
     None),
    ("embed-no-such-device", ["embed", "{lab}/onnx", "hi", "--backend", "openvino", "--device", "NPU"],
     "available: CPU", None),
    ("benchmark-genai-config-not-json", ["benchmark", "{lab}/bad-genai"], "genai_config.json", None),
    ("eval-encoder", ["eval", "{lab}/onnx", "--perplexity", "{lab}/text.txt"], "not a text generator", None),
    ("eval-perplexity-not-utf8", ["eval", "{lab}/llm", "--perplexity", "{lab}/latin1.txt"], "not UTF-8", None),
    ("eval-nothing-to-do", ["eval", "{lab}/llm"], "--perplexity", None),
    ("embed-llm-artifact", ["embed", "{lab}/llm", "hi"], "auto-opt", None),
    ("embed-text-not-utf8", ["embed", "{lab}/onnx", b"caf\xe9"], "UTF-8", None),
    ("compare-missing", ["compare", "{lab}/nope", "{lab}/onnx"], "no such file", None),
    # run
    ("run-config-not-utf8", ["run", "--config", "{lab}/latin1.json"], "not UTF-8", None),
    ("run-config-not-json", ["run", "--config", "{lab}/broken.json"], "not valid JSON", None),
    ("run-config-missing", ["run", "--config", "{lab}/none.json"], "no such config", None),
    ("run-empty-search-values", ["run", "--config", "{lab}/empty-values.json"], "values", None),
    ("run-empty-search-range", ["run", "--config", "{lab}/bad-range.json"], "range", None),
    ("run-missing-model", ["run", "--config", "{lab}/no-model.json"], "no such file", None),
    ("run-missing-model-dry-run", ["run", "--config", "{lab}/no-model.json", "--dry-run"], "no such file", None),
    ("run-output-is-cache", ["run", "--config", "{lab}/out-is-cache.json", "--overwrite"], "overlap", None),
    ("run-output-is-input", ["run", "--config", "{lab}/out-is-input.json", "--overwrite"], "is the input", None),
    ("run-cache-read-only", ["run", "--config", "{lab}/cache-read-only.json"], "cache_dir", None),
    ("run-output-read-only", ["run", "--config", "{lab}/out-read-only.json"], "output_dir", None),
    ("run-unknown-key", ["run", "--config", "{lab}/typo.json"], "did you mean per_channel", None),
    # serve (each fails before any model loads)
    ("serve-replicas-without-ray", ["serve", "--model_name", "a", "--model_path", "{lab}/onnx", "--replicas", "2"],
     "--executor ray", None),
    ("serve-bad-autoscale", ["serve", "--model_name", "a", "--model_path", "{lab}/onnx", "--executor", "ray",
                             "--autoscale", "four"], "MIN:MAX", None),
    ("serve-bad-executor", ["serve", "--model_name", "a", "--model_path", "{lab}/onnx", "--executor", "spark"],
     "local or ray", None),
    ("run-bad-executor", ["run", "--config", "{lab}/typo.json", "--executor", "spark"], "local or ray", None),
    ("run-ray-address-without-ray", ["run", "--config", "{lab}/no-model.json", "--ray-address", "ray://x:1"],
     "no such file", None),
    ("serve-duplicate-names", ["serve", "--config", "{lab}/dup.yaml"], "twice", None),
    ("serve-no-models", ["serve", "--config", "{lab}/none.yaml"], "non-empty", None),
    ("serve-unknown-key", ["serve", "--config", "{lab}/typo.yaml"], "did you mean max_concurrency", None),
    ("serve-genai-config-not-json", ["serve", "--model_name", "a", "--model_path", "{lab}/bad-genai"],
     "genai_config.json", None),
    ("serve-missing-path", ["serve", "--model_name", "a", "--model_path", "{lab}/nope"], "does not exist", None),
]


def snapshot(root: Path) -> dict:
    """Every file and folder below `root`: size, modification time and mode."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns, st.st_mode)
    return out


def run_pressa(args: list, tmp: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "TMPDIR": str(tmp)}
    return subprocess.run([sys.executable, "-m", "pressa", *args], input=stdin or b"", capture_output=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_harms_nothing(lab, tmp_path, case):
    _, args, fragment, stdin = case
    args = [a if isinstance(a, bytes) else a.replace("{lab}", str(lab)) for a in args]
    before = snapshot(lab)
    res = run_pressa(args, tmp_path, stdin)
    err = res.stderr.decode("utf-8", "replace")
    lines = [line for line in err.splitlines() if line.strip()]
    assert res.returncode == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert snapshot(lab) == before, "an input or the lab folder changed"
    assert list(tmp_path.iterdir()) == [], "temporary files were left behind"


def test_port_in_use_is_one_line(lab, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        res = run_pressa(["serve", "--model_name", "a", "--model_path", str(lab / "llm"), "--port",
                          str(s.getsockname()[1])], tmp_path)
    err = res.stderr.decode()
    assert res.returncode == 2 and len(err.strip().splitlines()) == 1 and "another --port" in err, err


def test_version_and_help_exit_0(tmp_path):
    import pressa

    res = run_pressa(["--version"], tmp_path)
    assert res.returncode == 0 and res.stdout.decode().strip() == f"pressa {pressa.__version__}"
    res = run_pressa([], tmp_path)
    assert res.returncode == 0 and "auto-opt" in res.stdout.decode()


def test_a_bug_is_one_line_exit_1_and_log_level_0_shows_its_traceback(capfd):
    """An unexpected exception is pressa's fault, not the user's: exit 1, one line pointing to
    --log_level 0, which prints the traceback."""
    import typer

    from pressa.boundary import run

    app = typer.Typer()

    @app.command()
    def boom(log_level: int = typer.Option(1, "--log_level")):
        return {}["no such key"]

    @app.command()
    def other():
        pass

    command = typer.main.get_command(app)
    assert run(command, ["boom"]) == 1
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "KeyError" in err and "--log_level 0" in err, err
    assert run(command, ["boom", "--log_level", "0"]) == 1
    err = capfd.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: internal error: KeyError")
    assert run(command, ["boom", "--bogus"]) == 2            # the framework's usage errors stay the user's
    assert "No such option" in capfd.readouterr().err
