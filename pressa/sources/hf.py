"""A Hugging Face model folder: config.json, safetensors (single or sharded), tokenizer files."""

from __future__ import annotations

from pathlib import Path

from pressa.artifact import read_json
from pressa.errors import CorruptModel, SourceNotFound
from pressa.sources.base import TOKENIZER_FILES, Source, WeightReader
from pressa.sources.safetensors_io import SafetensorsFile


def open_hf_folder(folder: Path, kind: str = "hf") -> Source:
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise SourceNotFound(f"{folder}: no config.json; point --model at a Hugging Face model folder, "
                             "a .gguf file or a Hub id")
    config = read_json(cfg_path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map", {})
        shard_names = sorted(set(weight_map.values()))
    else:
        shard_names = sorted(p.name for p in folder.glob("*.safetensors"))
        weight_map = None
    if not shard_names:
        raise SourceNotFound(f"{folder}: no .safetensors weights; convert the checkpoint to safetensors first")
    shards = {}
    for s in shard_names:
        if not (folder / s).is_file():
            raise CorruptModel(f"{folder}: shard {s} named in the index is missing; re-download the model")
        shards[s] = SafetensorsFile(folder / s)
    if weight_map is None:
        weight_map = {k: s for s, f in shards.items() for k in f.keys()}
    reader = WeightReader(
        names=set(weight_map),
        _read=lambda name: shards[weight_map[name]].read(name),
        shapes=lambda name: shards[weight_map[name]].shape(name),
        _rows=lambda name, start, stop: shards[weight_map[name]].read(name, start, stop),
    )
    tok = {n: (folder / n).read_bytes() for n in TOKENIZER_FILES if (folder / n).is_file()}
    return Source(kind=kind, location=str(folder), config=config, weights=reader, tokenizer_files=tok)
