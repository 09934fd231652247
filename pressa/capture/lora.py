"""Run-time LoRA adapters (auto-opt --adapters): the base weights quantized once, each adapter's A and B
kept in float beside them, and each row of a batch choosing its adapter by the graph input
`adapter_ids` (0: none; 1..n: the adapters in artifact order; default 0, so runtimes that do not know
the input run the base).

Per linear that an adapter changes, for the rows' adapters k: y += (x @ A_k^T) @ (scale_k B_k)^T, with
A and B gathered per row from tensors stacked over the adapters (slot 0 all zeros). A fused linear (q, k,
v stacked; gate and up) takes the parts' A side by side and one B per part, and concatenates.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from onnx import TensorProto

from pressa.artifact.llm_io import INPUT_IDS
from pressa.capture.onnx_writer import GraphWriter
from pressa.errors import BadArgument

ADAPTER_IDS = "adapter_ids"
ADAPTERS_FILE = "adapters.json"


def parse_adapters(spec: str) -> dict[str, Path]:
    """'name=DIR,name=DIR' -> {name: DIR}."""
    out: dict[str, Path] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder or ":" in name:
            raise BadArgument(f"--adapters {item!r}: give NAME=DIR (names without ':'), comma-separated")
        if name in out:
            raise BadArgument(f"--adapters: the name {name!r} is given twice")
        out[name] = Path(folder)
    if not out:
        raise BadArgument("--adapters: give at least one NAME=DIR")
    return out


class RuntimeAdapters:
    def __init__(self, specs: dict[str, Path], family: dict[str, str]):
        """`family`: pressa's weight names -> the names in the checkpoint the adapters were trained on."""
        from pressa.finetune.merge import lora_scale, read_adapter

        self.names = list(specs)
        self.deltas: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
        self.family = family
        for name, folder in specs.items():
            cfg, pairs = read_adapter(folder)
            missing = sorted(set(pairs) - set(family.values()))
            if missing:
                raise BadArgument(f"adapter {name}: it changes {missing[0]}, which the model does not have; was it "
                                  "trained on this model?")
            scale = lora_scale(cfg)
            self.deltas.append({n: (a, b * scale) for n, (a, b) in pairs.items()})
        self.rows: str | None = None

    def declare(self, g: GraphWriter) -> None:
        """The adapter_ids input (default [0]) and its value per batch row."""
        g.add_input(ADAPTER_IDS, TensorProto.INT64, ["adapter_batch"])
        g.weight(ADAPTER_IDS, np.zeros(1, np.int64))
        batch = g.op("Slice", [g.op("Shape", [INPUT_IDS], "/lora/Shape"), g.const("/lora/zero", [0]),
                               g.const("/lora/one", [1])], "/lora/batch")
        self.rows = g.op("Expand", [ADAPTER_IDS, batch], "/lora/rows")

    def stacks(self, parts: list[str], outs: list[int]) -> tuple[np.ndarray, list[np.ndarray]] | None:
        """(A stacked [n+1, in, P*R], [B_p [n+1, R, out_p]]) for a linear made of `parts` (pressa names
        without .weight, `outs` their output sizes), or None when no adapter changes it."""
        found = [[d.get(self.family.get(p + ".weight", "")) for p in parts] for d in self.deltas]
        pairs = [x for row in found for x in row if x is not None]
        if not pairs:
            return None
        rank, k_in = max(a.shape[0] for a, _ in pairs), pairs[0][0].shape[1]
        a_all = np.zeros((len(found) + 1, k_in, len(parts) * rank), np.float32)
        b_all = [np.zeros((len(found) + 1, rank, out), np.float32) for out in outs]
        for k, row in enumerate(found, start=1):
            for j, x in enumerate(row):
                if x is not None:
                    a, b = x
                    a_all[k, :, j * rank: j * rank + a.shape[0]] = a.T
                    b_all[j][k, : a.shape[0], :] = b.T
        return a_all, b_all

    def branch(self, g: GraphWriter, fw, x: str, y: str, name: str, parts: list[str], outs: list[int]) -> str:
        """y plus the rows' adapters' change of this linear (`outs`: each part's output size)."""
        stacks = self.stacks(parts, outs)
        if stacks is None:
            return y
        a_all, b_all = stacks
        lab = f"{name}/lora"
        a_rows = g.op("Gather", [fw(g, f"{name}.lora_A", a_all), self.rows], f"{lab}/Gather_A", axis=0)
        t = g.op("MatMul", [x, a_rows], f"{lab}/MatMul_A")
        pieces = [t] if len(parts) == 1 else g.node(
            "Split", [t, g.const(f"{lab}/split", [a_all.shape[2] // len(parts)] * len(parts))], f"{lab}/Split",
            len(parts), axis=-1)
        deltas = [g.op("MatMul", [piece, g.op("Gather", [fw(g, f"{name}.lora_B{j}", b), self.rows],
                                              f"{lab}/Gather_B{j}", axis=0)], f"{lab}/MatMul_B{j}")
                  for j, (piece, b) in enumerate(zip(pieces, b_all))]
        delta = deltas[0] if len(deltas) == 1 else g.op("Concat", deltas, f"{lab}/Concat", axis=-1)
        return g.op("Add", [y, delta], f"{lab}/Add")


def write_adapters_file(folder: Path, names: list[str], specs: dict[str, Path]) -> None:
    (Path(folder) / ADAPTERS_FILE).write_text(json.dumps(
        {"input": ADAPTER_IDS, "adapters": [{"name": n, "id": i + 1, "source": str(specs[n])}
                                            for i, n in enumerate(names)]}, indent=1))


def read_adapter_names(folder: Path) -> list[str]:
    """The run-time adapters of an artifact, in id order (id = index + 1); [] without any."""
    path = Path(folder) / ADAPTERS_FILE
    if not path.is_file():
        return []
    return [a["name"] for a in sorted(json.loads(path.read_text())["adapters"], key=lambda a: a["id"])]
