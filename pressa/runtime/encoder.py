"""Run an ONNX artifact that is not a generative LLM: encoders (embeddings, classifiers) and any
other graph. Text is tokenized with the artifact's tokenizer; sentence embeddings are pooled and
normalized as the model's sentence-transformers config says (1_Pooling, modules.json)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pressa.artifact import read_json
from pressa.errors import BadArgument


def pooling_config(folder: Path) -> dict:
    """{'mode': mean|cls|max|mean_sqrt_len, 'normalize': bool, 'max_length': int | None}."""
    folder = Path(folder)
    mode, normalize, max_length = "mean", False, None
    pool = folder / "1_Pooling" / "config.json"
    if pool.is_file():
        cfg = read_json(pool)
        for key, name in (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"),
                          ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"), ("pooling_mode_mean_tokens", "mean")):
            if cfg.get(key):
                mode = name
                break
    modules = folder / "modules.json"
    if modules.is_file():
        normalize = any("Normalize" in m.get("type", "") for m in read_json(modules))
    sbert = folder / "sentence_bert_config.json"
    if sbert.is_file():
        max_length = read_json(sbert).get("max_seq_length")
    return {"mode": mode, "normalize": normalize, "max_length": max_length}


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str = "mean") -> np.ndarray:
    m = mask.astype(np.float32)[..., None]
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return np.where(m > 0, hidden, -np.inf).max(axis=1)
    summed = (hidden * m).sum(axis=1)
    count = np.maximum(m.sum(axis=1), 1e-9)
    return summed / (np.sqrt(count) if mode == "mean_sqrt_len" else count)


class EncoderModel:
    def __init__(self, folder: Path, device: str = "cpu", threads: int | None = None, hint: str = "latency",
                 backend: str = "onnxruntime", streams: int | str | None = None, precision_hint: str | None = None,
                 cache_dir: Path | None = None):
        """`backend`: onnxruntime, openvino, or auto (the faster here, measured once and remembered);
        `streams`, `precision_hint`, `cache_dir`: OpenVINO's NUM_STREAMS, INFERENCE_PRECISION_HINT, CACHE_DIR."""
        from pressa.artifact import read_manifest
        from pressa.graph.onnx_io import find_model, model_folder
        from pressa.runtime.options import runtime_options
        from pressa.runtime.session import open_session

        path = find_model(folder)
        self.folder = model_folder(folder)
        self.manifest = read_manifest(self.folder)
        self.task = self.manifest.get("task")
        self.runtime = runtime_options(backend=backend, device=device, hint=hint, threads=threads, streams=streams,
                                       precision_hint=precision_hint, cache_dir=cache_dir)
        if backend == "auto" and path.suffix == ".onnx":
            from pressa import log
            from pressa.runtime.choose import pick_backend

            self.runtime = self.runtime.model_copy(update={"backend": pick_backend(path, self.runtime, log.info)[0]})
        self.session = open_session(path, runtime=self.runtime)
        if path.suffix == ".xml":
            self.runtime = self.runtime.model_copy(update={"backend": "openvino"})
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.pooling = pooling_config(self.folder)
        self._text = None

    @classmethod
    def load(cls, path, **kwargs) -> EncoderModel:
        return cls(Path(path), **kwargs)

    def encode_text(self, texts: list[str], max_length: int | None = None) -> dict[str, np.ndarray]:
        from pressa.quant.calib_data import TextEncoder

        limit = max_length or self.pooling["max_length"] or 512
        if self._text is None or self._text[0] != limit:
            self._text = (limit, TextEncoder(self.folder, self.input_names, limit))
        return self._text[1](list(texts))

    def run(self, inputs: dict[str, np.ndarray] | list[str]) -> dict[str, np.ndarray]:
        feeds = self.encode_text(inputs) if isinstance(inputs, list) else inputs
        return dict(zip(self.output_names, self.session.run(None, feeds)))

    def embed(self, texts: list[str] | str, batch_size: int = 32, normalize: bool | None = None) -> np.ndarray:
        """Sentence embeddings [N, D], pooled (and normalized) as the model's config says."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise BadArgument("give at least one text to embed")
        norm = self.pooling["normalize"] if normalize is None else normalize
        return np.concatenate([self.embed_feeds(self.encode_text(texts[i:i + batch_size]), norm)
                               for i in range(0, len(texts), batch_size)])

    def embed_feeds(self, feeds: dict[str, np.ndarray], normalize: bool | None = None) -> np.ndarray:
        """Embeddings of already tokenized inputs (with their attention_mask)."""
        norm = self.pooling["normalize"] if normalize is None else normalize
        first = self.session.run(None, feeds)[0]
        e = pool(first, feeds["attention_mask"], self.pooling["mode"]) if first.ndim == 3 else first
        if norm:
            e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
        return e.astype(np.float32)

    def classify(self, texts: list[str] | str) -> list[dict]:
        """Top label and its probability for each text (sequence classifiers)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        logits = self.run(texts)[self.output_names[0]]
        if logits.ndim != 2:
            raise BadArgument("classify needs a sequence classifier (logits [batch, labels])")
        cfg_path = self.folder / "config.json"
        labels = read_json(cfg_path).get("id2label", {}) if cfg_path.is_file() else {}
        z = np.exp(logits - logits.max(-1, keepdims=True))
        p = z / z.sum(-1, keepdims=True)
        return [{"label": labels.get(str(int(i)), str(int(i))), "score": float(p[r, i])}
                for r, i in enumerate(p.argmax(-1))]
