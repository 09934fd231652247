"""A PEFT LoRA adapter merged into a model's weights as the builder reads them: W + scale * B @ A per
target module (scale alpha/r, or alpha/sqrt(r) with rsLoRA), one tensor at a time, no second copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pressa.errors import BadArgument
from pressa.sources.base import WeightReader

PREFIX = "base_model.model."


def read_adapter(folder: Path) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(adapter_config.json, {weight name: (A [r, in], B [out, r])}) of a PEFT LoRA adapter folder."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    cfg_path, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise BadArgument(f"{folder}: not a PEFT adapter (needs adapter_config.json and adapter_model.safetensors)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora"):
        raise BadArgument(f"{folder}: only plain LoRA adapters are merged (this one is "
                          f"{'DoRA' if cfg.get('use_dora') else cfg.get('peft_type')})")
    if cfg.get("modules_to_save"):
        raise BadArgument(f"{folder}: adapters that also save whole modules ({cfg['modules_to_save']}) are not "
                          "merged yet")
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, t in load_file(str(weights)).items():
        for part in ("lora_A", "lora_B"):
            if f".{part}." in key:
                module = key.split(f".{part}.")[0].removeprefix(PREFIX)
                pairs.setdefault(module + ".weight", {})[part] = t.astype(np.float32)
    return cfg, {n: (p["lora_A"], p["lora_B"]) for n, p in pairs.items() if len(p) == 2}


def lora_scale(cfg: dict) -> float:
    r, alpha = float(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
    return alpha / (r ** 0.5 if cfg.get("use_rslora") else r)


def merged(reader: WeightReader, folder: Path) -> WeightReader:
    """`reader` with the adapter in `folder` added to the weights it targets (names as the checkpoint's)."""
    cfg, deltas = read_adapter(folder)
    missing = sorted(n for n in deltas if n not in reader)
    if missing:
        raise BadArgument(f"{folder}: the adapter changes {missing[0]}, which the model does not have; was it "
                          "trained on this model?")
    scale, transposed = lora_scale(cfg), bool(cfg.get("fan_in_fan_out"))

    def read(name: str) -> np.ndarray:
        w = reader(name)
        if name not in deltas:
            return w
        a, b = deltas[name]
        delta = scale * (b @ a)
        return w + (delta.T if transposed else delta).astype(w.dtype)

    def rows(name: str, start: int, stop: int) -> np.ndarray:
        return read(name)[start:stop] if name in deltas else reader.rows(name, start, stop)

    return WeightReader(reader.names, read, reader.shapes, rows if reader.reads_rows else None)
