"""Any-model path: capture by task (vs transformers), optimize (fusions vs the fp32 graph), every
quantize mode (vs the original), ignored scopes, fp16, compare, embed, and bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from helpers import SENTENCES, assert_user_error, no_leftovers, run_cli, write_bert


def torch_outputs(folder, task, texts):
    import torch
    from transformers import AutoTokenizer

    from pressa.capture.export import load_hf_model

    model, _ = load_hf_model(folder, task)
    enc = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
    return out, enc


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return write_bert(tmp_path_factory.mktemp("bert") / "hf")


@pytest.fixture(scope="module")
def captured(bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("cap") / "minibert"
    res = run_cli("capture", "--model", bert, "-o", out)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("data") / "calib.txt"
    f.write_text("\n".join(SENTENCES) + "\n")
    return f


@pytest.mark.parametrize("task", ["feature-extraction", "text-classification", "token-classification",
                                  "question-answering"])
def test_capture_matches_transformers(task, tmp_path):
    from pressa.runtime.encoder import EncoderModel

    hf = write_bert(tmp_path / "hf", task, seed=1)
    res = run_cli("capture", "--model", hf, "--task", task, "-o", tmp_path / "art")
    assert res.returncode == 0, res.stderr
    manifest = json.loads((tmp_path / "art" / "pressa.json").read_text())
    assert manifest["task"] == task and manifest["kind"] == "onnx"
    assert (tmp_path / "art" / "tokenizer.json").is_file() and (tmp_path / "art" / "config.json").is_file()
    texts = SENTENCES[:3] + ["w1 w2"]                     # another batch size and lengths than the export's
    ref, enc = torch_outputs(hf, task, texts)
    got = EncoderModel(tmp_path / "art").run({k: v.numpy() for k, v in enc.items()})
    mask = enc["attention_mask"].numpy().astype(bool)
    for name, arr in got.items():
        want = getattr(ref, name).numpy()
        if want.ndim == 3:                                # padded positions are not part of the contract
            want, arr = want[mask], arr[mask]
        np.testing.assert_allclose(arr, want, atol=1e-4, rtol=1e-4)


def test_capture_image_classification(tmp_path):
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from pressa.runtime.encoder import EncoderModel

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, num_labels=5)
    torch.manual_seed(0)
    ViTForImageClassification(cfg).eval().save_pretrained(tmp_path / "vit")
    res = run_cli("capture", "--model", tmp_path / "vit", "--task", "image-classification", "-o", tmp_path / "art")
    assert res.returncode == 0, res.stderr
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    got = EncoderModel(tmp_path / "art").run({"pixel_values": x})["logits"]
    with torch.no_grad():
        want = ViTForImageClassification.from_pretrained(tmp_path / "vit").eval()(torch.from_numpy(x)).logits
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)


def test_static_quantization_from_an_image_folder(tmp_path):
    import torch
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, num_labels=5)
    torch.manual_seed(0)
    ViTForImageClassification(cfg).eval().save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
         "rescale_factor": 1 / 255, "do_normalize": True}))
    assert run_cli("capture", "--model", tmp_path / "vit", "--task", "image-classification",
                   "-o", tmp_path / "art").returncode == 0
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    res = run_cli("quantize", tmp_path / "art", "-o", tmp_path / "q", "--calibration-data", tmp_path / "images")
    assert res.returncode == 0, res.stderr
    g = onnx.load(str(tmp_path / "q" / "model.onnx"), load_external_data=False)
    assert "QuantizeLinear" in {n.op_type for n in g.graph.node}
    r = json.loads(run_cli("compare", tmp_path / "art", tmp_path / "q", "--data", tmp_path / "images", "--json",
                           "--runs", "2").stdout)
    out = r["outputs"]["logits"]
    assert r["samples"] == 6 and out["top1_agreement"] == 1.0
    # what INT8 costs this tiny random ViT, by ONNX Runtime's own dynamic quantizer on the same graph: the
    # calibrated static model must cost no more than that, within a margin (its ranges come from 6 images)
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from pressa.quant.calib_data import image_batches
    from pressa.runtime.encoder import EncoderModel

    quantize_dynamic(str(tmp_path / "art" / "model.onnx"), str(tmp_path / "dyn.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True)
    x = np.concatenate([b["pixel_values"] for b in image_batches(tmp_path / "images", tmp_path / "art",
                                                                 "pixel_values", 6)])
    ref = EncoderModel(tmp_path / "art").run({"pixel_values": x})["logits"]
    dyn = ort.InferenceSession(str(tmp_path / "dyn.onnx")).run(None, {"pixel_values": x})[0]
    assert out["max_abs_error"] <= 1.5 * float(np.abs(dyn - ref).max()) + 1e-3, (out, float(np.abs(dyn - ref).max()))


def test_capture_any_torch_module(tmp_path):
    import torch

    import pressa

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, image):
            return self.fc(torch.relu(self.conv(image)).mean(dim=(2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    pressa.export(net, {"image": torch.randn(2, 3, 16, 16)}, tmp_path / "net", output_names=["scores"])
    x = torch.randn(5, 3, 16, 16)                           # another batch size: the batch axis is dynamic
    got = pressa.load(tmp_path / "net").run({"image": x.numpy()})["scores"]
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), atol=1e-5)


def test_optimize_fuses_and_keeps_outputs(captured, bert, tmp_path):
    from pressa.runtime.encoder import EncoderModel

    res = run_cli("optimize", captured, "-o", tmp_path / "opt")
    assert res.returncode == 0, res.stderr
    g = onnx.load(str(tmp_path / "opt" / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in g.graph.node]
    assert ops.count("MultiHeadAttention") == 2                  # one per layer
    assert "Softmax" not in ops
    assert ops.count("SkipLayerNormalization") >= 2
    fusions = json.loads((tmp_path / "opt" / "pressa.json").read_text())["passes"][-1]["fusions"]
    assert fusions["MultiHeadAttention"] == 2
    ref, enc = torch_outputs(bert, "feature-extraction", SENTENCES[:4] + ["w3"])
    got = EncoderModel(tmp_path / "opt").run({k: v.numpy() for k, v in enc.items()})["last_hidden_state"]
    mask = enc["attention_mask"].numpy().astype(bool)
    np.testing.assert_allclose(got[mask], ref.last_hidden_state.numpy()[mask], atol=1e-4, rtol=1e-4)


def _cosines(a_dir, b_dir, texts):
    from pressa.runtime.encoder import EncoderModel

    a = EncoderModel(a_dir).embed(texts)
    b = EncoderModel(b_dir).embed(texts)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.parametrize("mode,extra,min_cos,marker", [
    ("dynamic", [], 0.99, "DynamicQuantizeLinear"),
    ("static", ["--samples", "30"], 0.98, "QuantizeLinear"),
    ("static", ["--samples", "30", "--method", "percentile"], 0.98, "QuantizeLinear"),
    ("static", ["--samples", "30", "--method", "entropy"], 0.98, "QuantizeLinear"),
    ("weight-only", ["--bits", "8"], 0.999, "MatMulNBits"),
    ("weight-only", ["--bits", "4", "--group-size", "32"], 0.98, "MatMulNBits"),
])
def test_quantize_modes_stay_close(captured, calib_file, tmp_path, mode, extra, min_cos, marker):
    res = run_cli("quantize", captured, "-o", tmp_path / "q", "--mode", mode, "--calibration-data", calib_file,
                  *extra)
    assert res.returncode == 0, res.stderr
    g = onnx.load(str(tmp_path / "q" / "model.onnx"), load_external_data=False)
    assert marker in {n.op_type for n in g.graph.node}
    cos = _cosines(captured, tmp_path / "q", SENTENCES[-10:])
    assert cos.min() >= min_cos, cos


def test_static_from_npz_and_python_iterable(captured, tmp_path):
    from pressa.graph.onnx_io import load_model
    from pressa.passes.base import PassContext, get_pass, make_config
    from pressa.runtime.encoder import EncoderModel

    feeds = EncoderModel(captured).encode_text(SENTENCES[:8])
    np.savez(tmp_path / "calib.npz", **feeds)
    res = run_cli("quantize", captured, "-o", tmp_path / "npz", "--calibration-data", tmp_path / "calib.npz")
    assert res.returncode == 0, res.stderr
    rows = [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(8)]
    cls = get_pass("OnnxStaticQuantization")
    cfg = make_config(cls, {"samples": 8})
    (tmp_path / "it").mkdir()
    cls().run(captured / "model.onnx", cfg, tmp_path / "it", PassContext(captured, extra={"calibration_data": rows}))
    a = load_model(tmp_path / "it")
    b = load_model(tmp_path / "npz")
    scales = lambda m: sorted(float(onnx.numpy_helper.to_array(t).reshape(-1)[0]) for t in m.graph.initializer
                              if t.name.endswith("_scale") and t.dims == [])
    assert scales(a) == pytest.approx(scales(b), rel=1e-6)        # same data, same calibrated ranges


def _float_nodes(path, names):
    """Names among `names` whose weight input is not fed by a DequantizeLinear (still float)."""
    g = onnx.load(str(path / "model.onnx"), load_external_data=False)
    producer = {o: n for n in g.graph.node for o in n.output}
    out = []
    for n in g.graph.node:
        if n.name in names:
            src = producer.get(n.input[1])
            if src is None or src.op_type != "DequantizeLinear":
                out.append(n.name)
    return out


def test_ignored_scope_keeps_nodes_in_float(captured, calib_file, tmp_path):
    g = onnx.load(str(captured / "model.onnx"), load_external_data=False)
    weights = {t.name for t in g.graph.initializer}
    matmuls = [n.name for n in g.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    target = matmuls[0]
    res = run_cli("quantize", captured, "-o", tmp_path / "a", "--calibration-data", calib_file, "--samples", "10",
                  "--ignore-node", target)
    assert res.returncode == 0, res.stderr
    assert _float_nodes(tmp_path / "a", matmuls) == [target]
    res = run_cli("quantize", captured, "-o", tmp_path / "b", "--calibration-data", calib_file, "--samples", "10",
                  "--ignore-type", "MatMul")
    assert res.returncode == 0, res.stderr
    assert sorted(_float_nodes(tmp_path / "b", matmuls)) == sorted(matmuls)
    res = run_cli("quantize", captured, "-o", tmp_path / "c", "--mode", "weight-only", "--ignore-regex", "^" + target)
    g = onnx.load(str(tmp_path / "c" / "model.onnx"), load_external_data=False)
    kinds = {n.name: n.op_type for n in g.graph.node}
    assert kinds[target] == "MatMul" and sum(k == "MatMulNBits" for k in kinds.values()) == len(matmuls) - 1
    res = run_cli("quantize", captured, "-o", tmp_path / "d", "--calibration-data", calib_file,
                  "--ignore-node", "no_such_node")
    assert_user_error(res, "no_such_node")
    no_leftovers(tmp_path, "d")


def test_max_drop_keeps_harmful_nodes_out_of_static(captured, calib_file, tmp_path):
    base = tmp_path / "plain"
    assert run_cli("quantize", captured, "-o", base, "--calibration-data", calib_file, "--samples", "20",
                   "--per-tensor").returncode == 0
    plain_drop = 1 - _cosines(captured, base, SENTENCES[:40]).mean()
    limit = plain_drop / 4
    res = run_cli("quantize", captured, "-o", tmp_path / "float", "--calibration-data", calib_file, "--samples",
                  "20", "--per-tensor", "--max-drop", f"{limit:.9f}", "--fallback", "float")
    assert res.returncode == 0, res.stderr
    rep = json.loads((tmp_path / "float" / "pressa.json").read_text())["passes"][-1]
    assert rep["fallback_nodes"] and rep["met"] and rep["drop"] <= limit
    sens = [s["sensitivity"] for s in rep["search"]]
    assert sens == sorted(sens, reverse=True)                                  # most harmful first
    assert sorted(_float_nodes(tmp_path / "float", rep["fallback_nodes"])) == sorted(rep["fallback_nodes"])
    assert 1 - _cosines(captured, tmp_path / "float", SENTENCES[:40]).mean() <= limit * 1.5
    res = run_cli("quantize", captured, "-o", tmp_path / "dyn", "--calibration-data", calib_file, "--samples", "20",
                  "--per-tensor", "--max-drop", f"{limit:.9f}", "--fallback", "dynamic")
    assert res.returncode == 0, res.stderr
    rep = json.loads((tmp_path / "dyn" / "pressa.json").read_text())["passes"][-1]
    assert rep["fallback"] == "dynamic" and rep["met"] == (rep["drop"] <= limit)
    g = onnx.load(str(tmp_path / "dyn" / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in g.graph.node]
    assert "DynamicQuantizeLinear" in ops                                      # the moved nodes: dynamic int8
    src = onnx.load(str(captured / "model.onnx"), load_external_data=False)
    weights = {t.name for t in src.graph.initializer}
    candidates = sum(1 for n in src.graph.node if n.op_type == "MatMul" and n.input[1] in weights)
    assert ("QuantizeLinear" in ops) == (len(rep["fallback_nodes"]) < candidates)   # the rest stays static


def test_fp16(captured, tmp_path):
    res = run_cli("convert-fp16", captured, "-o", tmp_path / "h")
    assert res.returncode == 0, res.stderr
    g = onnx.load(str(tmp_path / "h" / "model.onnx"))
    big = [t for t in g.graph.initializer if np.prod(t.dims) >= 64 * 64]
    assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)
    assert _cosines(captured, tmp_path / "h", SENTENCES[:5]).min() > 0.999


def test_embed_matches_mean_pooled_transformers(captured, bert):
    ref, enc = torch_outputs(bert, "feature-extraction", SENTENCES[:3])
    h, m = ref.last_hidden_state.numpy(), enc["attention_mask"].numpy()[..., None]
    want = (h * m).sum(1) / m.sum(1)
    want /= np.linalg.norm(want, axis=-1, keepdims=True)          # modules.json has Normalize
    res = run_cli("embed", captured, *SENTENCES[:3])
    assert res.returncode == 0, res.stderr
    got = np.array([json.loads(line) for line in res.stdout.splitlines()])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_compare_json(captured, calib_file, tmp_path):
    res = run_cli("quantize", captured, "-o", tmp_path / "q", "--mode", "dynamic")
    assert res.returncode == 0
    res = run_cli("compare", captured, tmp_path / "q", "--data", calib_file, "--samples", "16", "--runs", "3",
                  "--json")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    out = r["outputs"]["last_hidden_state"]
    assert 0.98 < out["cosine_mean"] <= 1.0 and out["max_abs_error"] > 0
    assert r["samples"] == 16 and r["size_mb"]["ratio"] < 1 and r["latency_ms"]["reference"] > 0
    same = json.loads(run_cli("compare", captured, captured, "--json", "--runs", "2").stdout)
    assert same["outputs"]["last_hidden_state"]["max_abs_error"] == 0.0


def test_bad_onnx_inputs(tmp_path, captured):
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\x01not a protobuf at all" * 10)
    assert_user_error(run_cli("optimize", tmp_path / "garbage.onnx", "-o", tmp_path / "o1"), "garbage.onnx")
    (tmp_path / "text.onnx").write_text("hello")
    assert_user_error(run_cli("quantize", tmp_path / "text.onnx", "-o", tmp_path / "o2", "--mode", "dynamic"))
    assert_user_error(run_cli("quantize", tmp_path / "missing.onnx", "-o", tmp_path / "o3"), "missing.onnx")
    assert_user_error(run_cli("quantize", captured, "-o", tmp_path / "o4", "--mode", "nonsense"), "--mode")
    assert_user_error(run_cli("quantize", captured, "-o", tmp_path / "o5"), "calibration")
    (tmp_path / "exists").mkdir()
    assert_user_error(run_cli("quantize", captured, "-o", tmp_path / "exists", "--mode", "dynamic"), "--overwrite")
    assert_user_error(run_cli("capture", "--model", tmp_path / "nope", "-o", tmp_path / "o6"), "nope")
    for name in ("o1", "o2", "o3", "o4", "o5", "o6"):
        no_leftovers(tmp_path, name)
