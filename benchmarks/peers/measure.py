"""Measure one tool on one converted model; runs inside that tool's own virtual environment.

    python measure.py TOOL MODEL_PATH HF_DIR DATA_FILE [--runs 3] [--perplexity-only]

Prints one JSON line: decode tokens/s (128 greedy tokens after the chat prompt), TTFT for the chat
prompt and for a 512-token prompt, perplexity by the shared protocol (first 32 windows of 512
tokens of the whole file, no special tokens). Token ids come from the HF folder's tokenizer.json
for every tool, so all tools see the same inputs.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np

QUESTION = "What is machine learning? Explain it in simple terms for a beginner."
NEW = 128


def protocol(hf_dir: str, data: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(f"{hf_dir}/tokenizer.json")
    text = open(data, encoding="utf-8").read()
    ids = tok.encode(text, add_special_tokens=False).ids
    windows = [ids[i * 512:(i + 1) * 512] for i in range(32)]
    chat_text = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                 "<|im_end|>\n<|im_start|>user\n" + QUESTION + "<|im_end|>\n<|im_start|>assistant\n")
    chat = tok.encode(chat_text, add_special_tokens=False).ids
    return tok, windows, chat, windows[40 % len(windows)] if len(windows) > 1 else windows[0], chat_text


def nll(logits: np.ndarray, ids) -> float:
    x = logits[:-1].astype(np.float64)
    m = x.max(-1, keepdims=True)
    lse = (np.log(np.exp(x - m).sum(-1, keepdims=True)) + m)[:, 0]
    return float(np.mean(lse - x[np.arange(len(ids) - 1), np.asarray(ids[1:])]))


def med(xs):
    return statistics.median(xs)


# -- tools: each returns (ttft(ids) -> s, decode(ids) -> tok/s, logits(ids) -> [S, V]) ----------------

def tool_pressa(path, backend="onnxruntime"):
    import pressa
    from pressa.genai.decoder_session import DecoderSession
    from pressa.genai.sampling import SamplingConfig

    m = pressa.load(path, threads=2, backend=backend)
    full = DecoderSession(path, threads=2, all_logits=True)

    def ttft(ids):
        t0 = time.perf_counter()
        next(m.generate_ids([ids], SamplingConfig(max_new_tokens=1, ignore_eos=True)))
        return time.perf_counter() - t0

    def decode(ids):
        st = [time.perf_counter() for _ in m.generate_ids([ids], SamplingConfig(max_new_tokens=NEW, ignore_eos=True))]
        return (len(st) - 1) / (st[-1] - st[0])

    return ttft, decode, lambda ids: full.prefill([ids], len(ids))[1][0]


def tool_pressa_openvino(path):
    return tool_pressa(path, "openvino")


def tool_pressa_auto(path):
    """Each phase on the runtime pressa measured faster for it (prefill and decode may differ)."""
    return tool_pressa(path, "auto")


def tool_olive(path):
    import onnxruntime as ort
    import onnxruntime_genai as og

    model = og.Model(path)

    def run(ids, n):
        p = og.GeneratorParams(model)
        p.set_search_options(max_length=len(ids) + n, min_length=len(ids) + n, do_sample=False)
        g = og.Generator(model, p)
        t0 = time.perf_counter()
        g.append_tokens(np.asarray(ids, np.int32))
        st = []
        while not g.is_done():
            g.generate_next_token()
            st.append(time.perf_counter())
        return t0, st

    def ttft(ids):
        t0, st = run(ids, 1)
        return st[0] - t0

    def decode(ids):
        _, st = run(ids, NEW)
        return (len(st) - 1) / (st[-1] - st[0])

    import glob
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(glob.glob(f"{path}/*.onnx")[0], so, providers=["CPUExecutionProvider"])

    def logits(ids):
        feeds = {}
        for i in sess.get_inputs():
            if i.name == "input_ids":
                feeds[i.name] = np.asarray([ids], np.int64)
            elif i.name == "attention_mask":
                feeds[i.name] = np.ones((1, len(ids)), np.int64)
            elif i.name == "position_ids":
                feeds[i.name] = np.arange(len(ids), dtype=np.int64)[None]
            elif "past" in i.name:
                dt = np.float16 if "16" in i.type else np.float32
                feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), dt)
        return sess.run(["logits"], feeds)[0][0]

    return ttft, decode, logits


def tool_openvino(path):
    import openvino_genai as ov_genai

    sc = ov_genai.SchedulerConfig()
    sc.enable_prefix_caching = False
    pipe = ov_genai.LLMPipeline(path, "CPU", scheduler_config=sc)
    tok = pipe.get_tokenizer()

    def gen(ids, n):
        import openvino as ov

        cfg = ov_genai.GenerationConfig()
        cfg.max_new_tokens = n
        cfg.min_new_tokens = n
        cfg.do_sample = False
        res = pipe.generate(ov.Tensor(np.asarray([ids], np.int64)), cfg)
        return res.perf_metrics

    def ttft(ids):
        return gen(ids, 1).get_ttft().mean / 1000

    def decode(ids):
        return 1000.0 / gen(ids, NEW).get_tpot().mean

    import torch
    from optimum.intel import OVModelForCausalLM

    m = OVModelForCausalLM.from_pretrained(path, ov_config={"INFERENCE_NUM_THREADS": 2})

    def logits(ids):
        with torch.no_grad():
            return m(input_ids=torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long)
                     ).logits[0].float().numpy()

    del tok
    return ttft, decode, logits


def tool_llamacpp(path):
    from llama_cpp import Llama

    fast = Llama(model_path=path, n_ctx=1024, n_threads=2, n_batch=512, verbose=False)
    full = Llama(model_path=path, n_ctx=1024, n_threads=2, n_batch=512, logits_all=True, verbose=False)

    def ttft(ids):
        fast.reset()
        t0 = time.perf_counter()
        fast.eval(ids)
        int(np.argmax(fast.scores[fast.n_tokens - 1]))
        return time.perf_counter() - t0

    def decode(ids):
        fast.reset()
        fast.eval(ids)
        st = []
        for _ in range(NEW):
            t = int(np.argmax(fast.scores[fast.n_tokens - 1]))
            st.append(time.perf_counter())
            fast.eval([t])
        return (len(st) - 1) / (st[-1] - st[0])

    def logits(ids):
        full.reset()
        full.eval(ids)
        return np.array(full.scores[: len(ids)])

    return ttft, decode, logits


def tool_pytorch(path):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    @torch.no_grad()
    def ttft(ids):
        t0 = time.perf_counter()
        int(m(torch.tensor([ids])).logits[0, -1].argmax())
        return time.perf_counter() - t0

    @torch.no_grad()
    def decode(ids):
        out = m(torch.tensor([ids]), use_cache=True)
        past, st = out.past_key_values, []
        t = out.logits[0, -1].argmax()
        for _ in range(NEW):
            st.append(time.perf_counter())
            out = m(t.view(1, 1), past_key_values=past, use_cache=True)
            past, t = out.past_key_values, out.logits[0, -1].argmax()
        return (len(st) - 1) / (st[-1] - st[0])

    @torch.no_grad()
    def logits(ids):
        return m(torch.tensor([ids])).logits[0].numpy()

    return ttft, decode, logits


def main():
    tool, path, hf_dir, data = sys.argv[1:5]
    runs = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 3
    _, windows, chat, long_ids, _ = protocol(hf_dir, data)
    ttft, decode, logits = globals()[f"tool_{tool}"](path)
    if "--perplexity-only" in sys.argv:               # accuracy per bit (benchmarks/accuracy_per_bit.py)
        print(json.dumps({"tool": tool, "perplexity": float(np.exp(np.mean([nll(logits(w), w) for w in windows])))}))
        return
    ttft(chat), ttft(long_ids), decode(chat)          # warm-up
    res = {"tool": tool,
           "ttft_chat_s": med([ttft(chat) for _ in range(runs)]),
           "ttft_512_s": med([ttft(long_ids) for _ in range(runs)]),
           "decode_tokens_per_s": med([decode(chat) for _ in range(runs)]),
           "chat_prompt_tokens": len(chat)}
    res["perplexity"] = float(np.exp(np.mean([nll(logits(w), w) for w in windows])))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
