"""pressa finetune: a tiny random model learns a fixed mapping it could not answer before, the adapter is
peft's own format, and auto-opt --adapter_path builds what peft's merged model computes."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import make_tiny, rng_rows
from helpers import assert_user_error, run_cli

pytest.importorskip("peft")

MAP = {f"t{20 + i}": f"t{100 + (i * 7) % 40}" for i in range(12)}
TEMPLATE = "t5 {question} t6 {answer}"


def mapping_records(n: int, seed: int) -> list[dict]:
    """Questions with random filler before the mapped token; the answer is the mapping's."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q = rng.choice(sorted(MAP))
        filler = " ".join(f"t{rng.randrange(40, 90)}" for _ in range(rng.randrange(1, 4)))
        out.append({"question": f"{filler} {q}", "answer": MAP[q]})
    return out


def write_jsonl(path, recs):
    path.write_text("\n".join(json.dumps(r) for r in recs))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pressa.finetune.data import DataOptions
    from pressa.finetune.run import finetune
    from pressa.finetune.train import LoraOptions

    tmp = tmp_path_factory.mktemp("finetune")
    hf = make_tiny("llama", tmp / "hf")
    data = write_jsonl(tmp / "train.jsonl", mapping_records(240, 0))
    manifest = finetune(str(hf), DataOptions(data_files=str(data), text_template=TEMPLATE, eval_share=0.1),
                        LoraOptions(lora_r=16, lora_alpha=32, max_steps=200, learning_rate=3e-3, batch_size=8),
                        tmp / "adapter")
    return hf, tmp / "adapter", manifest


def greedy_answers(model, tok, recs) -> int:
    import torch

    right = 0
    for r in recs:
        ids = tok.encode(f"t5 {r['question']} t6")
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=1, do_sample=False, pad_token_id=0)
        right += tok.decode(out[0, len(ids):].tolist()) == r["answer"]
    return right


def test_lora_learns_a_mapping_it_could_not_answer(trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pressa.genai.tokenizer import TextTokenizer

    hf, adapter, manifest = trained
    f = manifest["finetune"]
    assert f["losses"][0] / f["losses"][-1] >= 10 and f["eval_loss_before"] / f["eval_loss_after"] >= 10
    held = mapping_records(24, seed=99)                         # fillers never seen in training
    tok = TextTokenizer(hf)
    base = AutoModelForCausalLM.from_pretrained(str(hf)).eval()
    assert greedy_answers(base, tok, held) <= 4
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(hf)), str(adapter)).eval()
    assert greedy_answers(tuned, tok, held) == len(held)
    assert (adapter / "loss.png").stat().st_size > 1000
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(hf)


def test_merged_build_equals_peft_merged_model(trained, tmp_path):
    """auto-opt --adapter_path (fp32) gives the logits of peft's merge_and_unload, prefill and steps."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pressa.genai.decoder_session import DecoderSession

    from conftest import hf_left_padded

    hf, adapter, _ = trained
    res = run_cli("auto-opt", "-m", str(hf), "--adapter_path", str(adapter), "--precision", "fp32",
                  "-o", str(tmp_path / "merged"))
    assert res.returncode == 0, res.stderr
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(hf), attn_implementation="eager"),
                                       str(adapter)).merge_and_unload().eval()
    rows = rng_rows(4, lengths=(6, 3))
    ref, steps = hf_left_padded(merged, rows, [[5, 6], [7, 8]])
    s = DecoderSession(tmp_path / "merged", threads=1, all_logits=True)
    _, full = s.prefill(rows, capacity=10)
    for b, r in enumerate(rows):
        assert np.abs(full[b, : len(r)] - ref[b]).max() < 1e-4
    for tokens, want in zip([[5, 6], [7, 8]], steps):
        assert np.abs(s.step(np.array(tokens)) - want).max() < 1e-4


def test_chat_template_trains_on_the_assistant_turns_only(tmp_path):
    from pressa.finetune.data import DataOptions, example
    from pressa.genai.tokenizer import TextTokenizer

    tok = TextTokenizer(make_tiny("llama", tmp_path / "hf"))
    tok.eos_id = 2
    rec = {"messages": [{"role": "user", "content": "t30 t31"}, {"role": "assistant", "content": "t40 t41"},
                        {"role": "user", "content": "t32"}, {"role": "assistant", "content": "t42"}]}
    ex = example(tok, rec, DataOptions(use_chat_template=True))
    trained = [tok.tok.id_to_token(i) for i, keep in zip(ex.ids, ex.trained) if keep]
    # the tiny template renders each turn as "t10 {content} t11": the assistant's content and its closing t11
    assert trained == ["t10", "t40", "t41", "t11", "t10", "t42", "t11"]


def test_bad_data_is_one_line(tmp_path):
    hf = make_tiny("llama", tmp_path / "hf")
    good = write_jsonl(tmp_path / "d.jsonl", mapping_records(20, 1))
    (tmp_path / "empty.jsonl").write_text("")
    write_jsonl(tmp_path / "blank.jsonl", [{"question": "t30", "answer": ""}] * 10)
    cases = [(["--data_files", str(good), "--text_template", "t5 {question} t6 {reply}"], ("{reply}", "answer")),
             (["--data_files", str(tmp_path / "empty.jsonl"), "--text_template", TEMPLATE], ("empty",)),
             (["--data_files", str(tmp_path / "blank.jsonl"), "--text_template", TEMPLATE], ("no training example",)),
             (["--data_files", str(good), "--text_template", TEMPLATE, "--method", "qlora"], ("qlora", "CUDA")),
             (["--text_template", TEMPLATE], ("--data_files",))]
    for args, said in cases:
        res = run_cli("finetune", "-m", str(hf), "-o", str(tmp_path / "out"), "--max_steps", "2", *args)
        assert_user_error(res, *said)
        assert not (tmp_path / "out").exists()


def test_ctrl_c_keeps_the_adapter_and_resume_continues(tmp_path):
    hf = make_tiny("llama", tmp_path / "hf")
    data = write_jsonl(tmp_path / "d.jsonl", mapping_records(64, 2))
    args = [sys.executable, "-m", "pressa", "finetune", "-m", str(hf), "--data_files", str(data), "--text_template",
            TEMPLATE, "--lora_r", "8", "--batch_size", "2", "-o", str(tmp_path / "ad")]
    proc = subprocess.Popen([*args, "--max_steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal,
    # even when the tests themselves run in the background, where a shell starts them with SIGINT ignored
    seen = b""
    while b"Ctrl-C stops" not in seen and proc.poll() is None:    # the line said when the steps begin
        seen += proc.stderr.readline()
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)          # a guard against a hang; a loaded machine is slow
    assert proc.returncode == 130, err.decode()[-3000:]
    done = json.loads((tmp_path / "ad" / "pressa.json").read_text())["finetune"]
    assert done["interrupted"] and 0 < done["steps"] < 100000
    res = subprocess.run([*args, "--max_steps", str(done["steps"] + 3), "--resume"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    again = json.loads((tmp_path / "ad" / "pressa.json").read_text())["finetune"]
    assert again["steps"] == done["steps"] + 3 and again["losses"][: done["steps"]] == done["losses"]


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
    from pressa.capture.decoder import BuildOptions
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
    linear exactly A, the mask and the Concat run (A's zero columns pad t to the blocks, no Pad node; one
    row mask shared by every linear); no adapter gives the plain int4 build's logits, the adapter carries
    the fp32 merged build's change within 1.2x the error of merging it and then quantizing (on this tiny
    model int4's own noise dominates: 0.38 against 0.34 of the change's norm; at energy 1.0, 0.33)."""
    import onnx

    from pressa.capture.decoder import BuildOptions
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


def test_workflow_fine_tunes_then_builds_and_guards_against_the_tuned_model(tmp_path):
    """pressa run: Olive's LoRA pass, then ModelBuilder; the accuracy guard's reference is the fine-tuned
    model (as fp32), not the base."""
    import pressa

    hf = make_tiny("llama", tmp_path / "hf")
    data = write_jsonl(tmp_path / "train.jsonl", mapping_records(240, 0))
    cfg = {"input_model": {"type": "HfModel", "model_path": str(hf)},
           "passes": {"tune": {"type": "LoRA", "data_files": str(data), "text_template": TEMPLATE, "lora_r": 16,
                               "lora_alpha": 32, "max_steps": 200, "learning_rate": 3e-3, "batch_size": 8},
                      "build": {"type": "ModelBuilder", "precision": "int8"}},
           "evaluators": {"e": {"metrics": [{"name": "agree", "type": "accuracy",
                                             "sub_types": [{"name": "agreement"}]}]}},
           "cache_dir": "c", "output_dir": "out"}
    (tmp_path / "w.json").write_text(json.dumps(cfg))
    res = run_cli("run", "--config", str(tmp_path / "w.json"))
    assert res.returncode == 0, res.stderr
    assert "reference: the fine-tuned model as fp32" in res.stderr
    foot = json.loads((tmp_path / "out" / "footprints.json").read_text())
    agree = foot["trials"][foot["chosen"]]["metrics"]["agree"]["agreement"]
    assert agree > 0.9                                    # int8 of the tuned model against the tuned model
    m = pressa.load(tmp_path / "out")
    held = mapping_records(12, seed=7)
    assert all(m.generate(f"t5 {r['question']} t6", chat=False, max_new_tokens=1).strip() == r["answer"]
               for r in held)


def test_data_name_reads_a_dataset_folder_and_its_splits(tmp_path):
    """--data_name takes what datasets.load_dataset takes (a Hub name from the local cache, or a folder of
    data files with splits); --eval_split names the held-out split."""
    from pressa.finetune.data import DataOptions, records

    folder = tmp_path / "ds"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", mapping_records(30, 4))
    write_jsonl(folder / "test.jsonl", mapping_records(5, 5))
    train, held = records(DataOptions(data_name=str(folder), eval_split="test", text_template=TEMPLATE))
    assert len(train) == 30 and len(held) == 5 and held[0] == mapping_records(5, 5)[0]


def test_a_gguf_model_is_fine_tuned_and_merged(tmp_path):
    """A GGUF source is written out as a trainable folder; its adapter merges back into the GGUF's build."""
    from pressa.capture.decoder import BuildOptions
    from pressa.capture.llm import build_llm
    from pressa.finetune.data import DataOptions
    from pressa.finetune.run import finetune
    from pressa.finetune.train import LoraOptions
    from pressa.genai.decoder_session import DecoderSession

    from gguf_files import write_gguf

    hf = make_tiny("llama", tmp_path / "hf")
    write_gguf(hf, tmp_path / "tiny.gguf")
    # the test GGUF's byte-level vocabulary spells bytes 0x00..0x20 (gguf_files): text of control characters
    data = write_jsonl(tmp_path / "d.jsonl", [{"q": chr(3 + i % 20), "a": chr(3 + (i * 7) % 20)} for i in range(40)])
    f = finetune(str(tmp_path / "tiny.gguf"), DataOptions(data_files=str(data), text_template="\x01{q}\x02{a}"),
                 LoraOptions(lora_r=8, max_steps=3, batch_size=4), tmp_path / "ad")["finetune"]
    assert f["steps"] == 3 and len(f["losses"]) == 3
    build_llm(str(tmp_path / "tiny.gguf"), tmp_path / "base", BuildOptions(precision="fp32"))
    build_llm(str(tmp_path / "tiny.gguf"), tmp_path / "tuned", BuildOptions(precision="fp32",
                                                                            adapter_path=str(tmp_path / "ad")))
    rows = [[5, 9, 17, 33]]
    base, tuned = (DecoderSession(tmp_path / p, threads=1).prefill(rows, capacity=6)[0] for p in ("base", "tuned"))
    assert np.abs(base - tuned).max() > 1e-3                 # the adapter reached the GGUF's weights


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

    from pressa.capture.decoder import BuildOptions
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


def test_a_folder_written_from_transposed_arrays_reads_back_equal(tmp_path):
    """write_folder over a reader that returns transposed views (as a Conv1D weight or a fan_in_fan_out
    merge can): safetensors reads back the arrays themselves, not their buffers in memory order."""
    from types import SimpleNamespace

    from safetensors.numpy import load_file

    from pressa.finetune.train import write_folder

    class Reader:
        names = ["a", "b"]

        def __call__(self, name):
            return {"a": np.arange(12, dtype=np.float32).reshape(3, 4).T, "b": np.ones((2, 2), np.float32)}[name]

    write_folder(SimpleNamespace(config={"model_type": "llama"}, tokenizer_files={}), Reader(), tmp_path)
    back = load_file(str(tmp_path / "model.safetensors"))
    assert sorted(back) == Reader.names and all(np.array_equal(back[n], Reader()(n)) for n in Reader.names)
