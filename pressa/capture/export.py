"""torch -> ONNX for models that are not built from weights: Hugging Face models by task, and any
torch.nn.Module. Uses torch.onnx.export's dynamo exporter (torch.export): the TorchScript tracer
bakes transformers 5's mask logic into constants and fails on other shapes. Every export is checked
against torch on inputs of another shape than the example before the artifact is written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pressa.errors import BadArgument, first_line

# task -> (transformers Auto class, output names)
TASKS = {
    "feature-extraction": ("AutoModel", ["last_hidden_state"]),
    "text-classification": ("AutoModelForSequenceClassification", ["logits"]),
    "token-classification": ("AutoModelForTokenClassification", ["logits"]),
    "question-answering": ("AutoModelForQuestionAnswering", ["start_logits", "end_logits"]),
    "fill-mask": ("AutoModelForMaskedLM", ["logits"]),
    "image-classification": ("AutoModelForImageClassification", ["logits"]),
}
ALIASES = {"sentence-similarity": "feature-extraction", "sequence-classification": "text-classification",
           "default": "feature-extraction"}
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PARITY_ATOL = 1e-4


def _torch():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        raise BadArgument("capture needs torch and transformers: pip install 'pressa[torch]' "
                          "(pip install torch==2.13.0 first on CPU machines)") from None
    return torch


def load_hf_model(folder: Path, task: str):
    torch = _torch()
    import transformers

    task = ALIASES.get(task, task)
    if task not in TASKS:
        raise BadArgument(f"--task {task!r}: use one of {', '.join(TASKS)}")
    cls = getattr(transformers, TASKS[task][0])
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    from pressa.sources.safetensors_io import SafetensorsFile

    for f in sorted(Path(folder).glob("*.safetensors")):
        SafetensorsFile(f)            # a damaged file gets the same one-line message as in auto-opt
    try:
        model = cls.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    except Exception as err:          # transformers' and safetensors' own errors about the files
        msg = first_line(err, 200)
        raise BadArgument(f"{folder}: transformers cannot load it for {task} ({msg})") from None
    return model.eval(), task


def example_inputs(model, task: str, folder: Path, batch: int = 2, seq: int = 16) -> dict:
    """Named example tensors for the task; text inputs are those the model's forward accepts."""
    import inspect

    torch = _torch()
    g = torch.Generator().manual_seed(0)
    if task == "image-classification":
        size = getattr(model.config, "image_size", 224)
        size = size if isinstance(size, int) else size[0]
        return {"pixel_values": torch.randn(batch, getattr(model.config, "num_channels", 3), size, size, generator=g)}
    params = inspect.signature(model.forward).parameters
    vocab = int(getattr(model.config, "vocab_size", 100))
    out = {"input_ids": torch.randint(0, vocab, (batch, seq), generator=g)}
    if "attention_mask" in params:
        mask = torch.ones(batch, seq, dtype=torch.int64)
        mask[-1, seq // 2:] = 0
        out["attention_mask"] = mask
    if "token_type_ids" in params and getattr(model.config, "type_vocab_size", 0):
        out["token_type_ids"] = torch.zeros(batch, seq, dtype=torch.int64)
    return out


def export_module(module, inputs: dict, path: Path, output_names: list[str] | None = None,
                  dynamic: dict[str, dict[int, str]] | None = None, opset: int = 18) -> list[str]:
    """Export `module` called as module(**inputs) to `path`; outputs are its tensor(s) in order
    (a ModelOutput's fields by name). `dynamic`: input -> {axis: name}; default batch (0) and, for
    2-D integer inputs, sequence (1)."""
    torch = _torch()

    names = list(inputs)
    probe = _call(module, inputs, output_names)
    outs = output_names or [f"output_{i}" for i in range(len(probe))]
    if len(outs) != len(probe):
        raise BadArgument(f"the module returns {len(probe)} tensors but {len(outs)} output names were given")
    if dynamic is None:
        dynamic = {n: ({0: "batch", 1: "sequence"} if t.dim() == 2 and not t.is_floating_point() else {0: "batch"})
                   for n, t in inputs.items()}
    dims: dict[str, object] = {}
    shapes = {n: {ax: dims.setdefault(label, torch.export.Dim(label)) for ax, label in dynamic.get(n, {}).items()}
              for n in names}

    class Named(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return tuple(_call(self.inner, dict(zip(names, args)), output_names))

    try:
        torch.onnx.export(Named(module).eval(), tuple(inputs[n] for n in names), str(path), input_names=names,
                          output_names=outs, dynamic_shapes={"args": tuple(shapes[n] for n in names)},
                          dynamo=True, opset_version=opset, external_data=True, verbose=False)
    except ImportError as err:
        raise BadArgument(f"torch's ONNX exporter needs onnxscript ({err}); pip install onnxscript") from None
    except Exception as err:          # torch.export cannot trace this model: one line, not its traceback
        lines = [ln for ln in str(err).splitlines() if ln.strip() and "Exception summary" not in ln]
        detail = next((ln for ln in lines if "Error" in ln or "error" in ln), lines[0] if lines else "")
        raise BadArgument(f"torch could not export this model ({type(err).__name__}: {detail.strip()[:200]})") from None
    return outs


def _call(module, inputs: dict, names: list[str] | None = None) -> list:
    """The module's output tensors: a ModelOutput's (or dict's) named fields when `names` are given,
    else all its tensor fields in order."""
    out = module(**inputs)
    if names and (isinstance(out, dict) or hasattr(out, "to_tuple")) and all(n in out for n in names):
        return [out[n] for n in names]
    if isinstance(out, dict) or hasattr(out, "to_tuple"):
        return [t for t in (out.values() if isinstance(out, dict) else out.to_tuple()) if hasattr(t, "shape")]
    return list(out) if isinstance(out, (tuple, list)) else [out]


def check_parity(module, model_path: Path, inputs: dict, output_names: list[str]) -> float:
    """Largest |onnx - torch| (relative to the output's scale, at least 1) on these inputs."""
    torch = _torch()
    from pressa.graph.inputs import max_difference, run_model

    with torch.no_grad():
        ref = [t.detach().numpy() for t in _call(module, inputs, output_names)]
    got = run_model(str(model_path), {k: v.numpy() for k, v in inputs.items()})
    mask = inputs["attention_mask"].numpy() if "attention_mask" in inputs else None
    return max_difference(ref[: len(output_names)], got, mask)


def capture_hf(folder: Path, task: str, out_dir: Path, opset: int = 18,
               progress: Callable[[str], None] = lambda s: None) -> dict:
    """Export into `out_dir` (model.onnx + data); returns what the manifest records."""
    import tempfile

    from pressa.graph.onnx_io import graph_io, load_model, save_model

    model, task = load_hf_model(folder, task)
    _, outputs = TASKS[task]
    inputs = example_inputs(model, task, folder)
    progress("exporting with torch.onnx (dynamo)")
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        raw = Path(tmp) / "export.onnx"
        import torch

        with torch.no_grad():
            export_module(model, inputs, raw, outputs, opset=opset)
        onnx_model = load_model(raw)
        save_model(onnx_model, out_dir)
    progress("checking the graph against torch")
    check = example_inputs(model, task, folder, batch=3, seq=11)
    diff = check_parity(model, out_dir / "model.onnx", check, outputs)
    if not diff <= PARITY_ATOL:
        raise BadArgument(f"the exported graph differs from torch by {diff:.2e} on a second input shape; "
                          "this architecture does not export cleanly")
    io = graph_io(load_model(out_dir / "model.onnx", load_data=False))
    return {"task": task, "model_type": getattr(model.config, "model_type", None),
            "num_heads": getattr(model.config, "num_attention_heads", None),
            "parity_max_abs_diff": diff, **io}


def module_artifact(module, inputs: dict, output: Path, output_names: list[str] | None = None,
                    dynamic: dict[str, dict[int, str]] | None = None, overwrite: bool = False) -> dict:
    """An artifact folder from any torch.nn.Module called as module(**inputs)."""
    import tempfile
    import time

    from pressa.artifact import atomic_folder
    from pressa.artifact.manifest import write_onnx_manifest
    from pressa.graph.onnx_io import load_model, save_model

    torch = _torch()
    output = Path(output)
    module.eval()
    t0 = time.perf_counter()
    with atomic_folder(output, overwrite) as tmp:
        with tempfile.TemporaryDirectory(dir=tmp) as t:
            raw = Path(t) / "export.onnx"
            with torch.no_grad():
                names = export_module(module, inputs, raw, output_names, dynamic)
            save_model(load_model(raw), tmp)
        diff = check_parity(module, tmp / "model.onnx", inputs, names)
        if not diff <= PARITY_ATOL:
            raise BadArgument(f"the exported graph differs from the module by {diff:.2e}")
        return write_onnx_manifest(tmp, tmp, "capture", {}, {"task": "module", "parity_max_abs_diff": diff},
                                   time.perf_counter() - t0,
                                   base={"source": {"kind": "torch.nn.Module", "class": type(module).__name__}})
