"""Calibration statistics for accuracy-aware quantization: the inputs of every linear layer, seen on
calibration text through the fp32 graph (built with extra outputs into a temporary folder).

Per weight key ("{layer}.qkv", ".o", ".gate_up", ".down"): H = X^T X (GPTQ), mean |x| per channel
and a random sample of input rows (AWQ's scale search)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pressa.errors import BadArgument
from pressa.tempdirs import temp_dir

SAMPLE_ROWS = 512


@dataclass
class InputStats:
    h: np.ndarray                       # [K, K] float32, sum of x x^T
    abs_sum: np.ndarray                 # [K] float64
    count: int = 0
    rows: list = field(default_factory=list)

    @property
    def absmean(self) -> np.ndarray:
        return (self.abs_sum / max(self.count, 1)).astype(np.float32)

    def sample(self) -> np.ndarray:
        return np.concatenate(self.rows)[:SAMPLE_ROWS]


def calibration_windows(text: str, encode: Callable[[str], list[int]], samples: int, seqlen: int,
                        seed: int = 0) -> list[list[int]]:
    """Windows of `seqlen` tokens from the text's paragraphs (headings and short lines skipped),
    drawn at random positions so that they cover the whole file."""
    lines = [ln.strip() for ln in text.splitlines() if len(ln.strip()) > 80 and not ln.strip().startswith("=")]
    if not lines:
        raise BadArgument("the calibration data has no usable lines (paragraphs of 80+ characters)")
    rng = np.random.default_rng(seed)
    out, tries = [], 0
    while len(out) < samples and tries < samples * 50:
        tries += 1
        start = int(rng.integers(0, len(lines)))
        ids: list[int] = []
        for ln in lines[start:]:
            ids += encode(ln + "\n")
            if len(ids) >= seqlen:
                break
        if len(ids) >= seqlen:
            out.append(ids[:seqlen])
    if not out:
        raise BadArgument(f"the calibration data is shorter than one window of {seqlen} tokens")
    return out


def collect(cfg, weights, tokenizer_files: dict, text: str, samples: int = 64, seqlen: int = 256,
            progress: Callable[[int, int, str], None] | None = None, seed: int = 0) -> dict[str, InputStats]:
    import onnxruntime as ort

    from pressa.capture.decoder import BuildOptions, DecoderBuilder
    from pressa.genai.tokenizer import TextTokenizer
    from pressa.runtime.session import session_options

    with temp_dir("calibration-") as d:
        folder = Path(d)
        for name, data in tokenizer_files.items():
            (folder / name).write_bytes(data)
        tok = TextTokenizer(folder)
        windows = calibration_windows(text, lambda s: tok.encode(s, add_special_tokens=False), samples, seqlen,
                                      seed)
        DecoderBuilder(cfg, weights, BuildOptions(precision="fp32", capture_inputs=True)).build(folder)
        sess = ort.InferenceSession(str(folder / "model.onnx"), session_options(hint="throughput"),
                                    providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs() if o.name.startswith("calib.")]
        empty = np.zeros((1, cfg.num_kv_heads, 0, cfg.head_dim), np.float32)
        feeds = {f"past_key_values.{i}.{kv}": empty for i in range(cfg.num_layers) for kv in ("key", "value")}
        stats: dict[str, InputStats] = {}
        rng = np.random.default_rng(seed)
        per_window = max(1, SAMPLE_ROWS // len(windows) + 1)
        for wi, ids in enumerate(windows):
            feeds["input_ids"] = np.asarray([ids], np.int64)
            feeds["attention_mask"] = np.ones((1, len(ids)), np.int64)
            for name, x in zip(names, sess.run(names, feeds)):
                x = x.reshape(-1, x.shape[-1]).astype(np.float32)
                key = name[len("calib."):]
                st = stats.get(key)
                if st is None:
                    st = stats[key] = InputStats(np.zeros((x.shape[1],) * 2, np.float32), np.zeros(x.shape[1]))
                st.h += x.T @ x
                st.abs_sum += np.abs(x).sum(axis=0)
                st.count += x.shape[0]
                st.rows.append(x[rng.choice(x.shape[0], min(per_window, x.shape[0]), replace=False)])
            if progress:
                progress(wi + 1, len(windows), f"calibration {wi + 1}/{len(windows)}")
        del sess
    return stats
