"""eval and benchmark: perplexity equals a direct transformers computation of the same protocol,
agreement is exact against itself, the benchmark JSON has every key."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import VOCAB, load_hf


def protocol_text(n_words=200, seed=0):
    r = np.random.default_rng(seed)
    return " ".join(f"t{i}" for i in r.integers(3, VOCAB, n_words))


def test_perplexity_equals_transformers(tiny_dir, tiny_artifact):
    import torch

    from pressa.evaluate.perplexity import perplexity

    text = protocol_text()
    got = perplexity(tiny_artifact("qwen3", "fp32"), text, windows=5, window_size=16, batch=2)
    # the protocol by hand: whole text, first 5 windows of 16, mean NLL of 15 positions, exp of the mean
    ids = [int(w[1:]) for w in text.split()]
    hf = load_hf(tiny_dir("qwen3"))
    nlls = []
    for w in range(5):
        x = torch.tensor([ids[w * 16:(w + 1) * 16]])
        with torch.no_grad():
            lp = torch.log_softmax(hf(x).logits[0].double(), -1)
        nlls.append(float(-lp[torch.arange(15), x[0, 1:]].mean()))
    assert got["windows"] == 5 and got["tokens"] == 80
    assert abs(got["perplexity"] - float(np.exp(np.mean(nlls)))) < 1e-4 * got["perplexity"]


def test_agreement_with_itself_and_with_int4(tiny_artifact):
    from pressa.evaluate.agreement import agreement, artifact_logits

    samples = [[int(w[1:]) for w in protocol_text(12, s).split()] for s in range(4)]
    ref = artifact_logits(tiny_artifact("llama", "fp32"))
    same = agreement(artifact_logits(tiny_artifact("llama", "fp32")), ref, samples)
    assert same["top1_agreement"] == 1.0 and same["mean_kl"] < 1e-9
    q4 = agreement(artifact_logits(tiny_artifact("llama", "int4")), ref, samples)
    assert 0 < q4["mean_kl"] and q4["top1_agreement"] < 1.0 + 1e-12 and q4["positions"] == 48


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pressa", *map(str, args)], capture_output=True, text=True)


def test_eval_cli_json_and_reference_against_transformers(tiny_dir, tiny_artifact, tmp_path):
    pytest.importorskip("transformers")
    data = tmp_path / "data.txt"
    data.write_text("\n".join(protocol_text(30, s) for s in range(3)))
    res = run_cli("eval", tiny_artifact("llama", "fp32"), "--perplexity", data, "--windows", "2",
                  "--window-size", "16", "--reference", tiny_dir("llama"), "--data", data, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["reference"] == "transformers fp32"
    assert out["top1_agreement"] == 1.0 and out["mean_kl"] < 1e-6      # fp32 graph == transformers
    assert out["windows"] == 2 and out["perplexity"] > 1
    bad = run_cli("eval", tiny_artifact("llama", "fp32"))
    assert bad.returncode == 2 and "--perplexity" in bad.stderr


def test_benchmark_json_has_every_key(tiny_artifact):
    res = run_cli("benchmark", tiny_artifact("llama", "int4"), "--prompt-tokens", "12", "--new-tokens", "5",
                  "--runs", "2", "--json", "--threads", "1")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    for key in ("decode_tokens_per_s", "ttft_s", "prefill_tokens_per_s", "peak_rss_mb", "decode_tokens_per_s_spread",
                "ttft_s_spread", "size_mb", "runs", "threads", "hint"):
        assert key in out, key
    assert out["decode_tokens_per_s"] > 0 and out["ttft_s"] > 0 and out["peak_rss_mb"] > 10
    assert out["decode_tokens_per_s_spread"]["runs"] == 2


def test_peak_rss_is_the_process_own_not_the_parents():
    """A benchmark started by a large process reports its own peak: Linux hands the parent's RSS to a
    child's ru_maxrss at exec (so the old measure read this test process's 400 MB), VmHWM is the child's."""
    big = np.ones((400 << 20) // 4, np.float32)
    del big
    code = "from pressa.evaluate.latency import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 5 < child < 250, child
