"""pressa: make trained models small and fast for the hardware they run on."""

__version__ = "0.1.0"


def load(path, **kwargs):
    """Open an artifact folder for generation: `pressa.load("models/smol-int4").generate("Hi")`."""
    from pressa.genai.model import Model

    return Model.load(path, **kwargs)
