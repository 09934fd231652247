"""Layer-by-layer calibration (GPTQ, AWQ, data-aware --ratio), in memory that does not grow with depth.

The calibration windows' embeddings enter layer 0. Each layer is built alone as a float32 graph whose
extra outputs are its linears' inputs (DecoderBuilder.build_layer); their statistics (H = X^T X, mean
|x|, a sample of rows) quantize the layer with the builder's own GPTQ or AWQ, and the quantized layer,
run on the same windows, gives the next layer its inputs (as GPTQ's reference implementation does: each
layer corrects the error the ones before it made). With calibration_feed "float" (auto-opt
--calibration-feed float) the float layer's outputs go on instead, which reproduces a whole-model float
calibration exactly and runs each layer once instead of twice.

Memory: one layer's float weights, its statistics and the windows' hidden states. Each finished layer's
decisions (codes, scales, AWQ scales) and the hidden states after it are written to a cache folder, so a
build interrupted at layer 20 of 28 resumes at layer 21; the final build reads the decisions back one
layer at a time (LayerResults) and the folder is removed when the artifact is complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from pressa.capture.build_options import BuildOptions
from pressa.capture.calibrate import InputStats, accumulate
from pressa.capture.decoder import HIDDEN, HIDDEN_OUT, DecoderBuilder
from pressa.capture.embeddings import HEAD
from pressa.quant.packing import pack_codes, unpack_codes
from pressa.quant.rtn import QuantizedWeight
from pressa.tempdirs import temp_dir, user_cache_dir

BATCH = 8                       # windows per session run
STATE = "state.json"


def cache_root() -> Path:
    return user_cache_dir() / "calibration"


def cache_key(location: str, windows: list[list[int]], opts: BuildOptions) -> str:
    """What a layer's decisions depend on: pressa's version, the source's files, the windows, the
    quantization options."""
    from pressa import __version__

    p = Path(location)
    files = sorted(p.iterdir()) if p.is_dir() else [p] if p.exists() else []
    facts = {"pressa": __version__, "source": str(p.resolve()) if p.exists() else location,
             "files": [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files if f.is_file()],
             "windows": hashlib.sha256(np.asarray(windows, np.int64).tobytes()).hexdigest(),
             "options": {k: getattr(opts, k) for k in ("precision", "block_size", "symmetric", "accuracy_level",
                                                        "algorithm", "scale_search", "scale_estimation", "act_order",
                                                        "layer_bits", "layer_groups", "calibration_feed")}}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


class LayerCache:
    """layer-<i>.npz (the layer's decisions), hidden.npy (the hidden states after the last finished
    layer) and state.json (how many layers are finished), each written whole before it is renamed."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def done(self) -> int:
        path = self.folder / STATE
        return json.loads(path.read_text())["layers_done"] if path.is_file() else 0

    def hidden(self) -> np.ndarray:
        return np.load(self.folder / "hidden.npy")

    def save(self, i: int, decisions: dict[str, dict], hidden: np.ndarray) -> None:
        arrays = {}
        for key, found in decisions.items():
            qw = found.get("quantized")
            if qw is not None:
                codes = pack_codes(qw.q, qw.bits)
                arrays.update({f"{key}|q": codes, f"{key}|scales": qw.scales,
                               f"{key}|meta": np.array([qw.bits, qw.block_size, qw.k, qw.q.shape[2]])})
                if qw.zero_points is not None:
                    arrays[f"{key}|zero_points"] = qw.zero_points
            if found.get("awq_scale") is not None:
                arrays[f"{key}|awq_scale"] = found["awq_scale"]
        self._atomic(f"layer-{i}.npz", lambda f: np.savez(f, **arrays))
        self._atomic("hidden.npy", lambda f: np.save(f, hidden))
        self._atomic(STATE, lambda f: f.write(json.dumps({"layers_done": i + 1}).encode()))

    def _atomic(self, name: str, write: Callable) -> None:
        tmp = self.folder / (name + ".partial")
        with open(tmp, "wb") as f:
            write(f)
        tmp.replace(self.folder / name)

    def load(self, i: int) -> dict[str, SimpleNamespace]:
        out: dict[str, SimpleNamespace] = {}
        with np.load(self.folder / f"layer-{i}.npz") as z:
            for name in z.files:
                key, what = name.split("|")
                out.setdefault(key, SimpleNamespace(quantized=None, awq_scale=None, h=None))
                if what == "awq_scale":
                    out[key].awq_scale = z[name]
                elif what == "meta":
                    bits, block, k, width = (int(v) for v in z[name])
                    codes = z[f"{key}|q"]
                    q = unpack_codes(codes, bits, width)
                    zp = z[f"{key}|zero_points"] if f"{key}|zero_points" in z.files else None
                    out[key].quantized = QuantizedWeight(q, z[f"{key}|scales"], zp, bits, block, k)
        return out

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class LayerResults(Mapping):
    """The finished calibration as the builder reads it (`calib[key]`): one layer's decisions in memory
    at a time, read from the cache as the build reaches the layer."""

    def __init__(self, cache: LayerCache, num_layers: int):
        self.cache, self.num_layers, self.finished = cache, num_layers, cache.done()
        self._layer, self._found = -1, {}

    def _key_layer(self, key: str) -> int | None:
        if key == HEAD:
            return self.num_layers                       # the lm_head's decisions follow the last layer's
        head = key.split(".", 1)[0]
        return int(head) if head.isdigit() else None

    def __getitem__(self, key: str):
        i = self._key_layer(key)
        if i is None or i >= self.finished:
            raise KeyError(key)
        if i != self._layer:
            self._layer, self._found = i, self.cache.load(i)
        return self._found[key]

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return self.num_layers


def embedded(cfg, weights, windows: list[list[int]]) -> np.ndarray:
    """The windows' input embeddings [n, seq, hidden] float32, as the float graph computes them, read a
    few thousand vocabulary rows at a time."""
    if cfg.arch.positions == "learned":
        raise NotImplementedError("layer-by-layer calibration of learned positions")
    name = "model.embed_tokens.weight"
    ids = np.asarray(windows, np.int64)
    out = np.zeros(ids.shape + (cfg.hidden_size,), np.float32)
    vocab = weights.shape(name)[0]
    step = 8192 if weights.reads_rows else vocab
    for start in range(0, vocab, step):
        hit = (ids >= start) & (ids < start + step)
        if hit.any():
            out[hit] = weights.rows(name, start, min(start + step, vocab))[ids[hit] - start]
    for factor in ((cfg.hidden_size ** 0.5) if cfg.arch.embed_scale else 1.0, cfg.embed_multiplier):
        if factor != 1.0:
            out *= np.float32(factor)
    return out


class LayerwiseCalibration:
    def __init__(self, cfg, weights, opts: BuildOptions, windows: list[list[int]], progress=None,
                 seed: int = 0):
        self.cfg, self.w, self.opts, self.windows = cfg, weights, opts, windows
        self.progress, self.seed = progress or (lambda *a: None), seed

    def _run(self, path: Path, hidden: np.ndarray, hidden_out: bool, calib: bool = True):
        """Yields (first window, {output: array}) of the one-layer graph over the windows in batches: the
        layer's output where `hidden_out`, its linears' inputs where `calib` (ONNX Runtime runs only
        the nodes the outputs asked for need: without the output, the float pass skips down_proj)."""
        import onnxruntime as ort

        from pressa.runtime.session import session_options

        sess = ort.InferenceSession(str(path), session_options(hint="throughput"), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs() if (o.name == HIDDEN_OUT and hidden_out)
                 or (o.name.startswith("calib.") and calib)]
        inputs = {i.name for i in sess.get_inputs()}
        past = {name: np.zeros((1, self.cfg.num_kv_heads, 0, self.cfg.head_dim), np.float32)
                for name in inputs if name.startswith("past_key_values")}
        for start in range(0, len(hidden), BATCH):
            x = hidden[start:start + BATCH]
            feeds = {HIDDEN: x, **{k: np.repeat(v, len(x), axis=0) for k, v in past.items()}}
            if "attention_mask" in inputs:
                feeds["attention_mask"] = np.ones(x.shape[:2], np.int64)
            yield start, dict(zip(names, sess.run(names, feeds)))

    def capture(self, i: int, hidden: np.ndarray, keep_output: bool, hessian: bool = True):
        """Layer i in float: its linears' input statistics (with H = X^T X when `hessian`) and (when
        `keep_output`) its output."""
        stats: dict[str, InputStats] = {}
        after = np.empty_like(hidden) if keep_output else None
        with temp_dir("layer-") as d:
            DecoderBuilder(self.cfg, self.w, BuildOptions(precision="fp32", capture_inputs=True)).build_layer(
                i, Path(d) / "model.onnx")
            for start, outs in self._run(Path(d) / "model.onnx", hidden, keep_output):
                for name, x in outs.items():
                    if name.startswith("calib."):
                        accumulate(stats, name[len("calib."):], x, start, len(self.windows), self.seed, hessian)
                if after is not None:
                    after[start:start + len(outs[HIDDEN_OUT])] = outs[HIDDEN_OUT]
        return stats, after

    def quantize(self, i: int, stats: dict, hidden: np.ndarray | None) -> tuple[dict, np.ndarray | None]:
        """Layer i quantized with its statistics: (the builder's decisions per key, its output on
        `hidden`; None without `hidden`)."""
        builder = DecoderBuilder(self.cfg, self.w, self.opts, stats)
        builder.record = {}
        after = None if hidden is None else np.empty_like(hidden)
        with temp_dir("layer-") as d:
            builder.build_layer(i, Path(d) / "model.onnx")
            if after is not None:
                for start, outs in self._run(Path(d) / "model.onnx", hidden, True, calib=False):
                    after[start:start + len(outs[HIDDEN_OUT])] = outs[HIDDEN_OUT]
        return builder.record, after

    def head_stats(self, hidden: np.ndarray) -> dict[str, InputStats]:
        """The lm_head's input statistics: the final norm of the hidden states after the last layer."""
        stats: dict[str, InputStats] = {}
        with temp_dir("head-") as d:
            DecoderBuilder(self.cfg, self.w, BuildOptions(precision="fp32")).build_head(Path(d) / "model.onnx")
            for start, outs in self._run(Path(d) / "model.onnx", hidden, False):
                accumulate(stats, HEAD, outs[f"calib.{HEAD}"], start, len(self.windows), self.seed)
        return stats

    def head(self, hidden: np.ndarray) -> dict:
        """The lm_head's decisions (the tied embedding's, read as the lm_head): GPTQ or scale estimation
        with H of the final norm's output on the windows."""
        builder = DecoderBuilder(self.cfg, self.w, self.opts, self.head_stats(hidden))
        builder.record = {}
        builder.quantize_head()
        return builder.record

    def calibrates_head(self) -> bool:
        quantized = self.opts.precision in ("int4", "int8")
        return self.opts.uses_hessian and quantized and (self.cfg.tie_embeddings or "lm_head.weight" in self.w)

    def run(self, cache: LayerCache, log=lambda s: None) -> LayerResults:
        """Every layer's decisions into `cache`, from the first layer it does not have, then the
        lm_head's where its quantization reads the Hessian (its decisions stored as layer n's)."""
        n = self.cfg.num_layers
        first = cache.done()
        if 0 < first < n:
            log(f"calibration: resuming at layer {first + 1} of {n} ({first} finished layers in {cache.folder})")
        elif first:
            log(f"calibration: all {n} layers finished in {cache.folder}")
        hidden = cache.hidden() if first else embedded(self.cfg, self.w, self.windows)
        quantized_inputs = self.opts.calibration_feed == "quantized"
        try:
            for i in range(first, n):
                self.progress(i, n, f"calibrating layer {i + 1}/{n}")
                stats, after = self.capture(i, hidden, not quantized_inputs, self.opts.uses_hessian)
                decisions, quantized_after = self.quantize(i, stats, hidden if quantized_inputs else None)
                del stats
                hidden = quantized_after if quantized_inputs else after
                cache.save(i, decisions, hidden)
            if cache.done() == n and self.calibrates_head():
                self.progress(n, n + 1, "calibrating lm_head")
                cache.save(n, self.head(hidden), hidden)
        except KeyboardInterrupt:
            log(f"calibration stopped with {cache.done()} of {n} layers finished; the same command resumes it")
            raise
        self.progress(n, n, "calibrated")
        return LayerResults(cache, n)

    def sensitivities(self, error_of: Callable[[str, InputStats], float]) -> dict[str, float]:
        """Data-aware sensitivity of every layer's linears (error_of(key, stats)), the float layers'
        outputs feeding the next (no quantization decided yet)."""
        hidden = embedded(self.cfg, self.w, self.windows)
        errors: dict[str, float] = {}
        n = self.cfg.num_layers
        for i in range(n):
            self.progress(i, n, f"sensitivity of layer {i + 1}/{n}")
            stats, hidden = self.capture(i, hidden, keep_output=True)
            errors.update({key: error_of(key, st) for key, st in stats.items()})
        return errors
