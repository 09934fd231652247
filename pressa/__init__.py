"""pressa: make trained models small and fast for the hardware they run on."""

__version__ = "0.1.0"

from pressa.api import auto_opt, compress_weights, quantize, run  # noqa: E402  (the CLI's verbs)

__all__ = ["__version__", "auto_opt", "compress_weights", "export", "load", "quantize", "run"]


def load(path, **kwargs):
    """Open an artifact: an LLM folder gives a Model (`.generate("Hi")`, `.chat`, `.stream`); any other
    ONNX artifact or .onnx file gives an EncoderModel (`.embed(texts)`, `.classify`, `.run`)."""
    from pressa.artifact import ArtifactKind, kind_of

    if kind_of(path) == ArtifactKind.ONNX:
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
