"""An artifact over 2 GiB: external data past the 2 GiB offset that protobuf and 32-bit offsets cannot
reach, read right by pressa's session and by onnxruntime-genai."""

from __future__ import annotations

import numpy as np
import pytest

from pressa.capture.build_options import BuildOptions
from pressa.capture.llm import build_llm
from pressa.genai.decoder_session import DecoderSession

from conftest import make_tiny
from helpers import genai_greedy

VOCAB = 8_500_000                 # x 64 hidden x 4 bytes: a 2.18 GB float32 embedding, tied to the head


def test_an_artifact_over_2_gib_loads_and_reads_the_far_rows(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    hf = make_tiny("llama", tmp_path / "hf", vocab_size=VOCAB, num_hidden_layers=1, tie_word_embeddings=True)
    far = [VOCAB - 1, 8_400_001, 8_450_017, 5, VOCAB - 2]       # rows whose bytes lie past 2 GiB
    with torch.no_grad():                                       # the reference first: one big model in memory
        model = AutoModelForCausalLM.from_pretrained(str(hf), torch_dtype=torch.float32)
        want = model(torch.tensor([far])).logits[0].numpy()
        del model
    out = tmp_path / "fp32"
    build_llm(str(hf), out, BuildOptions(precision="fp32"))
    assert (out / "model.onnx.data").stat().st_size > 2**31
    got = DecoderSession(out, threads=1, all_logits=True).prefill([far], capacity=len(far))[1][0]
    assert np.abs(got - want).max() < 1e-4
    pytest.importorskip("onnxruntime_genai")
    assert genai_greedy(out, far, 2)[0] == int(want[-1].argmax())
