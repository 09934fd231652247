"""`pressa export ARTIFACT --format openvino -o DIR`: an artifact as OpenVINO IR (openvino_model.xml/.bin),
with OpenVINO tokenizers and the config files OpenVINO GenAI reads, so that
`openvino_genai.LLMPipeline(DIR, "CPU")` and OpenVINO Model Server load the folder unchanged.

Decoders: GroupQueryAttention spelled in standard operators (pressa.graph.portable_attention), the
past/present pairs turned into OpenVINO state (ReadValue/Assign, the initial state sized from the
batch) with a `beam_idx` input that reorders it, as OpenVINO GenAI expects; int4/int8 weights stay
compressed. Encoders: the graph as it is, with its tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from pressa.artifact.llm_io import INPUT_IDS, present

COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "vocab.txt", "modules.json", "sentence_bert_config.json",
          "config_sentence_transformers.json", "1_Pooling", "chat_template.jinja")


def make_stateful(model, pairs: dict[str, str]) -> None:
    """past/present pairs as OpenVINO state, starting empty for the request's batch, with `beam_idx`."""
    import openvino as ov
    import openvino.opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    apply_make_stateful_transformation(model, pairs)
    batch = ops.gather(ops.shape_of(model.input(INPUT_IDS)), ops.constant(np.array([0], np.int64)),
                       ops.constant(np.array(0, np.int64)))
    beam = ops.parameter(ov.PartialShape([-1]), ov.Type.i32, name="beam_idx")
    beam.output(0).get_tensor().set_names({"beam_idx"})
    for op in model.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        shape = op.get_output_partial_shape(0)
        empty = ops.concat([batch, ops.constant(np.array([shape[1].get_length(), 0, shape[3].get_length()],
                                                         np.int64))], 0)
        zero = ops.constant(np.array(0, op.get_output_element_type(0).to_dtype()))
        op.set_arguments([ops.broadcast(zero, empty).output(0)])
        users = list(op.output(0).get_target_inputs())
        reordered = ops.gather(op.output(0), beam, ops.constant(np.array(0, np.int64)))
        for u in users:
            u.replace_source_output(reordered.output(0))
    model.add_parameters([beam])
    model.validate_nodes_and_infer_types()


def save_decoder_ir(folder: Path, out: Path) -> None:
    """The decoder artifact as a stateful OpenVINO model, saved as `out`/openvino_model.xml."""
    import onnx
    import openvino as ov

    from pressa.artifact.llm_io import read_genai_config
    from pressa.graph.portable_attention import portable_attention
    from pressa.runtime.openvino import core
    from pressa.tempdirs import temp_dir

    d = read_genai_config(folder)["model"]["decoder"]
    graph = portable_attention(onnx.load(str(folder / d.get("filename", "model.onnx"))), d["head_size"])
    with temp_dir("ir-") as tmp:
        onnx.save(graph, str(Path(tmp) / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
        del graph
        model = core().read_model(str(Path(tmp) / "model.onnx"))
        names = [i.get_any_name() for i in model.inputs if i.get_any_name().startswith("past_key_values.")]
        make_stateful(model, {n: present(int(n.split(".")[1]), n.rsplit(".", 1)[1]) for n in names})
        ov.save_model(model, str(out / "openvino_model.xml"), compress_to_fp16=False)


def write_genai_config(out: Path, folder: Path) -> None:
    """The artifact's genai_config.json naming the IR graph, so that pressa runs the IR folder itself."""
    from pressa.artifact import write_json
    from pressa.artifact.kind import IR_MODEL
    from pressa.artifact.llm_io import GENAI_CONFIG, read_genai_config

    cfg = read_genai_config(folder)
    cfg["model"]["decoder"]["filename"] = IR_MODEL
    write_json(out / GENAI_CONFIG, cfg)


def export_openvino(artifact: Path, output: Path, overwrite: bool = False, log=lambda s: None) -> dict:
    """Write `artifact` (a decoder LLM or another ONNX artifact) as an OpenVINO IR folder at `output`."""
    import openvino as ov

    from pressa.artifact import ArtifactKind, atomic_folder, kind_of
    from pressa.graph.onnx_io import find_model, model_folder
    from pressa.runtime.openvino import core

    artifact = Path(artifact)
    decoder = kind_of(artifact) == ArtifactKind.DECODER_LLM
    folder = artifact if decoder else model_folder(artifact)
    with atomic_folder(Path(output), overwrite, [artifact], need_bytes=_size(folder)) as tmp:
        log("converting the graph")
        if decoder:
            save_decoder_ir(folder, tmp)
            write_genai_config(tmp, folder)
        else:
            ov.save_model(core().read_model(str(find_model(artifact))), str(tmp / "openvino_model.xml"),
                          compress_to_fp16=False)
        if (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file():
            log("converting the tokenizer")
            models = tokenizers(folder, detokenizer=decoder)
            for name, m in zip(("openvino_tokenizer", "openvino_detokenizer"), models):
                ov.save_model(m, str(tmp / f"{name}.xml"))
        for name in COPIED:
            src = folder / name
            if src.is_dir():
                shutil.copytree(src, tmp / name)
            elif src.is_file():
                shutil.copy2(src, tmp / name)
        sizes = {f.name: f.stat().st_size for f in tmp.iterdir() if f.is_file()}
    return {"output": str(output), "decoder": decoder, "ir_bytes": sizes.get("openvino_model.bin", 0),
            "source_bytes": _size(folder)}


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("model.onnx*") if f.is_file())


def tokenizers(folder: Path, detokenizer: bool) -> tuple:
    """openvino_tokenizer (and openvino_detokenizer) from the artifact's tokenizer files (the
    openvino-tokenizers package reads them through transformers)."""
    from openvino_tokenizers import convert_tokenizer
    from transformers import AutoTokenizer

    out = convert_tokenizer(AutoTokenizer.from_pretrained(str(folder)), with_detokenizer=detokenizer)
    return out if detokenizer else (out,)
