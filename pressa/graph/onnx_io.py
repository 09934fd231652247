"""ONNX models as files and artifact folders: find one, load it with a clear error, save it with its
weights beside it, and carry the files that describe its inputs (tokenizer, configs)."""

from __future__ import annotations

import shutil
from pathlib import Path

from pressa.artifact.kind import IR_MODEL
from pressa.errors import BadArgument, CorruptModel, SourceNotFound

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
# files an artifact keeps beside its graph so that it can be run on raw inputs
COMPANIONS = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
              "vocab.json", "merges.txt", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model",
              "preprocessor_config.json", "modules.json", "sentence_bert_config.json",
              "config_sentence_transformers.json", "1_Pooling/config.json", "2_Normalize/config.json",
              "generation_config.json")


def find_model(path: str | Path) -> Path:
    """The .onnx file for a path that is a file or a folder holding one."""
    p = Path(path)
    if not p.exists():
        raise SourceNotFound(f"{p}: no such file or folder")
    if p.is_dir():
        if (p / MODEL_FILE).is_file():
            return p / MODEL_FILE
        found = sorted(p.glob("*.onnx"))
        if len(found) == 1:
            return found[0]
        if not found and (p / IR_MODEL).is_file():
            return p / IR_MODEL
        raise SourceNotFound(f"{p}: no {MODEL_FILE} in this folder; pass an .onnx file or a folder written by "
                             "pressa capture")
    return p


def model_folder(path: str | Path) -> Path:
    """The folder whose companion files (tokenizer, config) belong to the model at `path`."""
    p = Path(path)
    return p if p.is_dir() else p.parent


def load_model(path: str | Path, load_data: bool = True):
    import onnx

    m = find_model(path)
    if m.suffix == ".xml":
        raise BadArgument(f"{m} is OpenVINO IR, which pressa runs but does not rewrite; pass the ONNX artifact "
                          "it was exported from")
    try:
        model = onnx.load(str(m), load_external_data=load_data)
    except Exception as err:       # protobuf DecodeError, missing external data, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CorruptModel(f"{m}: not a readable ONNX model ({first}); pass an .onnx file or an artifact "
                           "folder") from None
    if not model.graph.node:
        raise CorruptModel(f"{m}: the file holds no ONNX graph (no nodes); pass an .onnx model")
    return model


def op_counts(model) -> dict[str, int]:
    """How many nodes of each op type the graph has, by op type."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def save_model(model, folder: Path) -> Path:
    """Write model.onnx with every initializer over 1 KB in model.onnx.data (the proto's tensors are
    turned into external references in the process)."""
    import onnx

    path = Path(folder) / MODEL_FILE
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=DATA_FILE, size_threshold=1024)
    return path


def copy_companions(src: Path, dst: Path) -> list[str]:
    copied = []
    if Path(src).resolve() == Path(dst).resolve():
        return copied
    for name in COMPANIONS:
        f = Path(src) / name
        if f.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst / name)
            copied.append(name)
    return copied


def graph_io(model) -> dict:
    """Inputs and outputs with element types and shapes (symbolic dims by name)."""
    from onnx import helper

    def desc(v):
        t = v.type.tensor_type
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in t.shape.dim]
        return {"name": v.name, "type": helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims}

    inits = {i.name for i in model.graph.initializer}
    return {"inputs": [desc(v) for v in model.graph.input if v.name not in inits],
            "outputs": [desc(v) for v in model.graph.output]}
