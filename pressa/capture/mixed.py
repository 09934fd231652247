"""Mixed precision for decoder LLMs: which linear weights get which bits.

Two ways to ask: `--ratio` (the int4 share of the weights, the rest int8, as NNCF's ratio) and a byte
budget (`--target-size MB` or `--bits-per-weight B`: 2, 4 or 8 bits per weight chosen to lose least at
that size, pressa.quant.budget). Either ranks weights by their error: the relative output error on
calibration inputs where calibration data is given (data_error), else the relative RTN error of the
weight itself."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pressa.capture.build_options import BuildOptions
from pressa.capture.config import DecoderConfig
from pressa.capture.embeddings import embedding_block
from pressa.errors import BadArgument
from pressa.quant.budget import choose_bits, formats, matmulnbits_bytes, stored_bytes
from pressa.quant.rtn import dequantize, quant_error, quantize_rtn
from pressa.quant.sensitivity import assign_bits
from pressa.sources.base import Source

Progress = Callable[[int, int, str], None]
PROTO_BYTES_PER_LAYER = 6_500        # model.onnx itself (nodes, inline constants), measured on SmolLM2 int4
SAMPLE_ELEMENTS, BANDS = 1 << 22, 16   # a larger weight's data-free error is estimated on bands of its rows


def weight_groups(cfg: DecoderConfig, src: Source) -> dict[str, list[str]]:
    """Mixed-precision keys (as the builder names them) -> the source tensors they are made of."""
    out = {f"{i}.{key}": [n + ".weight" for n in parts] for i in range(cfg.num_layers)
           for key, parts in cfg.arch.linear_parts(i).items()}
    if not cfg.tie_embeddings and "lm_head.weight" in src.weights:
        out["lm_head"] = ["lm_head.weight"]
    return out


def stacked_weight(src: Source, names: list[str]) -> np.ndarray:
    """A mixed-precision key's weight: its source tensors stacked along the output axis."""
    return np.concatenate([src.weights(n) for n in names])


def sampled_weight(src: Source, names: list[str]) -> np.ndarray:
    """A key's weight for its data-free error: whole up to SAMPLE_ELEMENTS values, else a band of rows at
    the centre of each of BANDS equal strata of each source tensor, about SAMPLE_ELEMENTS values in all.
    RTN's relative error is a mean over rows, so the estimate moves the budget's choice only between near
    ties (on an 8B model it reads and quantizes a tenth of the weights, 5 formats each)."""
    n, k = _shapes_nk(src, names)
    if n * k <= SAMPLE_ELEMENTS:
        return stacked_weight(src, names)
    parts = []
    for name in names:
        rows = src.weights.shape(name)[0]
        band = max(1, SAMPLE_ELEMENTS * rows // (n * k * BANDS))
        whole = None if src.weights.reads_rows else src.weights(name)
        for b in range(BANDS):
            start = min(rows - band, max(0, (2 * b + 1) * rows // (2 * BANDS) - band // 2))   # stratum centres
            parts.append(src.weights.rows(name, start, start + band) if whole is None else
                         whole[start:start + band])
    return np.concatenate(parts)


def data_error(w: np.ndarray, stats, opts: BuildOptions, bits: int = 4, group: int | None = None) -> float:
    """The error of a layer's output on calibration inputs at `bits`, relative: tr(E H E^T) / tr(W H W^T)."""
    e = dequantize(quantize_rtn(w, bits, group or opts.block_size, opts.symmetric)) - w
    h = stats.hessian()
    return float(np.sum((e @ h) * e) / max(float(np.sum((w @ h) * w)), 1e-30))


def data_errors_by_format(w: np.ndarray, stats, opts: BuildOptions) -> dict[tuple[int, int], float]:
    return {(b, g): data_error(w, stats, opts, b, g) for b, g in formats(opts.block_size)}


def mixed_bits(cfg: DecoderConfig, src: Source, opts: BuildOptions, ratio: float,
               progress: Progress | None = None, data_errors: dict[str, float] | None = None,
               log: Callable[[str], None] = lambda s: None) -> dict[str, int]:
    """Bits per weight for --ratio: the weights whose int4 error costs most get int8."""
    groups = weight_groups(cfg, src)
    errors, sizes = {}, {}
    for j, (key, names) in enumerate(groups.items()):
        if progress:
            progress(j, len(groups), f"sensitivity {key}")
        sizes[key] = sum(int(np.prod(src.weights.shape(n))) for n in names)
        errors[key] = (data_errors[key] if data_errors and key in data_errors
                       else quant_error(sampled_weight(src, names), 4, opts.block_size, opts.symmetric))
    bits = assign_bits(errors, sizes, ratio)
    n8 = sum(1 for b in bits.values() if b == 8)
    how = ", data-aware" if data_errors else ""
    log(f"mixed precision: {len(bits) - n8} weights int4, {n8} int8 (ratio {ratio}{how})")
    return bits


def budgeted(opts: BuildOptions) -> bool:
    return opts.target_size_mb is not None or opts.bits_per_weight is not None


def fixed_bytes(cfg: DecoderConfig, src: Source, opts: BuildOptions, groups: dict[str, list[str]],
                padded: bool) -> int:
    """Bytes of everything but the budgeted linears: the embedding (quantized as the builder does), norms,
    biases and (padded: on disk) model.onnx itself (the rotary tables are computed in the
    graph, pressa.capture.positions)."""
    inside = {n for names in groups.values() for n in names}
    total = 0
    for name in src.weights.names:
        if name in inside:
            continue
        shape = src.weights.shape(name)
        if name == "model.embed_tokens.weight":
            v, h = shape
            bits, block = opts.embedding_bits, embedding_block(h, opts.block_size)
            nb = -(-h // block)
            parts = [v * nb * block * bits // 8, v * nb * 2] + ([v * -(-nb * bits // 8)] if bits == 4 and
                                                                  not opts.symmetric else [])
            total += sum(stored_bytes(p, padded) for p in parts)
        else:
            total += stored_bytes(4 * int(np.prod(shape)), padded)
    if padded:
        total += PROTO_BYTES_PER_LAYER * cfg.num_layers
    return total


def _shapes_nk(src: Source, names: list[str]) -> tuple[int, int]:
    return sum(src.weights.shape(x)[0] for x in names), src.weights.shape(names[0])[1]


def budget_frame(cfg: DecoderConfig, src: Source, opts: BuildOptions) -> dict:
    """The budget in bytes, what it is measured on, the bytes outside the linears and the parameters;
    raises BadArgument (before any slow work) when the smallest mixed build would not fit."""
    if cfg.arch.moe:
        raise BadArgument(f"{cfg.arch.model_type}: --target-size / --bits-per-weight are not built for mixture-of-"
                          "experts layers yet; use --precision int4 or --ratio")
    groups = weight_groups(cfg, src)
    padded = opts.target_size_mb is not None
    params = sum(int(np.prod(src.weights.shape(n))) for n in src.weights.names)
    budget = int(opts.target_size_mb * 1e6) if padded else int(opts.bits_per_weight * params / 8)
    fixed = fixed_bytes(cfg, src, opts, groups, padded)
    low = min(formats(opts.block_size))
    smallest = fixed + sum(matmulnbits_bytes(*_shapes_nk(src, names), *low, opts.symmetric, padded)
                           for names in groups.values())
    if budget < smallest:
        asked = (f"--target-size {opts.target_size_mb:g} MB" if padded
                 else f"--bits-per-weight {opts.bits_per_weight:g} ({budget / 1e6:.2f} MB of weights)")
        least = f"{smallest / 1e6:.2f} MB" if padded else f"{8 * smallest / params:.2f} bits per weight"
        raise BadArgument(f"{asked} is below the smallest mixed build (every linear weight at {low[0]} bits): "
                          f"{least}; give a larger size")
    return {"groups": groups, "padded": padded, "params": params, "budget": budget, "fixed": fixed}


def budget_bits(cfg: DecoderConfig, src: Source, opts: BuildOptions, progress: Progress | None = None,
                data_errors: dict[str, dict[tuple[int, int], float]] | None = None,
                log: Callable[[str], None] = lambda s: None) -> tuple[dict[str, tuple[int, int]], dict]:
    """(bits, group size) per weight for --target-size / --bits-per-weight, and the report pressa.json
    keeps."""
    frame = budget_frame(cfg, src, opts)
    groups, padded, budget = frame["groups"], frame["padded"], frame["budget"]
    options: dict[str, dict[tuple[int, int], tuple[int, float]]] = {}
    for j, (key, names) in enumerate(groups.items()):
        if progress:
            progress(j, len(groups), f"sensitivity {key}")
        if data_errors and key in data_errors:
            errors = data_errors[key]
        else:
            w = sampled_weight(src, names)
            errors = {f: quant_error(w, *f, opts.symmetric) for f in formats(opts.block_size)}
        n, k = _shapes_nk(src, names)
        options[key] = {f: (matmulnbits_bytes(n, k, *f, opts.symmetric, padded), errors[f])
                        for f in formats(opts.block_size)}
    chosen = choose_bits(options, budget - frame["fixed"])
    used = frame["fixed"] + sum(options[k][f][0] for k, f in chosen.items())
    counts = {f"{b}/{g}": sum(1 for v in chosen.values() if v == (b, g)) for b, g in formats(opts.block_size)}
    report = {"target_bytes": budget, "estimated_bytes": used, "measure": "model files" if padded else
              "weight bytes", "parameters": frame["params"], "weights_by_bits": counts,
              "loss_proxy": sum(options[k][f][1] for k, f in chosen.items()),
              "errors": "calibration outputs" if data_errors else "weight reconstruction"}
    log(f"mixed precision at {budget / 1e6:.1f} MB of {report['measure']}: "
        + ", ".join(f"{c} at {f} (bits/group)" for f, c in counts.items() if c) + f" ({used / 1e6:.1f} MB)")
    return chosen, report

COLOURS = {2: "#d7301f", 4: "#fdae61", 8: "#1a9850"}
PICTURE = "mixed_precision.svg"


def bits_picture(bits: dict[str, int], num_layers: int, groups: dict[str, int] | None = None) -> str:
    """An SVG of the bits each layer's linears got: one row per layer, one column per linear; a weight
    in groups larger than the smallest is drawn lighter."""
    groups = groups or {}
    smallest = min(groups.values(), default=0)
    columns = sorted({k.split(".", 1)[1] for k in bits if "." in k}, key=lambda c: ("qkv", "o", "gate_up",
                                                                                      "down").index(c)
                     if c in ("qkv", "o", "gate_up", "down") else 9)
    cell, left, top = 22, 64, 40
    width, height = left + cell * max(len(columns), 1) + 150, top + cell * num_layers + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           'font-size="11">', '<text x="4" y="16" font-size="13">bits per weight, by layer</text>']
    for j, c in enumerate(columns):
        out.append(f'<text x="{left + j * cell + 3}" y="{top - 6}" transform="rotate(-30 {left + j * cell + 3} '
                   f'{top - 6})">{c}</text>')
    for i in range(num_layers):
        y = top + i * cell
        out.append(f'<text x="4" y="{y + 15}">layer {i}</text>')
        for j, c in enumerate(columns):
            b, grp = bits.get(f"{i}.{c}"), groups.get(f"{i}.{c}")
            fill = COLOURS.get(b, "#cccccc")
            shade = 1.0 if not grp or grp == smallest else 0.55
            group = f", groups of {grp}" if grp else ""
            out.append(f'<rect x="{left + j * cell}" y="{y}" width="{cell - 2}" height="{cell - 2}" fill="{fill}" '
                       f'fill-opacity="{shade}"><title>layer {i} {c}: {b} bits{group}</title></rect>')
    lx = left + cell * len(columns) + 20
    for n, (b, fill) in enumerate(COLOURS.items()):
        out.append(f'<rect x="{lx}" y="{top + n * cell}" width="16" height="16" fill="{fill}"/>'
                   f'<text x="{lx + 22}" y="{top + n * cell + 12}">{b} bits</text>')
    if len(set(groups.values())) > 1:
        out.append(f'<text x="{lx}" y="{top + len(COLOURS) * cell + 12}">lighter: larger groups</text>')
    return "\n".join(out + ["</svg>"]) + "\n"
