"""Workflow metrics for an artifact: latency (avg, min, max, percentiles), throughput, size, peak
memory, perplexity (LLMs, on a text file), and agreement with the original model. LLM latency is per
decoded token after a short prompt; other models' latency is one run at batch 1."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pressa.artifact import read_json
from pressa.engine.config import MetricSpec
from pressa.errors import BadArgument

# a small text of our own for the default perplexity check, when a workflow names no data
DEFAULT_TEXT = (
    "The river runs through the middle of the old town, and most of the streets lead down to it. In the "
    "morning the market opens on the eastern bank, where farmers bring vegetables, bread and cheese from the "
    "villages in the hills. Children walk to school across the stone bridge, which was built more than three "
    "hundred years ago and has been repaired many times since. In the afternoon the square fills with people "
    "who sit in the shade of the trees, read newspapers, and talk about the weather, the harvest and the news "
    "from the capital. When the sun goes down, the lamps along the water are lit one by one, and the sound of "
    "music comes from the small restaurants near the harbour. Visitors often say that the town feels as if time "
    "moves more slowly there. The people who live in it would say that they simply know what matters to them: "
    "good food, old friends, and a quiet evening by the river after a long day of work.\n") * 3


def _latency_stats(times: list[float]) -> dict:
    a = np.asarray(times) * 1e3
    return {"avg": float(a.mean()), "min": float(a.min()), "max": float(a.max()),
            **{f"p{q}": float(np.percentile(a, q)) for q in (50, 75, 90, 95, 99)},
            "p999": float(np.percentile(a, 99.9))}


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file() and f.name != ".complete") / 1e6


def _seq_len(art: Path, default: int = 128) -> int:
    """Tokens per made-up input: 128, or fewer when the model's positions end sooner."""

    cfg = Path(art) / "config.json"
    limit = read_json(cfg).get("max_position_embeddings") if cfg.is_file() else None
    return min(default, int(limit) - 2) if limit else default


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6


class Evaluator:
    def __init__(self, metrics: list[MetricSpec], original: Path | None = None, runs: int = 20,
                 guard: bool = False, guard_data: str | None = None, runtime=None):
        """`runtime` (RuntimeOptions): the runtime the candidates are measured on (default ONNX Runtime, CPU)."""
        from pressa.runtime.options import RuntimeOptions

        self.runtime = runtime or RuntimeOptions()
        self.metrics, self.original, self.runs = metrics, original, runs
        self.guard, self.guard_data = guard, guard_data
        self._ref_cache: dict = {}

    def __call__(self, art: Path) -> dict:
        from pressa.artifact import ArtifactKind, kind_of

        out = {}
        llm = kind_of(art) == ArtifactKind.DECODER_LLM
        for m in self.metrics:
            out[m.name] = self._llm(m, art) if llm else self._onnx(m, art)
        if self.guard and not any(m.type in ("accuracy", "perplexity") for m in self.metrics):
            g = MetricSpec("accuracy guard", "perplexity" if llm else "accuracy", [], self.guard_data)
            out["accuracy guard"] = self._llm(g, art) if llm else self._onnx(g, art)
        return out

    # -- LLM artifacts ------------------------------------------------------------------------
    def _llm(self, m: MetricSpec, art: Path) -> dict:
        import pressa
        from pressa.genai.sampling import SamplingConfig

        if m.type == "size":
            return {"mb": _size_mb(art)}
        if m.type == "perplexity":
            from pressa.evaluate.perplexity import perplexity

            text = Path(m.data).read_text(errors="replace") if m.data else DEFAULT_TEXT
            windows, size = (4, 256) if m.data else (1, 256)
            return {"perplexity": perplexity(art, text, windows, size)["perplexity"]}
        if m.type == "accuracy":
            return {"agreement": self._llm_agreement(art, m.data)}
        before = _rss_mb()
        model = pressa.load(art, **self.runtime.model_dump(), prefix_cache_mb=0)     # each run a whole prefill
        prompt = model.tokenizer.encode(DEFAULT_TEXT[:400], add_special_tokens=False)[:64]
        cfg = SamplingConfig(max_new_tokens=self.runs + 1, ignore_eos=True)
        stamps = [time.perf_counter()]
        for _ in model.generate_ids([prompt], cfg):
            stamps.append(time.perf_counter())
        steps = list(np.diff(stamps[1:]))            # decode steps (the first stamp pair is prefill)
        if m.type == "latency":
            return _latency_stats(steps)
        if m.type == "throughput":
            return {"avg": len(steps) / sum(steps), "tokens_per_s": len(steps) / sum(steps)}
        if m.type == "memory":
            return {"peak_mb": _rss_mb() - before}
        raise BadArgument(f"metric type {m.type} is not measured for LLMs")

    def _llm_agreement(self, art: Path, data: str | None) -> float:
        """Top-1 next-token agreement with the original (fp32) build on the text's positions."""
        from pressa.evaluate.agreement import artifact_logits

        if self.original is None:
            return float("nan")
        from pressa.genai.tokenizer import TextTokenizer

        text = Path(data).read_text(errors="replace") if data else DEFAULT_TEXT
        ids = TextTokenizer(art).encode(text, add_special_tokens=False)[:256]
        key = ("llm", str(data))
        if key not in self._ref_cache:
            self._ref_cache[key] = artifact_logits(self.original)(ids).argmax(-1)
        got = artifact_logits(art)(ids).argmax(-1)
        return float((got == self._ref_cache[key]).mean())

    # -- any ONNX artifact ----------------------------------------------------------------------
    def _onnx(self, m: MetricSpec, art: Path) -> dict:
        from pressa.evaluate.latency import run_times
        from pressa.graph.inputs import sample_inputs
        from pressa.graph.onnx_io import find_model, load_model
        from pressa.runtime.session import open_session

        if m.type == "size":
            return {"mb": _size_mb(art)}
        if m.type == "perplexity":
            raise BadArgument("perplexity is measured for LLM artifacts (ModelBuilder); use accuracy for others")
        if m.type == "accuracy":
            return self._onnx_agreement(art, m.data)
        before = _rss_mb()
        s = open_session(find_model(art), runtime=self.runtime)
        graph = load_model(art, load_data=False)
        batch = 8 if m.type == "throughput" else 1
        feeds = sample_inputs(graph, batch=batch, seq=_seq_len(art))
        times = run_times(lambda: s.run(None, feeds), self.runs)
        if m.type == "latency":
            return _latency_stats(times)
        if m.type == "throughput":
            return {"avg": batch / float(np.mean(times)), "items_per_s": batch / float(np.mean(times))}
        if m.type == "memory":
            return {"peak_mb": _rss_mb() - before}
        raise BadArgument(f"unknown metric type {m.type}")

    def _onnx_agreement(self, art: Path, data: str | None) -> dict:
        from pressa.evaluate.compare import compare

        if self.original is None:
            return {"agreement": float("nan")}
        r = compare(self.original, art, Path(data) if data else None, samples=32, runs=1, runtime=self.runtime)
        first = next(iter(r["outputs"].values()))
        out = {"agreement": r["score"]}
        if "cosine_mean" in first:
            out["cosine"] = first["cosine_mean"]
        if "top1_agreement" in first:
            out["top1"] = first["top1_agreement"]
        return out
