"""OpenVINO as the second runtime for encoders and other ONNX models, checked against ONNX Runtime on
the same artifact: equal outputs (f32 precision hint), hints and the model cache read back from the
compiled model, `auto` choosing the faster runtime from a cached measurement, `benchmark` and
`serve` on OpenVINO, and decoders refused on it in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pressa.genai.sampling import SamplingConfig

from helpers import SENTENCES, call, run_cli, running, write_bert

ov = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    d = tmp_path_factory.mktemp("ov")
    assert run_cli("capture", "-m", write_bert(d / "hf"), "-o", d / "enc").returncode == 0
    return d / "enc"


def test_openvino_outputs_equal_onnxruntime(encoder):
    import pressa

    ort_model = pressa.load(encoder)
    ov_model = pressa.load(encoder, backend="openvino", precision_hint="f32")
    feeds = ort_model.encode_text(SENTENCES[:5])
    want, got = ort_model.run(dict(feeds)), ov_model.run(dict(feeds))
    assert set(want) == set(got)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ov_model.embed(SENTENCES[:5]), ort_model.embed(SENTENCES[:5]), atol=1e-5)
    assert [i.name for i in ov_model.session.get_inputs()] == [i.name for i in ort_model.session.get_inputs()]
    assert [i.type for i in ov_model.session.get_inputs()] == [i.type for i in ort_model.session.get_inputs()]


def test_hints_and_cache_dir_reach_the_runtime(encoder, tmp_path):
    import pressa

    m = pressa.load(encoder, backend="openvino", hint="throughput", streams=2, threads=2, precision_hint="f32",
                    cache_dir=tmp_path / "cache")
    props = m.session.properties()
    assert props["PERFORMANCE_HINT"] == "THROUGHPUT" and props["NUM_STREAMS"] == "2"
    assert props["INFERENCE_NUM_THREADS"] == "2" and props["INFERENCE_PRECISION_HINT"] == "f32"
    assert any((tmp_path / "cache").iterdir())                       # the compiled blob was written
    latency = pressa.load(encoder, backend="openvino").session.properties()
    assert latency["PERFORMANCE_HINT"] == "LATENCY" and latency["NUM_STREAMS"] == "1"
    rows = [m.encode_text([s]) for s in SENTENCES[:4]]
    many = m.session.run_many(rows)                                  # the asynchronous queue, in order
    for feeds, out in zip(rows, many):
        np.testing.assert_allclose(out["last_hidden_state"], m.run(dict(feeds))["last_hidden_state"], atol=1e-5)


def test_auto_measures_once_and_picks_the_faster(encoder, tmp_path, monkeypatch):
    import pressa
    from pressa.runtime import choose

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    real = choose.measure
    monkeypatch.setattr(choose, "measure", lambda *a: calls.append(a) or real(*a))
    m = pressa.load(encoder, backend="auto")
    figures = next(iter(json.loads((tmp_path / "pressa" / "backends.json").read_text()).values()))
    assert figures["onnxruntime"] > 0 and figures["openvino"] > 0
    assert m.runtime.backend == min(("onnxruntime", "openvino"), key=figures.get)
    pressa.load(encoder, backend="auto")
    assert len(calls) == 1                                          # remembered, not measured again
    res = run_cli("info", encoder)                                  # says what auto chose, with both figures
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("backend auto (cpu, latency)"))
    assert f": {m.runtime.backend} (onnxruntime {figures['onnxruntime'] * 1e3:.1f} ms" in line


def test_benchmark_and_embed_cli_on_openvino(encoder):
    res = run_cli("benchmark", encoder, "--backend", "openvino", "--batch-size", "4", "--seq-len", "16", "--runs", "2",
                  "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["backend"] == "openvino" and out["rows_per_s"] > 0 and out["latency_batch1_ms"] > 0
    a = run_cli("embed", encoder, SENTENCES[0])
    b = run_cli("embed", encoder, SENTENCES[0], "--backend", "openvino", "--precision-hint", "f32")
    assert a.returncode == b.returncode == 0, b.stderr
    np.testing.assert_allclose(json.loads(b.stdout), json.loads(a.stdout), atol=1e-5)


def test_serve_runs_a_model_on_openvino(encoder):
    from pressa.runtime.encoder import EncoderModel
    from pressa.serve.models import load_models

    models = load_models([{"name": "enc", "path": str(encoder), "backend": "openvino", "precision_hint": "f32"}])
    assert models["enc"].model.runtime.backend == "openvino"
    want = EncoderModel(encoder).run(SENTENCES[:2])["last_hidden_state"]
    with running(models) as port:
        server = {"url": f"http://127.0.0.1:{port}", "port": port}
        status, body = call(server, "/v1/models/enc:predict", {"instances": SENTENCES[:2]})
    assert status == 200
    np.testing.assert_allclose(np.array(body["predictions"]), want, atol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gemma3", "phi3"])
def test_openvino_decoder_equals_onnxruntime(kind, tiny_artifact):
    """Logits of a prefill (two rows of different lengths) and three decode steps, f32 precision hint, on
    both OpenVINO decoders: the stateful one's (cache in OpenVINO's state) and the one over pressa's arrays
    equal ONNX Runtime's; the keys and values the array decoder writes are ONNX Runtime's, and the stateful
    decoder's state holds the same keys and values (stateful decode = explicit-KV decode)."""
    from pressa.genai.decoder_session import DecoderSession
    from pressa.genai.openvino_decoder import OpenVINOArrayDecoder, OpenVINODecoder
    from pressa.runtime.options import RuntimeOptions

    folder, f32 = tiny_artifact(kind), RuntimeOptions(precision_hint="f32")
    ort, arrays, stateful = DecoderSession(folder, threads=1), OpenVINOArrayDecoder(folder, f32), \
        OpenVINODecoder(folder, f32)
    rows = [[5, 9, 17, 33, 4, 70, 8, 9, 12, 40, 41, 3], [7, 8, 9]]          # past gemma3's sliding window
    a, _ = ort.prefill(rows, 20)
    for dec in (arrays, stateful):
        np.testing.assert_allclose(dec.prefill(rows, 20)[0], a, atol=1e-3)
    for t in ([3, 4], [8, 1], [2, 2]):
        want = ort.step(np.array(t)).copy()
        for dec in (arrays, stateful):
            np.testing.assert_allclose(dec.step(np.array(t)), want, atol=1e-3)
    for (k1, v1), (k2, v2) in zip(ort.cache, arrays.cache):
        for row, length in enumerate((15, 6)):                      # prompt plus three steps
            np.testing.assert_allclose(k2[row, :, :length], k1[row, :, :length], atol=1e-3)
            np.testing.assert_allclose(v2[row, :, :length], v1[row, :, :length], atol=1e-3)
        assert not k2[1, :, 6:].any()                                # nothing past the row's length
    for row, length in enumerate((15, 6)):
        state = {s.name: s.state.data for s in stateful.cache.request(row).query_state()}
        assert len(state) == 2 * len(arrays.cache)
        for i, (k, v) in enumerate(arrays.cache):
            for kv, buf in (("key", k), ("value", v)):
                got = state[f"past_key_values.{i}.{kv}present.{i}.{kv}"]
                assert got.shape[2] == length                        # the state holds exactly the sequence
                np.testing.assert_allclose(got[0], buf[row, :, :length], atol=1e-3)


def test_greedy_text_scheduler_and_auto_on_openvino(tiny_artifact, tmp_path, monkeypatch):
    """Greedy generations equal on both runtimes; the continuous-batching scheduler runs on OpenVINO;
    auto measures prefill and decode once and may split them, with the same text."""
    import pressa
    from pressa.genai.sampling import SamplingConfig
    from pressa.genai.scheduler import Scheduler

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = tiny_artifact("llama")
    prompts = ["t5 t6 t7", "t9 t10 t11 t12 t13 t14"]
    want = pressa.load(folder).generate(prompts, chat=False, max_new_tokens=12, ignore_eos=True)
    on_ov = pressa.load(folder, backend="openvino", precision_hint="f32")
    assert on_ov.generate(prompts, chat=False, max_new_tokens=12, ignore_eos=True) == want
    auto = pressa.load(folder, backend="auto", precision_hint="f32")
    assert auto.generate(prompts, chat=False, max_new_tokens=12, ignore_eos=True) == want
    figures = next(iter(json.loads((tmp_path / "pressa" / "backends.json").read_text()).values()))
    assert {f"{phase}_{b}" for phase in ("prefill_short", "prefill_long", "step")
            for b in ("onnxruntime", "openvino")} <= set(figures)
    said = run_cli("info", folder).stdout
    assert "32-token prefill on" in said and "decode step on " in said
    sch = Scheduler(on_ov, slots=2)
    texts, done = ["", ""], []
    for i, p in enumerate(prompts):
        def emit(text, finish, generated, i=i):
            texts[i] += text or ""
            if finish:
                done.append(finish)
        sch.submit(on_ov.encode_prompt(p, chat=False), SamplingConfig(max_new_tokens=12, ignore_eos=True), emit)
    import time

    for _ in range(300):
        if len(done) == 2:
            break
        time.sleep(0.02)
    sch.close()
    assert texts == want


def test_openvino_refuses_soft_capping_in_one_line_and_auto_falls_back(tiny_artifact):
    import pressa
    from pressa.errors import BadArgument

    with pytest.raises(BadArgument, match="soft-capping"):
        pressa.load(tiny_artifact("gemma2"), backend="openvino")
    with pytest.raises(BadArgument, match="exact-speculation"):       # GroupQueryAttention's probabilities
        pressa.load(tiny_artifact("llama", exact_speculation=True), backend="openvino")
    assert type(pressa.load(tiny_artifact("llama", exact_speculation=True), backend="auto").session
                ).__name__ == "DecoderSession"
    m = pressa.load(tiny_artifact("gemma2"), backend="auto")
    assert type(m.session).__name__ == "DecoderSession"
    assert isinstance(m.generate("t5 t6", chat=False, max_new_tokens=2), str)
    res = run_cli("eval", tiny_artifact("llama"), "--perplexity", __file__, "--backend", "openvino")
    assert res.returncode == 2 and "onnxruntime" in res.stderr


def test_ir_export_loads_in_openvino_genai_and_generates_pressa_text(tiny_artifact, tiny_dir, tmp_path):
    """The IR folder of a decoder (stateful, GroupQueryAttention in standard operators), exported or built
    by `auto-opt --format openvino`, gives OpenVINO GenAI's LLMPipeline pressa's greedy tokens (fp32, f32
    hint); an int4 export keeps its weights compressed and generates too."""
    og = pytest.importorskip("openvino_genai")
    import pressa

    def pipeline(folder, out):
        res = run_cli("export", folder, "--format", "openvino", "-o", out)
        assert res.returncode == 0, res.stderr
        names = {f.name for f in out.iterdir()}
        assert {"openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml",
                "config.json", "generation_config.json"} <= names
        return og.LLMPipeline(str(out), "CPU", INFERENCE_PRECISION_HINT="f32")

    def greedy(pipe, ids, n=8):
        cfg = og.GenerationConfig()
        cfg.max_new_tokens, cfg.min_new_tokens, cfg.do_sample = n, n, False
        return list(pipe.generate(ov.Tensor(np.array([ids], np.int64)), cfg).tokens[0])

    folder = tiny_artifact("llama")
    m = pressa.load(folder)
    ids = m.encode_prompt("t5 t6 t7", chat=False)
    want = [int(t[0]) for t, _ in m.generate_ids([ids], SamplingConfig(max_new_tokens=8, ignore_eos=True))]
    assert greedy(pipeline(folder, tmp_path / "ir"), ids) == want
    mine = pressa.load(tmp_path / "ir", precision_hint="f32")            # pressa runs the IR folder itself
    assert type(mine.session).__name__ == "OpenVINODecoder"
    assert [int(t[0]) for t, _ in mine.generate_ids([ids], SamplingConfig(max_new_tokens=8, ignore_eos=True))] == want
    assert run_cli("export", folder, "--format", "openvino", "-o", tmp_path / "ir").returncode == 2   # no --overwrite
    res = run_cli("auto-opt", "-m", tiny_dir("llama"), "--precision", "fp32", "--format", "openvino", "-o",
                  tmp_path / "built")                                         # the same build, straight to IR
    assert res.returncode == 0, res.stderr
    built = og.LLMPipeline(str(tmp_path / "built"), "CPU", INFERENCE_PRECISION_HINT="f32")
    assert greedy(built, ids) == want
    q = tiny_artifact("llama", "int4")
    assert len(greedy(pipeline(q, tmp_path / "ir4"), ids)) == 8
    ir = (tmp_path / "ir4" / "openvino_model.bin").stat().st_size
    onnx_bytes = sum(f.stat().st_size for f in q.glob("model.onnx*"))
    assert ir < 1.05 * onnx_bytes, (ir, onnx_bytes)


def test_pressa_runs_encoder_ir_folders(encoder, tmp_path):
    """An encoder exported to IR runs in pressa (load, embed, benchmark) with ONNX Runtime's outputs on
    the ONNX artifact; rewriting passes refuse IR in one line."""
    import pressa

    assert run_cli("export", encoder, "--format", "openvino", "-o", tmp_path / "ir").returncode == 0
    ir = pressa.load(tmp_path / "ir", precision_hint="f32")
    assert ir.runtime.backend == "openvino"
    np.testing.assert_allclose(ir.embed(SENTENCES[:3]), pressa.load(encoder).embed(SENTENCES[:3]), atol=1e-5)
    res = run_cli("benchmark", tmp_path / "ir", "--batch-size", "2", "--seq-len", "16", "--runs", "2", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["backend"] == "openvino"
    bad = run_cli("quantize", tmp_path / "ir", "--mode", "dynamic", "-o", tmp_path / "q")
    assert bad.returncode == 2 and "OpenVINO IR" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_portable_attention_equals_group_query_attention(tiny_artifact):
    """GroupQueryAttention spelled in standard operators (the IR export's form) against ONNX Runtime's
    contrib operator on the fp32 graph: a prefill and three steps, past passed back in; also a graph
    built with --exact-speculation, whose attention output comes from the node's probabilities."""
    import onnx
    import onnxruntime as ort

    from pressa.artifact.llm_io import read_genai_config
    from pressa.graph.portable_attention import portable_attention

    for kind, opts in (("llama", {}), ("gemma2", {}), ("gemma3", {}), ("qwen3", {}),
                       ("llama", {"exact_speculation": True})):
        folder = tiny_artifact(kind, last_token_logits=False, **opts)
        d = read_genai_config(folder)["model"]["decoder"]
        m = onnx.load(str(folder / "model.onnx"))
        a = ort.InferenceSession(m.SerializeToString())
        b = ort.InferenceSession(portable_attention(m, d["head_size"]).SerializeToString())
        assert "GroupQueryAttention" not in {n.op_type for n in m.graph.node}
        shape = (1, d["num_key_value_heads"], 0, d["head_size"])
        past = {f"past_key_values.{i}.{kv}": np.zeros(shape, np.float32)
                for i in range(d["num_hidden_layers"]) for kv in ("key", "value")}
        ids = [5, 9, 17, 33, 4, 70, 8, 9, 12, 40, 41, 3]
        pa = pb = past
        for step, new in enumerate([ids, [3], [8], [2]]):
            total = len(ids) + step
            feeds = {"input_ids": np.array([new], np.int64), "attention_mask": np.ones((1, total), np.int64)}
            oa = dict(zip([o.name for o in a.get_outputs()], a.run(None, {**feeds, **pa})))
            ob = dict(zip([o.name for o in b.get_outputs()], b.run(None, {**feeds, **pb})))
            np.testing.assert_allclose(ob["logits"], oa["logits"], atol=1e-4)
            pa = {k: oa[k.replace("past_key_values", "present")] for k in past}
            pb = {k: ob[k.replace("past_key_values", "present")] for k in past}


def test_workflow_measures_candidates_on_openvino(encoder, tmp_path):
    """An Olive config whose target system names OpenVINOExecutionProvider: the candidates' latency is
    measured on OpenVINO, and the report says so."""
    cfg = {"input_model": str(encoder), "passes": {"q": {"type": "OnnxDynamicQuantization"}},
           "systems": {"ov": {"type": "LocalSystem", "config": {"accelerators": [
               {"device": "cpu", "execution_providers": ["OpenVINOExecutionProvider"]}]}}},
           "evaluators": {"e": {"metrics": [{"name": "latency", "type": "latency", "sub_types": [{"name": "avg"}]}]}},
           "engine": {"target": "ov", "evaluator": "e", "cache_dir": str(tmp_path / "cache"),
                      "output_dir": str(tmp_path / "out")}}
    (tmp_path / "wf.json").write_text(json.dumps(cfg))
    res = run_cli("run", "--config", tmp_path / "wf.json")
    assert res.returncode == 0, res.stderr
    foot = json.loads((tmp_path / "out" / "footprints.json").read_text())
    assert any("OpenVINOExecutionProvider" in n and "OpenVINO" in n for n in foot["notes"])
    assert foot["trials"][0]["metrics"]["latency"]["avg"] > 0


def test_serve_on_openvino_throughput_runs_batches_in_parallel(encoder):
    """Under OpenVINO's throughput hint the dynamic batcher runs a batch per stream at once; every
    concurrent answer equals ONNX Runtime's."""
    from concurrent.futures import ThreadPoolExecutor

    from pressa.runtime.encoder import EncoderModel
    from pressa.serve.models import load_models

    models = load_models([{"name": "enc", "path": str(encoder), "backend": "openvino", "hint": "throughput",
                           "streams": "2", "threads": 2, "precision_hint": "f32", "max_batch": 2,
                           "max_wait_ms": 1}])
    batcher = models["enc"].batcher
    assert batcher.workers == 2
    ref = EncoderModel(encoder)
    texts = [SENTENCES[i] for i in range(16)]
    want = {t: ref.run([t])["last_hidden_state"] for t in texts}
    with running(models) as port:
        server = {"url": f"http://127.0.0.1:{port}", "port": port}
        for _ in range(5):                      # bursts until two batches overlapped (a fast machine may not)
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda t: call(server, "/v1/models/enc:predict", {"instances": [t]}), texts))
            for (status, body), t in zip(answers, texts):
                assert status == 200
                np.testing.assert_allclose(np.array(body["predictions"]), want[t], atol=1e-4)
            if batcher.peak == 2:
                break
    assert batcher.peak == 2
