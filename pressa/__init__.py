"""pressa: make trained models small and fast for the hardware they run on."""

__version__ = "0.1.0"


def load(path, **kwargs):
    """Open an artifact: an LLM folder gives a Model (`.generate("Hi")`, `.chat`, `.stream`); any other
    ONNX artifact or .onnx file gives an EncoderModel (`.embed(texts)`, `.classify`, `.run`)."""
    from pathlib import Path

    p = Path(path)
    onnx_model = (p.is_file() and p.suffix == ".onnx") or (p.is_dir() and any(p.glob("*.onnx")))
    if onnx_model and not (p / "genai_config.json").is_file():
        from pressa.runtime.encoder import EncoderModel

        return EncoderModel.load(path, **kwargs)
    from pressa.genai.model import Model

    return Model.load(path, **kwargs)


def export(module, inputs: dict, output, output_names: list[str] | None = None,
            dynamic: dict[str, dict[int, str]] | None = None, overwrite: bool = False) -> dict:
    """Export any torch.nn.Module called as module(**inputs) to an artifact folder (checked against
    torch on the same inputs); returns its manifest."""
    from pressa.capture.export import module_artifact

    return module_artifact(module, inputs, output, output_names, dynamic, overwrite)
