"""What every source hands downstream: a config dict, a lazy weight reader, tokenizer files."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

# The files of a tokenizer folder that travel with an artifact.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
    "chat_template.jinja", "vocab.txt", "merges.txt", "vocab.json", "tokenizer.model",
)


@dataclass
class WeightReader:
    """Reads one tensor at a time, as float32 numpy in Hugging Face layout ([out, in] for linears)."""

    names: set[str]
    _read: Callable[[str], np.ndarray]
    shapes: Callable[[str], tuple] | None = None
    _rows: Callable[[str, int, int], np.ndarray] | None = None   # rows start..stop-1 without the rest

    @property
    def reads_rows(self) -> bool:
        return self._rows is not None

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 of a tensor: read alone where the source can (safetensors), else sliced."""
        if self._rows is not None:
            return self._rows(name, start, stop)
        return self(name)[start:stop]

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape: from the source's index where it has one, else from the tensor read."""
        return tuple(self.shapes(name)) if self.shapes else self(name).shape

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise KeyError(name)
        return self._read(name)

    def first(self, candidates: Iterable[str]) -> str | None:
        return next((c for c in candidates if c in self.names), None)


@dataclass
class Source:
    kind: str                      # hf | gguf | hub | bundled
    location: str
    config: dict                   # Hugging Face config.json layout
    weights: WeightReader
    tokenizer_files: dict[str, bytes] = field(default_factory=dict)
    pressa_names: bool = False     # weights already under pressa's names and layout (GGUF), not the family's
