"""Speed of an artifact: decode tokens/s, time to first token, prefill tokens/s, peak memory."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

FILLER = ("The history of the region is long and complex, shaped by trade, migration and the "
          "rise and fall of several kingdoms over many centuries. ")


def spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0, "runs": len(xs)}


def run_times(fn: Callable[[], object], runs: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `runs` calls of `fn`, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB. On Linux the memory map's own high-water mark (VmHWM):
    getrusage's ru_maxrss also counts the RSS of the process that started this one (Linux records the
    parent's at exec), so a benchmark started from a large process would report that process's size."""
    try:
        with open("/proc/self/status") as f:
            hwm = next(line for line in f if line.startswith("VmHWM:"))
        return int(hwm.split()[1]) / 1024
    except (OSError, StopIteration, ValueError, IndexError):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / 1024 if sys.platform != "darwin" else kb / 1024 / 1024


def prompt_of(model, tokens: int, text: str | None = None) -> list[int]:
    """A prompt of exactly `tokens` tokens from `text` (or filler prose)."""
    base = text or FILLER * (tokens // 8 + 8)
    ids = model.tokenizer.encode(base, add_special_tokens=False)
    while len(ids) < tokens:
        ids = ids + ids
    return ids[:tokens]


def benchmark(folder: Path, prompt_tokens: int = 512, new_tokens: int = 128, runs: int = 5, warmup: int = 1,
              threads: int | None = None, hint: str = "latency", device: str = "cpu", text: str | None = None,
              chat_prompt: str | None = None, progress: Callable[[int, int, str], None] | None = None,
              runtime=None, adapter: str | None = None, speculative: str = "off", draft_model=None) -> dict:
    """Warm-up, then `runs` repetitions of: TTFT of a `prompt_tokens` prompt, and decode speed of
    `new_tokens` greedy tokens (EOS ignored) after it; with `chat_prompt`, decode speed is timed
    after that (short) chat prompt instead, as chat users see it. Medians and spread. `speculative`:
    "lookup" decodes with prompt-lookup drafts (genai/speculative.py); the acceptance is reported."""
    import pressa
    from pressa.genai.sampling import SamplingConfig
    from pressa.runtime.options import RuntimeOptions

    runtime = runtime or RuntimeOptions(threads=threads, hint=hint, device=device)
    t_load = time.perf_counter()
    m = pressa.load(folder, **runtime.model_dump(), speculative=speculative, draft_model=draft_model,
                    prefix_cache_mb=0)                 # repeated prompts: each run times a whole prefill
    load_s = time.perf_counter() - t_load
    ids = prompt_of(m, prompt_tokens, text)
    cfg = SamplingConfig(max_new_tokens=new_tokens, ignore_eos=True, adapter=adapter, speculative=speculative)
    m.session.adapter_id(adapter)
    chat_ids = m.encode_prompt(chat_prompt) if chat_prompt else None
    drafted = accepted = 0

    def one(prompt: list[int]) -> tuple[float, float]:
        nonlocal drafted, accepted
        t0 = time.perf_counter()
        stamps, counts = [], []
        for seqs in m.sequences([prompt], cfg):
            stamps.append(time.perf_counter())
            counts.append(seqs[0].count)                  # a verified step may add several tokens
        drafted, accepted = drafted + m.last_batch.drafted, accepted + m.last_batch.accepted
        span = stamps[-1] - stamps[0]
        return stamps[0] - t0, (counts[-1] - counts[0]) / span if span > 0 else float("nan")

    ttfts, decodes, chat_ttfts = [], [], []
    total = warmup + runs
    for r in range(total):
        ttft, dec = one(ids)
        chat_t = None
        if chat_ids:
            chat_t, dec = one(chat_ids)
        if r >= warmup:
            ttfts.append(ttft)
            decodes.append(dec)
            if chat_t is not None:
                chat_ttfts.append(chat_t)
        if progress:
            progress(r + 1, total, "warm-up" if r < warmup else f"run {r + 1 - warmup}/{runs}")
    out = {"artifact": str(folder), "decode_tokens_per_s": statistics.median(decodes),
           "ttft_s": statistics.median(ttfts), "prefill_tokens_per_s": prompt_tokens / statistics.median(ttfts),
           "peak_rss_mb": peak_rss_mb(), "load_s": load_s, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
           "runs": runs, "threads": runtime.threads, "hint": runtime.hint, "backend": type(m.session).__name__,
           "decode_tokens_per_s_spread": spread(decodes), "ttft_s_spread": spread(ttfts),
           "size_mb": sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file()) / 1e6}
    if speculative != "off":
        out.update(speculative=speculative, drafted_tokens=drafted, accepted_tokens=accepted,
                   acceptance=accepted / drafted if drafted else 0.0)
    if chat_ttfts:
        out["ttft_chat_s"] = statistics.median(chat_ttfts)
        out["chat_prompt_tokens"] = len(chat_ids)
    return out


def benchmark_tensor_model(folder: Path, runtime, batch_size: int = 32, seq_len: int = 128, runs: int = 5,
                           warmup: int = 1, progress: Callable[[int, int, str], None] | None = None) -> dict:
    """An encoder (or any tensor model) on made-up inputs: rows/s at `batch_size` x `seq_len` (with a
    throughput hint on OpenVINO, batches in flight on its asynchronous request queue), latency at
    batch 1, peak RSS."""
    from pressa.graph.inputs import inputs_graph, sample_inputs
    from pressa.graph.onnx_io import find_model, load_model
    from pressa.runtime.encoder import EncoderModel

    t_load = time.perf_counter()
    m = EncoderModel(folder, **runtime.model_dump())
    load_s = time.perf_counter() - t_load
    path = find_model(folder)
    graph = load_model(path, load_data=False) if path.suffix == ".onnx" else inputs_graph(m.session.get_inputs())
    batch = sample_inputs(graph, batch=batch_size, seq=seq_len)
    if "attention_mask" in batch:
        batch["attention_mask"][:] = 1              # every row full length: rows/s at seq_len tokens
    one = {k: v[:1] for k, v in batch.items()}
    in_flight = m.session.parallel_requests() if hasattr(m.session, "parallel_requests") else 1
    if in_flight > 1:
        times = [t / in_flight for t in run_times(lambda: m.session.run_many([batch] * in_flight), runs, warmup)]
    else:
        times = run_times(lambda: m.session.run(None, batch), runs, warmup)
    if progress:
        progress(1, 2, "latency at batch 1")
    latency = run_times(lambda: m.session.run(None, one), max(runs, 10), warmup)
    if progress:
        progress(2, 2, "done")
    return {"artifact": str(folder), "backend": m.runtime.backend, "device": m.runtime.device,
            "hint": m.runtime.hint, "rows_per_s": batch_size / statistics.median(times),
            "latency_batch1_ms": statistics.median(latency) * 1e3, "batch_size": batch_size, "seq_len": seq_len,
            "requests_in_flight": in_flight, "peak_rss_mb": peak_rss_mb(), "load_s": load_s, "runs": runs,
            "batch_s_spread": spread(times),
            "size_mb": sum(f.stat().st_size for f in Path(m.folder).iterdir() if f.is_file()) / 1e6}
