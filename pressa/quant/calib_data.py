"""Calibration and validation inputs for any ONNX model, from a text file (tokenized with the model's
tokenizer), a folder of images (its preprocessor config), a .npy/.npz file, or a Python iterable of
{input name: array} dicts. Text and images are read lazily, one batch at a time."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from pressa.artifact import read_json
from pressa.errors import BadArgument, SourceNotFound

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"}


def text_lines(text: str, count: int, min_chars: int = 40) -> list[str]:
    """`count` lines spread evenly over the text, skipping headings (` = Title = `) and short lines."""
    lines = [ln.strip() for ln in text.splitlines()]
    usable = [ln for ln in lines if len(ln) >= min_chars and not (ln.startswith("=") and ln.endswith("="))]
    if len(usable) <= count:
        return usable
    idx = np.linspace(0, len(usable) - 1, count).round().astype(int)
    return [usable[i] for i in idx]


class TextEncoder:
    """The model's tokenizer (tokenizer.json in its folder), producing the graph's text inputs."""

    def __init__(self, folder: Path, input_names: list[str], max_length: int = 128, pad_to: int | None = None):
        from tokenizers import Tokenizer

        f = Path(folder) / "tokenizer.json"
        if not f.is_file():
            raise SourceNotFound(f"{folder}: no tokenizer.json beside the model, so text cannot be turned into "
                                 "inputs; pass a .npy/.npz file instead")
        self.tok = Tokenizer.from_file(str(f))
        self.tok.enable_truncation(max_length)
        pad_id = self.tok.token_to_id("[PAD]") or self.tok.token_to_id("<pad>") or 0
        self.tok.enable_padding(pad_id=pad_id, length=pad_to)
        self.names = input_names

    def longest(self, texts: list[str]) -> int:
        return max(len(e.ids) for e in self.tok.encode_batch(texts))

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        enc = self.tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc], np.int64)
        out = {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
               "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}
        missing = [n for n in self.names if n not in out]
        if missing:
            raise BadArgument(f"the model's input {missing[0]!r} cannot be made from text; pass a .npz file with it")
        return {n: out[n] for n in self.names}


def image_batches(folder: Path, model_folder: Path, input_name: str, count: int) -> Iterator[dict]:
    try:
        from PIL import Image
    except ImportError:
        raise BadArgument("reading images needs Pillow: pip install pillow") from None
    files = sorted(f for f in Path(folder).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if not files:
        raise SourceNotFound(f"{folder}: no images (.jpg, .png, ...) in this folder")
    cfg_path = Path(model_folder) / "preprocessor_config.json"
    cfg = read_json(cfg_path) if cfg_path.is_file() else {}
    size = cfg.get("crop_size") or cfg.get("size") or 224
    if isinstance(size, dict):
        h = size.get("height") or size.get("shortest_edge") or 224
        w = size.get("width") or h
    else:
        h = w = int(size)
    mean = np.array(cfg.get("image_mean", [0.5, 0.5, 0.5]), np.float32)[:, None, None]
    std = np.array(cfg.get("image_std", [0.5, 0.5, 0.5]), np.float32)[:, None, None]
    scale = float(cfg.get("rescale_factor", 1 / 255))
    for f in files:
        img = Image.open(f).convert("RGB").resize((w, h), Image.BILINEAR)
        x = np.asarray(img, np.float32).transpose(2, 0, 1) * scale
        if cfg.get("do_normalize", True):
            x = (x - mean) / std
        yield {input_name: x[None].astype(np.float32)}


def array_batches(path: Path, input_names: list[str], count: int) -> Iterator[dict]:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise BadArgument(f"{path}: cannot read it as .npy/.npz ({err})") from None
    if isinstance(data, np.ndarray):
        if len(input_names) != 1:
            raise BadArgument(f"{path}: a .npy file feeds a model with one input; this one has "
                              f"{len(input_names)} ({', '.join(input_names)}): use a .npz with those keys")
        arrays = {input_names[0]: data}
    else:
        missing = [n for n in input_names if n not in data.files]
        if missing:
            raise BadArgument(f"{path}: no array named {missing[0]!r} (the model's inputs: {', '.join(input_names)})")
        arrays = {n: data[n] for n in input_names}
    n = min(len(a) for a in arrays.values())
    for i in range(min(n, count)):
        yield {k: a[i:i + 1] for k, a in arrays.items()}


def batches(source, model, model_folder: Path, count: int, batch_size: int = 1, max_length: int = 128,
            same_length: bool = False) -> Iterator[dict]:
    """Input dicts for `model` (an onnx ModelProto) from any supported source, `count` samples.
    `same_length`: every text batch padded to the longest sample (histogram calibrators need one
    activation shape)."""
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if isinstance(source, (str, Path)):
        p = Path(source)
        if not p.exists():
            raise SourceNotFound(f"{p}: no such calibration file or folder")
        if p.is_dir():
            if len(names) != 1:
                raise BadArgument(f"{p}: a folder of images feeds a model with one input; this one has "
                                  f"{', '.join(names)}")
            return image_batches(p, model_folder, names[0], count)
        if p.suffix in (".npy", ".npz"):
            return array_batches(p, names, count)
        from pressa.textio import read_text

        return _text_batches(model_folder, names, text_lines(read_text(p), count), batch_size, max_length,
                             same_length, str(p))
    if isinstance(source, Iterable) and not isinstance(source, dict):
        items = list(itertools.islice(source, 1_000_000))
        if items and all(isinstance(t, str) for t in items):      # texts, as in a text file
            return _text_batches(model_folder, names, text_lines("\n".join(items), count), batch_size,
                                 max_length, same_length, "the dataset")
        source = items

        def gen():
            for k, item in enumerate(source):
                if k >= count:
                    return
                yield {n: np.asarray(item[n]) for n in names}
        return gen()
    raise BadArgument(f"calibration data of type {type(source).__name__}: give a path or an iterable of dicts")


def _text_batches(model_folder: Path, names: list[str], lines: list[str], batch_size: int, max_length: int,
                  same_length: bool, what: str) -> Iterator[dict]:
    if not lines:
        raise BadArgument(f"{what}: no usable lines (each needs 40+ characters)")
    enc = TextEncoder(model_folder, names, max_length)
    if same_length:
        enc = TextEncoder(model_folder, names, max_length, pad_to=enc.longest(lines))
    return (enc(lines[i:i + batch_size]) for i in range(0, len(lines), batch_size))


def reader(make):
    """onnxruntime.quantization's CalibrationDataReader over `make()`'s batches (rewindable)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = None

        def get_next(self):
            if self.it is None:
                self.it = iter(make())
            return next(self.it, None)

        def rewind(self):
            self.it = None

    return Reader()
