"""Mixed precision by ratio (like NNCF's `ratio`): which weights go to int4 and which stay int8.

Data-free criterion: the normalized int4 RTN reconstruction error of each weight. The weights
with the largest error are kept in int8 until the int4 share of parameters is at most `ratio`.
"""

from __future__ import annotations


def assign_bits(errors: dict[str, float], sizes: dict[str, int], ratio: float) -> dict[str, int]:
    """`errors`/`sizes` by weight key; returns key -> 4 or 8 with sum(int4 sizes) <= ratio * total."""
    if ratio >= 1.0:
        return {k: 4 for k in errors}
    total = sum(sizes.values())
    budget = ratio * total
    bits = {k: 8 for k in errors}
    used = 0
    for k in sorted(errors, key=lambda k: errors[k]):      # least sensitive first into int4
        if used + sizes[k] <= budget:
            bits[k] = 4
            used += sizes[k]
    return bits

