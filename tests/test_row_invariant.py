"""--exact-speculation (pressa.graph.row_invariant): a run over k new tokens of one sequence (a speculative
verification step) gives bit for bit the logits of k one-token steps in an int4 build, whose default
graph differs there by ONNX Runtime's one-row attention product (the reason greedy speculation could
break near-ties differently); the recomputed attention equals transformers' in fp32; greedy speculation
on it equals plain greedy; bad combinations fail in one line."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import hf_left_padded, load_hf, rng_rows
from helpers import assert_user_error, run_cli

PROMPT = [5, 9, 17, 33, 4, 70, 8, 9, 12, 40, 41, 3, 66, 21]
NEW = [7, 19, 3, 88, 41, 12]


def _one_by_one_and_together(folder) -> tuple[np.ndarray, np.ndarray]:
    """Logits after each of NEW fed one step at a time, and from one run over all of NEW (past kept)."""
    from pressa.genai.decoder_session import DecoderSession

    capacity = len(PROMPT) + len(NEW)
    one = DecoderSession(folder, threads=2, all_logits=True)
    one.prefill([PROMPT], capacity=capacity)
    steps = np.stack([one.step(np.array([t]))[0].copy() for t in NEW])
    many = DecoderSession(folder, threads=2, all_logits=True)
    many.prefill([PROMPT], capacity=capacity)
    logits = np.empty((1, len(NEW), many.vocab_size), np.float32)
    many.binding.run(np.array([NEW], np.int64), np.ones((1, capacity), np.int64), logits)
    return steps, logits[0]


@pytest.mark.parametrize("kind,precision", [("llama", "int4"), ("qwen3", "int4"), ("llama", "fp32")])
def test_verification_run_equals_one_token_steps_bit_for_bit(kind, precision, tiny_artifact):
    steps, together = _one_by_one_and_together(tiny_artifact(kind, precision, exact_speculation=True))
    assert np.array_equal(steps, together)
    assert np.abs(steps).max() > 0.05                     # real logits, not zeros on both sides


def test_recomputed_attention_equals_transformers_in_fp32(tiny_dir, tiny_artifact):
    from pressa.genai.decoder_session import DecoderSession

    rows, steps = rng_rows(2, lengths=(9, 5)), [[5, 7], [11, 13], [17, 19]]
    ref_prefill, ref_steps = hf_left_padded(load_hf(tiny_dir("llama")), rows, steps)
    sess = DecoderSession(tiny_artifact("llama", "fp32", exact_speculation=True), threads=1, all_logits=True)
    _, full = sess.prefill(rows, capacity=16)
    for b, r in enumerate(rows):
        assert np.abs(full[b, : len(r)] - ref_prefill[b]).max() < 1e-4, f"prefill row {b}"
    for t, toks in enumerate(steps):                      # rows of different lengths in one step
        assert np.abs(sess.step(np.array(toks)) - ref_steps[t]).max() < 1e-4, f"decode step {t}"


def test_int4_greedy_with_lookup_equals_plain_greedy(tiny_artifact):
    import pressa
    from pressa.genai.sampling import SamplingConfig

    m = pressa.load(tiny_artifact("llama", "int4", exact_speculation=True), speculative="lookup")
    m.session.draft_cost = 0.05
    rng, accepted = np.random.default_rng(3), 0
    for _ in range(20):
        run = rng.integers(3, 160, 6).tolist()
        ids = rng.integers(3, 160, 4).tolist() + run + rng.integers(3, 160, 3).tolist() + run[:3]
        outs = {}
        for mode in ("off", "lookup"):
            cfg = SamplingConfig(max_new_tokens=40, speculative=mode, ignore_eos=True)
            outs[mode] = list(m.sequences([ids], cfg))[-1][0].history[len(ids):]
        assert outs["lookup"] == outs["off"]
        accepted += m.last_batch.accepted
    assert accepted > 10, accepted


def test_exact_speculation_refuses_fp16_cuda_and_one_query_head_per_kv_head_in_one_line(tiny_dir, tmp_path):
    for kind, extra, says in (("llama", ["--precision", "fp16"], "float32"),
                              ("llama", ["--provider", "CUDAExecutionProvider"], "float32"),
                              ("phi3", [], "grouped-query attention")):
        res = run_cli("auto-opt", "-m", str(tiny_dir(kind)), "-o", str(tmp_path / "out"), "--exact-speculation",
                      *extra)
        assert_user_error(res, "exact", says)
        assert not (tmp_path / "out").exists()
