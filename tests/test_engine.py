"""The workflow engine: Olive's tutorial config as written, the cache, search, goals, bad configs."""

from __future__ import annotations

import json

import pytest

from conftest import make_tiny
from helpers import assert_user_error, run_cli

TUTORIAL = {
    "input_model": {"type": "PyTorchModel",
                    "config": {"hf_config": {"model_name": "MODEL", "task": "text-generation"}}},
    "systems": {"local_system": {"type": "LocalSystem", "config": {"accelerators": [
        {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}}},
    "evaluators": {"common_evaluator": {"metrics": [{"name": "latency", "type": "latency",
                                                     "sub_types": [{"name": "avg"}]}]}},
    "passes": {"conversion": {"type": "ModelBuilder", "config": {"precision": "int4"}},
               "optimization": {"type": "OrtTransformersOptimization", "config": {"model_type": "gpt2"}}},
    "engine": {"search_strategy": {"execution_order": "joint", "search_algorithm": "tpe"},
               "evaluator": "common_evaluator", "host": "local_system", "target": "local_system",
               "cache_dir": "cache", "output_dir": "models/optimized"},
}


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return make_tiny("qwen2", tmp_path_factory.mktemp("qwen") / "Qwen2.5-0.5B-Instruct")


def write(path, cfg):
    path.write_text(json.dumps(cfg))
    return path


def test_olive_tutorial_config_runs_and_caches(qwen, tmp_path):
    cfg = json.loads(json.dumps(TUTORIAL).replace("MODEL", str(qwen)))
    f = write(tmp_path / "workflow.json", cfg)
    res = run_cli("run", "--config", f)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "models" / "optimized"
    for name in ("model.onnx", "genai_config.json", "tokenizer.json", "footprints.json", "report.md"):
        assert (out / name).is_file(), name
    foot = json.loads((out / "footprints.json").read_text())
    chosen = foot["trials"][foot["chosen"]]
    assert chosen["metrics"]["latency"]["avg"] > 0 and "p90" in chosen["metrics"]["latency"]
    assert "perplexity" in chosen["metrics"]["accuracy guard"]            # int4: accuracy is measured too
    assert any("skipped" in s for s in chosen["steps"])                    # gpt2 fusions on a fused graph
    import pressa

    assert pressa.load(out).generate("t5 t6 t7", max_new_tokens=3, chat=False) is not None
    res2 = run_cli("run", "--config", f, "--overwrite")
    assert res2.returncode == 0, res2.stderr
    assert "conversion (model-builder): cache hit" in res2.stderr
    assert "optimization (optimize): cache hit" in res2.stderr
    assert "running" not in res2.stderr
    # issue 12: a re-run replaces the output_dir the workflow wrote, as Olive does (a folder pressa did not
    # write is still refused: tests/test_one_path.py)
    res3 = run_cli("run", "--config", f)
    assert res3.returncode == 0 and "running" not in res3.stderr, res3.stderr


def test_search_evaluates_every_candidate_and_picks_by_goals(qwen, tmp_path):
    cfg = {"input_model": {"type": "HfModel", "model_path": str(qwen)},
           "passes": {"builder": {"type": "ModelBuilder", "precision": {"values": ["int8", "int4"]},
                                  "group_size": [32, 128]}},
           "evaluators": {"e": {"metrics": [
               {"name": "size", "type": "size", "sub_types": [{"name": "mb", "priority": 1}]},
               {"name": "agree", "type": "accuracy", "sub_types": [
                   {"name": "agreement", "priority": 2, "goal": {"type": "threshold", "value": 0.0}}]}]}},
           "search_strategy": {"execution_order": "joint", "search_algorithm": "exhaustive"},
           "cache_dir": "c", "output_dir": "out"}
    f = write(tmp_path / "w.json", cfg)
    plan = json.loads(run_cli("run", "--config", f, "--dry-run", "--json").stdout)
    assert plan["search"]["space_size"] == 4
    res = run_cli("run", "--config", f, "--json")
    assert res.returncode == 0, res.stderr
    foot = json.loads((tmp_path / "out" / "footprints.json").read_text())
    assert len(foot["trials"]) == 4                                        # every candidate evaluated
    for t in foot["trials"]:                  # group 128 > hidden 64: those trials fail, the search goes on
        big = t["options"]["builder"]["group_size"] == 128
        assert (t["error"] is not None and "group size 128" in t["error"]) if big else t["error"] is None
    sizes = {t["id"]: t["metrics"]["size"]["mb"] for t in foot["trials"] if t["error"] is None}
    assert foot["chosen"] == min(sizes, key=sizes.get)                     # size first by priority
    chosen = foot["trials"][foot["chosen"]]["options"]["builder"]
    assert chosen == {"precision": "int4", "group_size": 32}
    assert (tmp_path / "out" / "candidates.png").read_bytes()[:4] == b"\x89PNG"
    cfg["evaluators"]["e"]["metrics"][0]["sub_types"][0]["goal"] = {"type": "threshold", "value": 0}
    f = write(tmp_path / "w2.json", cfg)                                    # a goal nobody meets
    res = run_cli("run", "--config", f, "--overwrite")
    assert res.returncode == 0 and "no candidate meets every goal" in res.stderr
    cfg["passes"]["builder"]["group_size"] = [128, 256]
    res = run_cli("run", "--config", write(tmp_path / "w3.json", cfg), "--overwrite")
    assert res.returncode == 1 and "every trial failed" in res.stderr


@pytest.mark.parametrize("mutate,fragment", [
    (lambda c: c["passes"]["conversion"]["config"].update(precison="int4"),
     "passes.conversion.config.precison: unknown key, did you mean precision?"),
    (lambda c: c["passes"]["conversion"].update(type="ModelBuildr"), "did you mean ModelBuilder"),
    (lambda c: c["passes"]["conversion"]["config"].update(precision="int3"), "passes.conversion.config.precision"),
    (lambda c: c["engine"].update(serch_strategy={}),
     "engine.serch_strategy: unknown key, did you mean search_strategy?"),
    (lambda c: c["evaluators"]["common_evaluator"]["metrics"][0].update(type="speed"), "evaluators.metrics[0].type"),
    (lambda c: c["engine"]["search_strategy"].update(search_algorithm="annealing"), "search_algorithm"),
])
def test_bad_configs_name_the_key(qwen, tmp_path, mutate, fragment):
    cfg = json.loads(json.dumps(TUTORIAL).replace("MODEL", str(qwen)))
    mutate(cfg)
    assert_user_error(run_cli("run", "--config", write(tmp_path / "w.json", cfg)), fragment)
    (tmp_path / "bad.json").write_text("{not json")
    assert_user_error(run_cli("run", "--config", tmp_path / "bad.json"), "not valid JSON")
    assert not (tmp_path / "models").exists()


def test_nncf_yaml_maps_to_static_quantization(tmp_path):
    from helpers import SENTENCES, write_bert

    hf = write_bert(tmp_path / "hf")
    assert run_cli("capture", "--model", hf, "-o", tmp_path / "enc").returncode == 0
    (tmp_path / "calib.txt").write_text("\n".join(SENTENCES) + "\n")
    (tmp_path / "nncf.yaml").write_text(
        f"model: {tmp_path / 'enc'}\ninput_info: [{{sample_size: [1, 16], type: long}}]\n"
        "compression:\n  algorithm: quantization\n  initializer:\n    range:\n      num_init_samples: 20\n"
        f"target_device: CPU\ncalibration_data: {tmp_path / 'calib.txt'}\noutput_dir: out\ncache_dir: cache\n")
    res = run_cli("run", "--config", tmp_path / "nncf.yaml")
    assert res.returncode == 0, res.stderr
    foot = json.loads((tmp_path / "out" / "footprints.json").read_text())
    t = foot["trials"][0]
    assert t["options"]["quantization"]["samples"] == 20
    assert t["metrics"]["accuracy guard"]["cosine"] > 0.98                  # agreement with the original
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "out" / "model.onnx"), load_external_data=False).graph.node}
    assert "QuantizeLinear" in ops


def test_changed_option_recomputes_from_that_pass_on(tmp_path):
    from helpers import write_bert

    hf = write_bert(tmp_path / "hf")
    cfg = {"input_model": {"type": "HfModel", "model_path": str(hf), "task": "feature-extraction"},
           "passes": {"capture": {"type": "OnnxConversion"}, "fuse": {"type": "OrtTransformersOptimization"},
                      "int8": {"type": "OnnxDynamicQuantization", "per_channel": True}},
           "evaluators": {"e": {"metrics": [{"name": "size", "type": "size"}]}}, "output_dir": "out"}
    res = run_cli("run", "--config", write(tmp_path / "a.json", cfg))
    assert res.returncode == 0, res.stderr
    # the original's capture runs once; the trial's capture (same input, same config) is its cache hit
    assert res.stderr.count(": running") == 3 and "capture (capture): cache hit" in res.stderr
    cfg["passes"]["int8"]["per_channel"] = False
    res = run_cli("run", "--config", write(tmp_path / "b.json", cfg), "--overwrite")
    assert res.returncode == 0, res.stderr
    assert "capture (capture): cache hit" in res.stderr and "fuse (optimize): cache hit" in res.stderr
    assert "int8 (quantize-dynamic): running" in res.stderr
    assert not list((tmp_path / "cache").glob(".tmp-*"))       # no half-written entries
    foot = json.loads((tmp_path / "out" / "footprints.json").read_text())
    assert foot["trials"][0]["metrics"]["accuracy guard"]["cosine"] > 0.99
