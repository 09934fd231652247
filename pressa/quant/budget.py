"""Mixed precision at a byte budget: which linear weights get which format (8, 4 or 2 bits, and for 4 bits
groups of 1, 2 or 4 times the group size) so that the model fits the size the user gives
(`--target-size MB`, `--bits-per-weight B`) and loses least.

Each weight's loss in each format is measured (its relative output error on calibration inputs, or its
relative reconstruction error without data) and the sum is minimised under the budget exactly, as a
multiple-choice knapsack solved by dynamic programming over bytes counted in fixed units (rounded up,
so the budget is never exceeded). The unit does not depend on the budget: a larger budget only adds
feasible choices, so it never loses more (monotone)."""

from __future__ import annotations

import numpy as np

from pressa.errors import BadArgument

WIDTHS = (2, 4, 8)           # the widths ONNX Runtime's MatMulNBits runs on CPU (3 is refused: "only 2b, 4b, 8b")
UNITS = 16384                # resolution of the search: the whole range of sizes in this many steps
ALIGN, INLINE = 4096, 1024   # as the graph writer stores tensors (pressa.capture.onnx_writer)


def stored_bytes(nbytes: int, padded: bool) -> int:
    """What a tensor of `nbytes` adds: its bytes, or (padded) as laid out on disk."""
    if not padded:
        return nbytes
    return nbytes if nbytes <= INLINE else -(-nbytes // ALIGN) * ALIGN


def matmulnbits_bytes(n: int, k: int, bits: int, block: int, symmetric: bool, padded: bool = False) -> int:
    """Bytes of one MatMulNBits weight as pressa writes it: codes, float16 scales, packed zero points."""
    nb = -(-k // block)
    parts = [n * nb * block * bits // 8, n * nb * 2] + ([] if symmetric else [n * (-(-nb * bits // 8))])
    return sum(stored_bytes(p, padded) for p in parts)


def formats(group: int) -> tuple[tuple[int, int], ...]:
    """(bits, group size) a weight may take, around the user's group size: 2 and 8 bits in it, 4 bits in
    it and in groups 2 and 4 times larger (fewer scales: 4.3 and 4.2 bits per weight instead of 4.6)."""
    return ((2, group),) + tuple((4, g) for g in (group * 4, group * 2, group) if g <= 256) + ((8, group),)


def choose_bits(options: dict[str, dict], budget: int) -> dict:
    """options[key][choice] = (bytes, loss). The choice per key with the least total loss whose bytes sum
    to at most `budget`. Raises BadArgument when even the smallest choice of every key is over it."""
    keys = list(options)
    low = {k: min(b for b, _ in options[k].values()) for k in keys}
    high = sum(max(b for b, _ in options[k].values()) for k in keys)
    floor = sum(low.values())
    if budget < floor:
        raise BadArgument(f"the budget leaves {budget / 1e6:.2f} MB for the linear weights; the smallest choice "
                          f"of each needs {floor / 1e6:.2f} MB; give a larger size")
    unit = max(1, -(-(high - floor) // UNITS))
    cap = min((budget - floor) // unit, UNITS + len(keys))
    cost = np.full(cap + 1, np.inf)
    cost[0] = 0.0
    picks = []
    for k in keys:
        widths = sorted(options[k])
        new = np.full(cap + 1, np.inf)
        pick = np.zeros(cap + 1, np.int8)
        for ci, bits in enumerate(widths):
            nbytes, loss = options[k][bits]
            d = -(-(nbytes - low[k]) // unit)
            if d > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[d:] = cost[:cap + 1 - d] + loss
            better = cand < new
            new[better], pick[better] = cand[better], ci
        cost = new
        picks.append((k, widths, pick))
    u = int(np.argmin(cost))
    chosen = {}
    for k, widths, pick in reversed(picks):
        bits = widths[pick[u]]
        chosen[k] = bits
        u -= -(-(options[k][bits][0] - low[k]) // unit)
    return {k: chosen[k] for k in keys}
