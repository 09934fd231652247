"""One path: CLI jobs are workflows whose pressa.json rebuilds them byte for byte through `pressa run`,
a re-run replaces what the workflow wrote (and nothing else), the Python API builds what the CLI
builds, and every manifest follows one schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import SENTENCES, assert_user_error, run_cli, write_bert

REPORT_FILES = {"pressa.json", "footprints.json", "report.md", "candidates.png"}


def same_model_files(a: Path, b: Path) -> list[str]:
    """The files both folders hold (reports and manifests aside), asserted byte-identical."""
    names = sorted(str(f.relative_to(a)) for f in a.rglob("*") if f.is_file() and f.name not in REPORT_FILES)
    assert names == sorted(str(f.relative_to(b)) for f in b.rglob("*") if f.is_file() and f.name not in REPORT_FILES)
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n
    return names


def test_auto_opt_artifact_rebuilds_byte_identical_from_its_manifest(tiny_dir, tmp_path):
    art = tmp_path / "int4"
    res = run_cli("auto-opt", "-m", tiny_dir("llama"), "-o", art, "--precision", "int4", "--ratio", "0.7")
    assert res.returncode == 0, res.stderr
    manifest = json.loads((art / "pressa.json").read_text())
    assert manifest["workflow"]["passes"]["auto-opt"]["type"] == "model-builder"
    assert manifest["workflow"]["passes"]["auto-opt"]["ratio"] == 0.7
    res = run_cli("run", "--config", art / "pressa.json", "-o", tmp_path / "again", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "model.onnx.data" in same_model_files(art, tmp_path / "again")


def test_static_quantize_artifact_rebuilds_byte_identical(tmp_path):
    hf = write_bert(tmp_path / "hf")
    assert run_cli("capture", "-m", hf, "-o", tmp_path / "enc").returncode == 0
    (tmp_path / "calib.txt").write_text("\n".join(SENTENCES[:30]) + "\n")
    q = tmp_path / "q"
    res = run_cli("quantize", tmp_path / "enc", "-o", q, "--mode", "static", "--calibration-data",
                  tmp_path / "calib.txt", "--samples", "20")
    assert res.returncode == 0, res.stderr
    res = run_cli("run", "--config", q / "pressa.json", "-o", tmp_path / "again", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "model.onnx" in same_model_files(q, tmp_path / "again")
    # the run's own output records the chosen workflow, which rebuilds it once more
    again = json.loads((tmp_path / "again" / "pressa.json").read_text())
    assert again["workflow"]["passes"]["quantize-static"]["samples"] == 20


def test_rerun_replaces_what_the_workflow_wrote_and_nothing_else(tmp_path):
    (tmp_path / "m").mkdir()
    _matmul_model(tmp_path / "m")
    cfg = {"input_model": "m", "passes": {"q": {"type": "OnnxDynamicQuantization"}}, "output_dir": "out",
           "evaluators": {"e": {"metrics": [{"name": "size", "type": "size"}]}}}
    (tmp_path / "wf.json").write_text(json.dumps(cfg))
    assert run_cli("run", "--config", tmp_path / "wf.json").returncode == 0
    first = (tmp_path / "out" / "footprints.json").stat().st_mtime_ns
    res = run_cli("run", "--config", tmp_path / "wf.json")                  # Olive's behaviour: replaced
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "footprints.json").stat().st_mtime_ns != first
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    (tmp_path / "wf2.json").write_text(json.dumps({**cfg, "output_dir": "mine"}))
    assert_user_error(run_cli("run", "--config", tmp_path / "wf2.json"), "already exists", "--overwrite")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def _matmul_model(folder: Path) -> None:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from pressa.graph.onnx_io import save_model

    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((32, 32)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])], [w])
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder)


def test_python_api_builds_what_the_cli_builds(tiny_dir, tmp_path):
    import pressa

    src = tiny_dir("llama")
    assert run_cli("auto-opt", "-m", src, "-o", tmp_path / "cli", "--precision", "int4", "--sym",
                   "--group-size", "16").returncode == 0
    model = pressa.compress_weights(str(src), tmp_path / "api", mode="int4_sym", group_size=16)
    assert model.generate("t5 t6", max_new_tokens=2, chat=False) is not None
    same_model_files(tmp_path / "cli", tmp_path / "api")
    direct = pressa.auto_opt(str(src), tmp_path / "api2", precision="int4", symmetric=True, group_size=16)
    same_model_files(tmp_path / "cli", direct.folder)


def test_python_quantize_with_an_in_memory_dataset_equals_the_cli_with_a_file(tmp_path):
    import pressa

    hf = write_bert(tmp_path / "hf")
    assert run_cli("capture", "-m", hf, "-o", tmp_path / "enc").returncode == 0
    (tmp_path / "calib.txt").write_text("\n".join(SENTENCES[:30]) + "\n")
    assert run_cli("quantize", tmp_path / "enc", "-o", tmp_path / "cli", "--mode", "static", "--calibration-data",
                   tmp_path / "calib.txt", "--samples", "20").returncode == 0
    enc = pressa.quantize(tmp_path / "enc", tmp_path / "api", mode="static", dataset=SENTENCES[:30], samples=20)
    assert enc.embed(["w1 w2 w3"]).shape[0] == 1
    same_model_files(tmp_path / "cli", tmp_path / "api")
    with pytest.raises(Exception, match="takes no dataset"):
        pressa.quantize(tmp_path / "enc", tmp_path / "dyn", mode="dynamic", dataset=SENTENCES)


def test_every_manifest_follows_one_schema(tiny_artifact, tmp_path):
    from pressa.artifact import ArtifactKind, Manifest, kind_of

    hf = write_bert(tmp_path / "hf")
    assert run_cli("capture", "-m", hf, "-o", tmp_path / "enc").returncode == 0
    for folder, kind in ((tiny_artifact("llama"), ArtifactKind.DECODER_LLM), (tmp_path / "enc", ArtifactKind.ONNX)):
        m = Manifest.model_validate_json((folder / "pressa.json").read_text())
        assert m.kind == kind == kind_of(folder)
        assert m.passes[0]["pass"] == "source" and m.size_bytes > 0


def test_cli_flags_are_made_from_the_pass_configs(tmp_path):
    """Every option of a command's pass Config is a flag of the command, with the Config's help and
    default; a bad value is refused by the Config, named by the flag the user typed."""
    from pressa.cli.llm import AUTO_OPT_FLAGS
    from pressa.cli.onnx import FP16_FLAGS, OPTIMIZE_FLAGS, QUANTIZE_FLAGS, QUANTIZE_MODES
    from pressa.cli.options import flag_of
    from pressa.passes.builder import BuilderConfig
    from pressa.passes.fp16 import Fp16Config
    from pressa.passes.optimize import OptimizeConfig

    from helpers import assert_user_error

    cases = [("auto-opt", [BuilderConfig], AUTO_OPT_FLAGS, {"execution_provider"}),
             ("optimize", [OptimizeConfig], OPTIMIZE_FLAGS, set()), ("convert-fp16", [Fp16Config], FP16_FLAGS, set()),
             ("quantize", list(QUANTIZE_MODES.values()), QUANTIZE_FLAGS, {"ignored_scope"})]
    for command, configs, flags, skipped in cases:
        res = run_cli(command, "--help")
        assert res.returncode == 0, res.stderr
        text = " ".join(res.stdout.split())
        for config in configs:
            for name, field in config.model_fields.items():
                if name in skipped:
                    continue
                assert flag_of(name, flags)[:14] in text, (command, name)
                assert field.description.split()[1] in text, (command, name)
    assert "Bits of the token embedding (and of a tied lm_head) in int4/int8 builds (4, 8)" in " ".join(
        run_cli("auto-opt", "--help").stdout.split()).replace("│ ", "")
    assert_user_error(run_cli("auto-opt", "-o", tmp_path / "o", "--embedding-bits", "3"), "--embedding-bits 3",
                      "4 or 8")
    assert_user_error(run_cli("quantize", tmp_path / "m.onnx", "-o", tmp_path / "q", "--mode", "weight-only",
                              "--bits", "3"), "--bits 3")
    assert not (tmp_path / "o").exists() and not (tmp_path / "q").exists()
