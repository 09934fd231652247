"""The engine's pure parts, fast and without running a model: ranking by priorities, goals against the
original (hand-computed), the Pareto front, the accuracy guard's warning, Olive's and NNCF's configs
mapped onto passes, and the KServe binary codec and logprob formatting of the server."""

from __future__ import annotations

import json

import pytest

from pressa.engine.config import parse_workflow
from pressa.engine.ranking import guard_warning, meets_goals, pareto, rank_key
from pressa.engine.runner import Trial
from pressa.passes.base import BadConfig


@pytest.fixture
def onnx_file(tmp_path):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"")
    return f


def workflow(onnx_file, metrics):
    return parse_workflow({"input_model": str(onnx_file), "passes": {"q": {"type": "OnnxDynamicQuantization"}},
                           "evaluators": {"e": {"metrics": metrics}}})


LATENCY_THEN_ACCURACY = [
    {"name": "latency", "type": "latency", "sub_types": [{"name": "avg", "priority": 1}]},
    {"name": "acc", "type": "accuracy", "sub_types": [{"name": "agreement", "priority": 2}]},
]


def trial(i, latency, agreement):
    return Trial(i, {}, metrics={"latency": {"avg": latency}, "acc": {"agreement": agreement}})


def test_rank_by_priority_then_the_next_metric(onnx_file):
    wf = workflow(onnx_file, LATENCY_THEN_ACCURACY)
    trials = [trial(0, 10.0, 0.90), trial(1, 8.0, 0.80), trial(2, 8.0, 0.95), trial(3, float("nan"), 0.99)]
    order = [t.id for t in sorted(trials, key=lambda t: rank_key(t, wf))]
    assert order == [2, 1, 0, 3]                   # lower latency first, ties by higher agreement, NaN last


def test_pareto_front_hand_computed(onnx_file):
    wf = workflow(onnx_file, LATENCY_THEN_ACCURACY)
    trials = [trial(0, 10.0, 0.99), trial(1, 8.0, 0.80), trial(2, 9.0, 0.90), trial(3, 11.0, 0.95),
              Trial(4, {}, error="failed")]
    # 3 is dominated by 0 (slower and less accurate); 4 failed; the rest trade speed for accuracy
    assert pareto(trials, wf) == {0, 1, 2}


@pytest.mark.parametrize("goal,latency,ok", [
    ({"type": "threshold", "value": 9.0}, 9.0, True),
    ({"type": "threshold", "value": 9.0}, 9.5, False),
    ({"type": "min-improvement", "value": 2.0}, 8.0, True),            # baseline 10: gained 2
    ({"type": "min-improvement", "value": 2.0}, 8.5, False),
    ({"type": "percent-min-improvement", "value": 25.0}, 7.5, True),   # 25% of 10
    ({"type": "percent-min-improvement", "value": 25.0}, 7.6, False),
    ({"type": "max-degradation", "value": 1.0}, 11.0, True),
    ({"type": "percent-max-degradation", "value": 5.0}, 10.6, False),
])
def test_goals_against_the_original(onnx_file, goal, latency, ok):
    wf = workflow(onnx_file, [{"name": "latency", "type": "latency", "sub_types": [{"name": "avg", "goal": goal}]}])
    baseline = Trial(-1, {}, metrics={"latency": {"avg": 10.0}})
    assert meets_goals(Trial(0, {}, metrics={"latency": {"avg": latency}}), wf, baseline) is ok


def test_guard_warns_of_a_similar_speed_more_accurate_candidate(onnx_file):
    wf = workflow(onnx_file, [{"name": "latency", "type": "latency"}])
    best = Trial(0, {}, metrics={"latency": {"avg": 10.0}, "accuracy guard": {"perplexity": 30.0}})
    close = Trial(1, {}, metrics={"latency": {"avg": 10.5}, "accuracy guard": {"perplexity": 20.0}})
    slow = Trial(2, {}, metrics={"latency": {"avg": 20.0}, "accuracy guard": {"perplexity": 10.0}})
    assert "candidate 1" in guard_warning(best, [best, close, slow], wf)
    assert guard_warning(best, [best, slow], wf) is None


def test_olive_tutorial_schema_maps_onto_passes(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    cfg = {"input_model": {"type": "PyTorchModel", "config": {"hf_config": {"model_name": str(hf)}}},
           "passes": {"builder": {"type": "ModelBuilder", "config": {"precision": "int4", "int4_block_size": 64,
                                                                     "int4_accuracy_level": 0}},
                      "q": {"type": "OnnxMatMul4Quantizer", "block_size": {"values": [32, 128]}}},
           "engine": {"search_strategy": {"execution_order": "joint", "search_algorithm": "exhaustive"},
                      "output_dir": "out", "cache_dir": "c"}}
    wf = parse_workflow(cfg, tmp_path)
    assert wf.model_kind == "llm" and [p.type for p in wf.passes] == ["model-builder", "quantize-weight-only"]
    assert wf.passes[0].fixed == {"precision": "int4", "group_size": 64, "accuracy_level": 0}
    assert wf.passes[1].space == {"group_size": [32, 128]} and len(wf.candidates()) == 2
    assert wf.output_dir == tmp_path / "out" and wf.cache_dir == tmp_path / "c"
    cfg["passes"]["builder"]["config"]["int4_blok_size"] = 1
    with pytest.raises(BadConfig, match="passes.builder.config.int4_blok_size: unknown key, did you mean"):
        parse_workflow(cfg, tmp_path)


def test_nncf_yaml_maps_onto_static_quantization(onnx_file):
    cfg = {"model": str(onnx_file), "compression": {"algorithm": "quantization", "initializer": {
        "range": {"num_init_samples": 123, "type": "mean_percentile"}}, "ignored_scopes": ["{re}.*Softmax.*"]},
        "accuracy_check": {"max_drop": 0.02}}
    (p,) = parse_workflow(cfg).passes
    assert p.type == "quantize-static"
    assert p.fixed == {"samples": 123, "method": "percentile", "ignored_scope": {"patterns": [".*Softmax.*"]},
                       "max_drop": 0.02}


def test_kserve_binary_bytes_codec_hand_built():
    import numpy as np

    from pressa.serve.kserve import bytes_of, strings_of

    raw = b"\x02\x00\x00\x00hi" + b"\x00\x00\x00\x00" + b"\x04\x00\x00\x00\xf0\x9f\x8e\x89"
    assert strings_of(raw) == ["hi", "", "🎉"]
    assert bytes_of(np.array(["hi", "", "🎉"], dtype=object)) == raw


def test_completions_logprobs_offsets_follow_the_text():
    from pressa.serve.openai_api import LogprobFormat

    class Tok:
        def token_bytes(self, i):
            return {1: b"Hello", 2: b" w", 3: b"orld"}[i]

    fmt = LogprobFormat(Tok(), chat=False)
    first = fmt.format([{"id": 1, "logprob": -0.5, "top": [(1, -0.5), (2, -2.0)]}])
    rest = fmt.format([{"id": 2, "logprob": -1.0, "top": []}, {"id": 3, "logprob": -0.1, "top": []}])
    assert first == {"tokens": ["Hello"], "token_logprobs": [-0.5], "top_logprobs": [{"Hello": -0.5, " w": -2.0}],
                     "text_offset": [0]}
    assert rest["text_offset"] == [5, 7] and rest["tokens"] == [" w", "orld"]


def test_workflow_runtime_from_olive_systems_and_pressa_runtime(onnx_file):
    """Olive's target system (its first accelerator's execution provider and device) and pressa's own
    `runtime` section map onto the RuntimeOptions the metrics run on; a bad runtime key is one line."""
    from pressa.passes.base import BadConfig

    def wf(**more):
        return parse_workflow({"input_model": str(onnx_file), "passes": {"q": {"type": "OnnxDynamicQuantization"}},
                               **more})

    def system(ep, device="cpu"):
        return {"systems": {"s": {"type": "LocalSystem", "config": {"accelerators": [
            {"device": device, "execution_providers": [ep]}]}}}, "engine": {"target": "s", "host": "s"}}

    assert wf().runtime.backend == "onnxruntime" and not wf().notes
    ov = wf(**system("OpenVINOExecutionProvider"))
    assert (ov.runtime.backend, ov.runtime.device) == ("openvino", "CPU") and "OpenVINO" in ov.notes[0]
    gpu = wf(**system("CUDAExecutionProvider", "gpu"))
    assert (gpu.runtime.backend, gpu.runtime.device) == ("onnxruntime", "gpu")
    other = wf(**system("DmlExecutionProvider"))
    assert other.runtime.backend == "onnxruntime" and "not one of pressa's runtimes" in other.notes[0]
    own = wf(engine={"runtime": {"backend": "openvino", "hint": "throughput", "streams": "2"}})
    assert (own.runtime.backend, own.runtime.hint, own.runtime.streams) == ("openvino", "throughput", "2")
    with pytest.raises(BadConfig, match="runtime.backend"):
        wf(runtime={"backend": "tensorrt"})
