"""Beyond one machine: workflow trials as Ray tasks on a local Ray the test starts (two CPUs, so two
worker processes stand in for two nodes), against the local executor's results."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from pressa.engine.config import parse_workflow  # noqa: E402
from pressa.engine.search import run_workflow  # noqa: E402

from conftest import make_tiny  # noqa: E402

TESTS = str(Path(__file__).resolve().parent)
TEXT = "\n".join(" ".join(f"t{(i * 7 + j * 13) % 150 + 5}" for j in range(40)) for i in range(60))


@pytest.fixture(scope="module")
def local_ray():
    import ray_passes  # noqa: F401  (the test pass, registered here and in every worker)

    if ray.is_initialized():
        ray.shutdown()
    path = ":".join([TESTS, *[p for p in sys.path if p.endswith("site-packages")]])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}, "worker_process_setup_hook": "ray_passes.register"})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny("llama", tmp_path_factory.mktemp("ray") / "tiny")
    text = folder.parent / "text.txt"
    text.write_text(TEXT)
    return folder, text


def _workflow(tiny, tmp_path, passes: dict, executor: str, name: str = "w", ppl: bool = False, **engine):
    folder, text = tiny
    metrics = [{"name": "size", "type": "size", "sub_types": [{"name": "mb", "priority": 2}]}]
    if ppl:                                   # LLM artifacts only (the test pass writes a plain ONNX model)
        metrics.append({"name": "ppl", "type": "perplexity", "data": str(text),
                        "sub_types": [{"name": "perplexity", "priority": 1}]})
    cfg = {"input_model": {"type": "HfModel", "model_path": str(folder)}, "passes": passes,
           "evaluators": {"e": {"metrics": metrics}},
           "evaluator": "e", "engine": {"executor": executor, **engine},
           "search_strategy": {"execution_order": "joint", "search_algorithm": "exhaustive"},
           "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / name)}
    return parse_workflow(cfg)


def _run(wf):
    lines: list[str] = []
    run_workflow(wf, lines.append)
    return json.loads((wf.output_dir / "footprints.json").read_text()), lines


def _pids(lines: list[str]) -> set[int]:
    return {int(m.group(1)) for line in lines if (m := re.search(r"on worker pid (\d+)", line))}


def _same(a: dict, b: dict) -> None:
    assert a["chosen"] == b["chosen"]
    for x, y in zip(a["trials"], b["trials"], strict=True):
        assert x["options"] == y["options"] and x["error"] == y["error"]
        if x["error"] is None:
            assert x["metrics"]["size"] == y["metrics"]["size"]
            assert x["metrics"]["ppl"]["perplexity"] == pytest.approx(y["metrics"]["ppl"]["perplexity"], rel=1e-6)
    assert any(t["error"] is None for t in a["trials"])


def test_a_six_trial_search_on_ray_chooses_what_the_local_executor_chooses(local_ray, tiny, tmp_path):
    passes = {"builder": {"type": "ModelBuilder", "precision": {"values": ["int4", "int8"]},
                          "group_size": {"values": [16, 32, 64]}}}
    local, _ = _run(_workflow(tiny, tmp_path / "local", passes, "local", ppl=True))
    on_ray, lines = _run(_workflow(tiny, tmp_path / "ray", passes, "ray", ppl=True))
    assert len(on_ray["trials"]) == 6 and all(t["error"] is None for t in on_ray["trials"])
    _same(local, on_ray)
    assert len(_pids(lines)) == 2, lines                       # both workers ran trials


def test_a_trial_that_kills_its_worker_fails_and_the_others_finish(local_ray, tiny, tmp_path):
    passes = {"builder": {"type": "ModelBuilder", "precision": "int4"},
              "copy": {"type": "copy-or-crash", "crash": {"values": [False, True]}, "tag": {"values": [1, 2]}}}
    foot, _ = _run(_workflow(tiny, tmp_path, passes, "ray"))
    assert len(foot["trials"]) == 4
    for t in foot["trials"]:
        if t["options"]["copy"]["crash"]:
            assert t["error"] and "worker lost" in t["error"], t
        else:
            assert t["error"] is None and t["metrics"]["size"]["mb"] > 0
    assert not foot["trials"][foot["chosen"]]["options"]["copy"]["crash"]


@pytest.mark.parametrize("shared", [True, False])
def test_a_step_one_worker_built_is_a_cache_hit_for_another(local_ray, tiny, tmp_path, shared):
    build = {"builder": {"type": "ModelBuilder", "precision": "int4"}}
    first, lines = _run(_workflow(tiny, tmp_path, build, "ray", "first", ray_shared_cache=shared))
    assert first["trials"][0]["steps"][0]["cached"] is False
    builder_pid = _pids(lines)
    passes = {**build, "copy": {"type": "copy-or-crash", "tag": {"values": [1, 2]}}}
    then, lines = _run(_workflow(tiny, tmp_path, passes, "ray", "then", ray_shared_cache=shared))
    assert all(t["error"] is None for t in then["trials"]), then["trials"]
    for t in then["trials"]:
        assert t["steps"][0]["cached"] is True, t["steps"]     # the builder step: a hit
    if shared:
        assert _pids(lines) - builder_pid, (lines, builder_pid)  # ...on a worker that did not build it
    keys = [s["cache_key"] for t in then["trials"] for s in t["steps"]]
    assert all((tmp_path / "cache" / k / ".complete").is_file() for k in keys)   # in the driver's cache


def test_a_trial_asks_for_a_gpu_only_where_a_pass_builds_for_cuda(tiny, tmp_path):
    from pressa.engine.executors import needs_gpu

    passes = {"builder": {"type": "ModelBuilder", "execution_provider": {"values": ["cpu", "cuda"]}}}
    wf = _workflow(tiny, tmp_path, passes, "ray")
    asks = {c["builder"]["execution_provider"]: needs_gpu(wf, c) for c in wf.candidates()}
    assert asks == {"cpu": False, "cuda": True}
    wf = _workflow(tiny, tmp_path, passes, "ray", ray_cpus_per_trial=2, ray_memory_per_trial_mb=1500)
    assert wf.executor["cpus_per_trial"] == 2 and wf.executor["memory_mb"] == 1500


def test_a_trial_declares_the_memory_its_config_asks_for(local_ray, tiny, tmp_path):
    """engine.ray_memory_per_trial_mb becomes the task's Ray `memory` resource (bytes); a request the
    node holds runs."""
    from pressa.engine.executors import RayExecutor

    ok = RayExecutor(None, 1, True, lambda s: None, memory_mb=100)
    assert ok.resources == {"num_cpus": 1, "memory": 10**8}
    assert RayExecutor(None, 2, True, lambda s: None).resources == {"num_cpus": 2}
    passes = {"builder": {"type": "ModelBuilder", "precision": "int4"}}
    wf = _workflow(tiny, tmp_path, passes, "ray", ray_memory_per_trial_mb=100)
    foot, _ = _run(wf)
    assert foot["trials"][0]["error"] is None
