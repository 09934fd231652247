"""Run-time LoRA adapters (auto-opt --adapters): several adapters and the base in one artifact, each equal to its
merged build, per row inside one continuous batch, picked by name on every command, kept at the rank that
holds a share of each update's energy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from finetune_data import MAP

from conftest import rng_rows
from helpers import assert_user_error, run_cli

pytest.importorskip("peft")


def random_adapter(hf, folder, seed: int = 3):
    """A LoRA adapter with random A and B (rank 4, q and v only): a second, differently shaped adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(hf)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def runtime_builds(trained, tmp_path_factory):
    """fp32 builds of one base: with both adapters at run time, each merged, and plain."""
    from pressa.capture.build_options import BuildOptions
    from pressa.capture.llm import build_llm

    hf, adapter, _ = trained
    tmp = tmp_path_factory.mktemp("runtime-adapters")
    other = random_adapter(hf, tmp / "other-adapter")
    specs = f"map={adapter},other={other}"
    build_llm(str(hf), tmp / "multi", BuildOptions(precision="fp32", adapters=specs, adapter_energy=1.0))
    build_llm(str(hf), tmp / "base", BuildOptions(precision="fp32"))
    for name, folder in (("map", adapter), ("other", other)):
        build_llm(str(hf), tmp / name, BuildOptions(precision="fp32", adapter_path=str(folder)))
    # int4 with float activations: at accuracy level 4 ONNX Runtime quantizes each MatMulNBits input to
    # int8, where ~1e-7 of summation-order noise (the adapters' extra K blocks) can flip a rounding and
    # move a logit by ~0.03: the comparisons below are of the weights and the graph, not of that
    for prefix, extra in (("multi", dict(adapters=specs, adapter_energy=1.0)), ("base", {}),
                          ("map", dict(adapter_path=str(adapter))), ("other", dict(adapter_path=str(other)))):
        build_llm(str(hf), tmp / f"{prefix}-int4", BuildOptions(precision="int4", accuracy_level=0, **extra))
    return tmp


def test_runtime_adapters_equal_the_merged_builds_and_the_base(runtime_builds):
    from pressa.genai.decoder_session import DecoderSession

    rows = rng_rows(4, lengths=(6, 3))
    multi = DecoderSession(runtime_builds / "multi", threads=1, all_logits=True)
    assert multi.adapters == ["map", "other"]
    for adapter, reference in ((None, "base"), ("map", "map"), ("other", "other")):
        ref = DecoderSession(runtime_builds / reference, threads=1, all_logits=True)
        _, want = ref.prefill(rows, capacity=10)
        _, got = multi.prefill(rows, capacity=10, adapter=adapter)
        assert np.abs(got - want).max() < 1e-4, adapter
        for tokens in ([5, 6], [7, 8]):
            assert np.abs(multi.step(np.array(tokens)) - ref.step(np.array(tokens))).max() < 1e-4, adapter


def test_int4_runtime_adapters_keep_the_base_exact_and_carry_each_adapters_change(runtime_builds):
    """int4: B rides in the base MatMulNBits (its own blocks along K): with no adapter the logits are the
    plain int4 build's; with one, its change from the base is the fp32 merged build's change at least as
    closely as merging the adapter and then quantizing does."""
    from pressa.genai.decoder_session import DecoderSession

    def logits(folder, adapter=None):
        return DecoderSession(runtime_builds / folder, threads=1, all_logits=True).prefill(
            rows, capacity=10, adapter=adapter)[1]

    rows = rng_rows(4, lengths=(6, 3))
    assert np.abs(logits("multi-int4") - logits("base-int4")).max() < 1e-5
    for adapter in ("map", "other"):
        want = logits(adapter) - logits("base")
        got = logits("multi-int4", adapter) - logits("multi-int4")
        merged = logits(f"{adapter}-int4") - logits("base-int4")
        assert np.linalg.norm(got - want) < 1.1 * np.linalg.norm(merged - want), adapter


def test_one_int4_runtime_adapter_at_the_default_energy_adds_three_nodes_per_linear(trained, tmp_path):
    """One adapter, int4, the default --adapter-energy (ranks that do not fill whole blocks): per adapted
    linear exactly A, the mask and the Concat run (no Pad node; one row mask shared by every linear), and
    t is as wide as the ranks kept (the wide weight's K = its input's + A's N, its last block partial); no
    adapter gives the plain int4 build's logits, the adapter carries the fp32 merged build's change within
    1.2x the error of merging it and then quantizing (on this tiny model int4's own noise dominates: 0.38
    against 0.34 of the change's norm; at energy 1.0, 0.33)."""
    import onnx

    from pressa.capture.build_options import BuildOptions
    from pressa.capture.llm import build_llm
    from pressa.genai.decoder_session import DecoderSession

    hf, adapter, _ = trained
    builds = {"rt": dict(precision="int4", accuracy_level=0, adapters=f"map={adapter}"),
              "int4": dict(precision="int4", accuracy_level=0), "fp32": dict(precision="fp32"),
              "merged": dict(precision="fp32", adapter_path=str(adapter)),
              "merged-int4": dict(precision="int4", accuracy_level=0, adapter_path=str(adapter))}
    for name, extra in builds.items():
        build_llm(str(hf), tmp_path / name, BuildOptions(**extra))
    nodes = onnx.load(tmp_path / "rt" / "model.onnx").graph.node
    lora = [n.op_type for n in nodes if "/lora" in n.name and not n.name.startswith("/lora/")]
    linears = sum(n.op_type == "MatMulNBits" and "/lora" not in n.name for n in nodes) - 1      # less lm_head
    assert sorted(set(lora)) == ["Cast", "Concat", "MatMulNBits", "Mul"] and lora.count("Mul") == linears
    assert lora.count("MatMulNBits") == lora.count("Concat") == linears
    assert [n.op_type for n in nodes if n.name.startswith("/lora/mask")] == ["Gather"]
    attrs = {n.name: {a.name: a.i for a in n.attribute} for n in nodes if n.op_type == "MatMulNBits"}
    ranks = {name.removesuffix("/lora/A/MatMulNBits"): a["N"] for name, a in attrs.items() if "/lora/A/" in name}
    assert len(ranks) == linears and any(r % 32 for r in ranks.values())
    assert all(attrs[f"{name}/MatMulNBits"]["K"] == attrs[f"{name}/lora/A/MatMulNBits"]["K"] + r
               for name, r in ranks.items())

    def logits(name, adapter_name=None):
        return DecoderSession(tmp_path / name, threads=1, all_logits=True).prefill(
            rng_rows(4, lengths=(6, 3)), capacity=10, adapter=adapter_name)[1]

    assert np.abs(logits("rt") - logits("int4")).max() < 1e-5
    want = logits("merged") - logits("fp32")
    got = logits("rt", "map") - logits("rt")
    merged = logits("merged-int4") - logits("int4")
    assert np.linalg.norm(got - want) < 1.2 * np.linalg.norm(merged - want)


def test_two_adapters_in_one_continuous_batch_equal_each_alone(runtime_builds):
    import pressa
    from pressa.genai.sampling import SamplingConfig
    from pressa.genai.sequence import Sequence
    from pressa.genai.slots import SlotBatch

    model = pressa.load(runtime_builds / "multi")
    prompts = [[5, 9, 17, 33, 4, 70], [5, 41, 22, 6], [5, 9, 17, 33, 4, 70]]
    adapters = ["map", "other", None]
    alone = []
    for p, a in zip(prompts, adapters):
        cfg = SamplingConfig(max_new_tokens=6, ignore_eos=True, adapter=a)
        alone.append([int(t[0]) for t, _ in model.generate_ids([p], cfg)])
    seqs = [Sequence(list(p), SamplingConfig(max_new_tokens=6, ignore_eos=True, adapter=a))
            for p, a in zip(prompts, adapters)]
    batch = SlotBatch(model.session, 3, 16, model.eos_ids)
    batch.admit(seqs[:2])                       # the third joins after a step, into the running batch
    got = [[s.next_token] for s in seqs[:2]] + [[]]
    batch.step()
    for r in range(2):
        got[r].append(seqs[r].next_token)
    batch.admit(seqs[2:])
    got[2].append(seqs[2].next_token)
    while batch.active:
        batch.step()
        for r, s in enumerate(seqs):
            if len(got[r]) < s.count:
                got[r].append(s.next_token)
    assert got == alone
    assert alone[0] != alone[2]                 # the adapter really changes what the model says


def test_generate_cli_and_api_pick_the_adapter(runtime_builds):
    import pressa

    m = pressa.load(runtime_builds / "multi")
    plain = m.generate("t5 t50 t21 t6", chat=False, max_new_tokens=1)
    mapped = m.generate("t5 t50 t21 t6", chat=False, max_new_tokens=1, adapter="map")
    assert mapped.strip() == MAP["t21"] and plain != mapped
    res = run_cli("generate", str(runtime_builds / "multi"), "t5 t50 t21 t6", "--no-chat", "--max-new-tokens", "1",
                  "--adapter", "map")
    assert res.returncode == 0 and res.stdout.strip() == MAP["t21"], res.stderr
    assert_user_error(run_cli("generate", str(runtime_builds / "multi"), "t5", "--adapter", "nope"),
                      "no adapter named 'nope'", "map, other")


def test_serve_names_adapters_base_colon_adapter(runtime_builds):
    """OpenAI clients pick an adapter with "model": "smol:map"; /v1/models lists the base and each adapter."""
    openai = pytest.importorskip("openai")
    from pressa.serve.models import load_models

    from helpers import KEY, running

    models = load_models([{"name": "smol", "path": str(runtime_builds / "multi")}])
    with running(models, max_tokens=64) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["smol", "smol:map", "smol:other"]
        answers = {}
        for name in ("smol", "smol:map"):
            r = client.completions.create(model=name, prompt="t5 t50 t21 t6", max_tokens=1, temperature=0)
            assert r.model == name
            answers[name] = r.choices[0].text.strip()
        assert answers["smol:map"] == MAP["t21"] != answers["smol"]
        with pytest.raises(openai.NotFoundError, match="smol:map, smol:other"):
            client.completions.create(model="smol:nope", prompt="t5", max_tokens=1)


def test_eval_and_benchmark_take_the_adapter(runtime_builds, tmp_path):
    """pressa eval --adapter measures the adapter: its perplexity equals the merged build's."""
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"t{20 + (i * 13) % 120}" for i in range(400)))
    args = ("--perplexity", str(text), "--windows", "2", "--window-size", "64", "--json")
    got = json.loads(run_cli("eval", str(runtime_builds / "multi"), *args, "--adapter", "map").stdout)
    want = json.loads(run_cli("eval", str(runtime_builds / "map"), *args).stdout)
    base = json.loads(run_cli("eval", str(runtime_builds / "multi"), *args).stdout)
    assert abs(got["perplexity"] - want["perplexity"]) < 1e-3 * want["perplexity"]
    assert abs(got["perplexity"] - base["perplexity"]) > 1e-2
    res = run_cli("benchmark", str(runtime_builds / "multi"), "--prompt-tokens", "8", "--new-tokens", "4", "--runs",
                  "1", "--warmup", "0", "--adapter", "other", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["decode_tokens_per_s"] > 0, res.stderr


def test_compact_keeps_an_update_at_the_rank_that_holds_its_energy():
    """Against numpy's SVD of B A: at 1.0 only the directions that are zero go (a rank-3 product of rank-8
    factors keeps 3); at 0.9 the smallest rank whose squared singular values hold 90%, with exactly the
    rest as its error (Eckart-Young); B's columns come out with unit norm."""
    from pressa.capture.lora import compact

    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 40))
    b = rng.normal(size=(30, 3)) @ rng.normal(size=(3, 8))
    a1, b1 = compact(a, b, 1.0)
    assert a1.shape == (3, 40) and b1.shape == (30, 3)
    assert np.abs(b1 @ a1 - b @ a).max() < 1e-5 * np.abs(b @ a).max()
    assert np.allclose(np.linalg.norm(b1, axis=0), 1.0, atol=1e-5)
    b = rng.normal(size=(30, 8))
    sv = np.linalg.svd(b @ a, compute_uv=False)
    share = np.cumsum(sv ** 2) / np.sum(sv ** 2)
    want = int(np.argmax(share >= 0.9)) + 1
    a9, b9 = compact(a, b, 0.9)
    assert a9.shape[0] == want < 8
    err = np.sum((b @ a - b9.astype(np.float64) @ a9) ** 2)
    assert abs(err - np.sum(sv[want:] ** 2)) < 1e-4 * np.sum(sv ** 2)


def test_runtime_adapters_at_a_lower_energy_keep_fewer_ranks_and_the_adapters_change(trained, tmp_path):
    """--adapter-energy 0.9 on the trained adapter: A has fewer columns than at 1.0, and the adapter's change
    of the logits stays the merged fp32 build's (cosine > 0.95)."""
    import onnx

    from pressa.capture.build_options import BuildOptions
    from pressa.capture.llm import build_llm
    from pressa.genai.decoder_session import DecoderSession

    hf, adapter, _ = trained
    builds = {"base": {}, "merged": dict(adapter_path=str(adapter)),
              "exact": dict(adapters=f"map={adapter}", adapter_energy=1.0),
              "low": dict(adapters=f"map={adapter}", adapter_energy=0.9)}
    for name, extra in builds.items():
        build_llm(str(hf), tmp_path / name, BuildOptions(precision="fp32", **extra))

    def ranks(name):
        init = {t.name: t for t in onnx.load(tmp_path / name / "model.onnx").graph.initializer}
        return sum(t.dims[1] for n, t in init.items() if n.endswith("/lora/A"))

    def logits(name, adapter_name=None):
        return DecoderSession(tmp_path / name, threads=1, all_logits=True).prefill(
            rng_rows(4, lengths=(6, 3)), capacity=10, adapter=adapter_name)[1]

    assert ranks("low") < ranks("exact")
    want = (logits("merged") - logits("base")).ravel()
    got = (logits("low", "map") - logits("low")).ravel()
    assert float(got @ want / np.linalg.norm(got) / np.linalg.norm(want)) > 0.95
