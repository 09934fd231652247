"""Run-time LoRA adapters (auto-opt --adapters): the base weights quantized once, each adapter's A and B
kept beside them (float in float builds, at the base's bits in quantized ones), and each row of a batch
choosing its adapter by the graph input `adapter_ids` (0: none; 1..n: the adapters in artifact order;
default 0, so runtimes that do not know the input run the base).

Per linear that an adapter changes, for the rows' adapters k: y = x @ W^T + (x @ A_k^T) @ (scale_k B_k)^T,
computed as one wider base linear: t = mask * (x @ A_all) (every adapter's A side by side, the row's ranks
kept by a mask), then y = [x, t] @ [W, B_all]^T, every adapter's B stacked onto the base weight along
its input axis (quantized with it, in blocks of its own, the last one partial). Three small nodes per
linear (A, mask, Concat) and no second output pass: in a decode step each extra node costs ~3 us (a
small MatMulNBits ~5 us), which with the adapter's bytes is what its decode step pays. A's zero columns
put t on a block bound of the wide weight (no Pad node), t is as wide as the ranks kept (K of the wide
weight need not fill its last block), and an artifact with one adapter masks every linear with one
[B, 1, 1] row mask. A fused linear (q, k, v stacked; gate and up) takes the parts' A side by side and
their B block-diagonal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from onnx import TensorProto

from pressa.artifact.llm_io import INPUT_IDS
from pressa.capture.onnx_writer import GraphWriter
from pressa.errors import BadArgument
from pressa.quant.packing import matmulnbits_tensors
from pressa.quant.rtn import QuantizedWeight, quantize_rtn

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


def compact(a: np.ndarray, b: np.ndarray, energy: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(A [r', K], B [N, r']) with the product B A of a LoRA pair at the smallest rank r' that keeps
    `energy` of its squared singular values (1.0: all but those that are zero to float precision). The
    singular values go into A's rows (quantized per row), so that B's columns (quantized in groups along
    the rank axis, stacked onto the base weight) all have unit norm."""
    qb, rb = np.linalg.qr(np.asarray(b, np.float64))
    qa, ra = np.linalg.qr(np.asarray(a, np.float64).T)
    u, sv, vt = np.linalg.svd(rb @ ra.T)
    power = np.cumsum(sv ** 2)
    if power[-1] <= 0:
        return np.zeros((1, a.shape[1]), np.float32), np.zeros((b.shape[0], 1), np.float32)
    keep = min(len(sv), int(np.searchsorted(power, min(energy, 1 - 1e-12) * power[-1])) + 1)
    return ((sv[:keep, None] * (vt[:keep] @ qa.T)).astype(np.float32), (qb @ u[:, :keep]).astype(np.float32))


class RuntimeAdapters:
    def __init__(self, specs: dict[str, Path], family: dict[str, str], energy: float = 1.0):
        """`family`: pressa's weight names -> the names in the checkpoint the adapters were trained on;
        `energy`: each pair kept at the rank that holds this share of its update's energy (compact)."""
        from pressa.finetune.merge import lora_scale, read_adapter

        self.specs, self.names = specs, list(specs)
        self.deltas: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
        self.ranks: list[tuple[int, int]] = []           # per adapter: ranks kept, ranks it had (all linears)
        self.family = family
        for name, folder in specs.items():
            cfg, pairs = read_adapter(folder)
            missing = sorted(set(pairs) - set(family.values()))
            if missing:
                raise BadArgument(f"adapter {name}: it changes {missing[0]}, which the model does not have; was it "
                                  "trained on this model?")
            scale = lora_scale(cfg)
            self.deltas.append({n: compact(a, b * scale, energy) for n, (a, b) in pairs.items()})
            self.ranks.append((sum(a.shape[0] for a, _ in self.deltas[-1].values()),
                               sum(a.shape[0] for a, _ in pairs.values())))
        self.rows: str | None = None
        self._masks: dict[tuple, str] = {}

    def write(self, folder: Path) -> None:
        """adapters.json beside the graph: each adapter's name, id and source folder."""
        (Path(folder) / ADAPTERS_FILE).write_text(json.dumps(
            {"input": ADAPTER_IDS, "adapters": [{"name": n, "id": i + 1, "source": str(self.specs[n])}
                                                for i, n in enumerate(self.names)]}, indent=1))

    def declare(self, g: GraphWriter) -> None:
        """The adapter_ids input (default [0]) and its value per batch row."""
        g.add_input(ADAPTER_IDS, TensorProto.INT64, ["adapter_batch"])
        g.weight(ADAPTER_IDS, np.zeros(1, np.int64))
        batch = g.op("Slice", [g.op("Shape", [INPUT_IDS], "/lora/Shape"), g.const("/lora/zero", [0]),
                               g.const("/lora/one", [1])], "/lora/batch")
        self.rows = g.op("Expand", [ADAPTER_IDS, batch], "/lora/rows")

    def stacks(self, parts: list[str], outs: list[int]) -> tuple[np.ndarray, np.ndarray, tuple] | None:
        """(A [in, R], B [R, sum(outs)], spans) for a linear made of `parts` (pressa names without
        .weight, `outs` their output sizes): part by part, each adapter's ranks (its own number) in turn
        along R; B is block-diagonal over the parts (one MatMul gives every part's change, in order);
        spans[k]: adapter k's column ranges. None when no adapter changes the linear."""
        found = [[d.get(self.family.get(p + ".weight", "")) for p in parts] for d in self.deltas]
        pieces, spans, at = [], [[] for _ in found], 0
        for j in range(len(parts)):
            for k, row in enumerate(found):
                if row[j] is not None:
                    pieces.append((j, at, *row[j]))
                    spans[k].append((at, at + row[j][0].shape[0]))
                    at += row[j][0].shape[0]
        if not pieces:
            return None
        a_all = np.zeros((pieces[0][2].shape[1], at), np.float32)
        b_all = np.zeros((at, sum(outs)), np.float32)
        starts = np.cumsum([0, *outs])
        for j, col, a, b in pieces:
            a_all[:, col: col + a.shape[0]] = a.T
            b_all[col: col + a.shape[0], starts[j]: starts[j + 1]] = b.T
        return a_all, b_all, tuple(tuple(x) for x in spans)

    def _mask(self, g: GraphWriter, spans: tuple, width: int) -> str:
        """[B, 1, width] (or [B, 1, 1] when the artifact has one adapter: one mask for every linear): 1 over
        the ranks of each row's adapter, 0 elsewhere (all 0 for the base). Columns outside every span are
        zeros of t already."""
        if len(self.names) == 1:
            spans, width = (((0, 1),),), 1          # a row's 0 or 1, broadcast over every linear's ranks
        key = (spans, width)
        if key not in self._masks:
            table = np.zeros((len(spans) + 1, 1, width), np.float32)          # its Gather: [B, 1, width]
            for k, ranges in enumerate(spans):
                for start, stop in ranges:
                    table[k + 1, 0, start:stop] = 1.0
            lab = f"/lora/mask_{len(self._masks)}"
            self._masks[key] = g.op("Gather", [g.weight(f"{lab}/table", table), self.rows], f"{lab}/Gather", axis=0)
        return self._masks[key]

    def linear(self, b, g: GraphWriter, x: str, name: str, w: np.ndarray, key: str, bits: int | None
               ) -> str | None:
        """y = x @ w.T plus the rows' adapters' change, as one base node over [x, t] (`b`: the
        DecoderBuilder: A and B are stored at the base linear's bits, float in float builds: merging an
        adapter and then quantizing loses as much); None when no adapter changes this linear."""
        parts = b.cfg.arch.linear_parts(int(key.split(".")[0]))[key.split(".")[1]]
        outs = [b.shape(p + ".weight")[0] for p in parts]
        stacks = self.stacks(parts, outs)
        if stacks is None:
            return None
        a_all, b_all, spans = stacks
        lab = f"{name}/lora"
        if bits is None:
            t = g.op("MatMul", [x, b.fw(g, f"{lab}/A", a_all)], f"{lab}/MatMul_A")
            t = g.op("Mul", [t, self._mask(g, spans, a_all.shape[1])], f"{lab}/Mul_mask")
            wide = np.concatenate([w.T, b_all]).astype(np.float32)
            return g.op("MatMul", [g.op("Concat", [x, t], f"{lab}/Concat", axis=-1), b.fw(g, f"{name}.weight", wide)],
                        f"{name}/MatMul")
        block = b.o.block_size       # t starts on a block bound of the wide weight: A's zero columns pad it
        before = (-w.shape[1]) % block                                     # (no Pad node per step)
        a_all = np.pad(a_all, ((0, 0), (before, 0)))
        spans = tuple(tuple((start + before, stop + before) for start, stop in ranges) for ranges in spans)
        t = b.matmul_nbits(g, x, f"{lab}/A", a_all.T, bits, key=f"{name}.lora")
        t = g.op("Mul", [t, self._mask(g, spans, a_all.shape[1])], f"{lab}/Mul_mask")
        base = b.quantize(w, bits, key)
        extra = quantize_rtn(np.ascontiguousarray(b_all.T), bits, block, b.o.symmetric, b.searching(bits))
        wide = joined(base, extra)
        x_wide = g.op("Concat", [x, t], f"{lab}/Concat", axis=-1)
        return b.matmul_nbits(g, x_wide, name, None, bits, packed=matmulnbits_tensors(wide), key=key,
                              shape=(w.shape[0], wide.k))


def joined(first: QuantizedWeight, second: QuantizedWeight) -> QuantizedWeight:
    """Two weights with the same rows quantized alike, side by side along K: the second starts on a block
    bound (the first's padding blocks included), and its own last block may be partial (K need not be a
    whole number of blocks: MatMulNBits pads the input's last block)."""
    zero_points = (None if first.zero_points is None
                   else np.concatenate([first.zero_points, second.zero_points], axis=1))
    q = np.concatenate([first.q, second.q], axis=1)
    return QuantizedWeight(q, np.concatenate([first.scales, second.scales], axis=1), zero_points, first.bits,
                           first.block_size, first.q.shape[1] * first.block_size + second.k)


def read_adapter_names(folder: Path) -> list[str]:
    """The run-time adapters of an artifact, in id order (id = index + 1); [] without any."""
    path = Path(folder) / ADAPTERS_FILE
    if not path.is_file():
        return []
    return [a["name"] for a in sorted(json.loads(path.read_text())["adapters"], key=lambda a: a["id"])]
