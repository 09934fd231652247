"""pressa finetune: a tiny random model learns a fixed mapping it could not answer before, the adapter is
peft's own format, and auto-opt --adapter_path builds what peft's merged model computes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from finetune_data import TEMPLATE, mapping_records, write_jsonl

from conftest import make_tiny, rng_rows
from helpers import assert_user_error, run_cli

pytest.importorskip("peft")


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
    from pressa.capture.build_options import BuildOptions
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
