"""Ranking a workflow's trials: metric values, goals (thresholds and improvements over the original),
the order of priorities, the Pareto front, and the accuracy guard's warning. Pure functions over
trials, tested without running anything."""

from __future__ import annotations

import math

from pressa.engine.config import Workflow
from pressa.engine.runner import Trial


def _subs(wf: Workflow) -> list[tuple[str, str, bool, int, tuple | None]]:
    """(metric, sub-metric, higher is better, priority, goal), by priority."""
    rows = [(m.name, s.name, s.higher_is_better, s.priority, s.goal) for m in wf.metrics for s in m.subs]
    return sorted(rows, key=lambda r: r[3])


def value(t: Trial, metric: str, sub: str) -> float | None:
    v = t.metrics.get(metric, {}).get(sub)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def meets_goals(t: Trial, wf: Workflow, baseline: Trial | None) -> bool:
    for metric, sub, higher, _, goal in _subs(wf):
        if goal is None:
            continue
        v = value(t, metric, sub)
        if v is None:
            return False
        kind, target = goal
        if kind == "threshold":
            if (v < target) if higher else (v > target):
                return False
            continue
        b = value(baseline, metric, sub) if baseline else None
        if b is None:
            continue
        gain = (v - b) if higher else (b - v)
        if kind.startswith("percent"):
            gain = 100.0 * gain / abs(b) if b else 0.0
        if kind.endswith("min-improvement") and gain < target:
            return False
        if kind.endswith("max-degradation") and -gain > target:
            return False
    return True


def rank_key(t: Trial, wf: Workflow) -> tuple:
    out = []
    for metric, sub, higher, _, _ in _subs(wf):
        v = value(t, metric, sub)
        out.append(math.inf if v is None else (-v if higher else v))
    return tuple(out)


def pareto(trials: list[Trial], wf: Workflow) -> set[int]:
    ok = [t for t in trials if t.error is None]
    keys = {t.id: rank_key(t, wf) for t in ok}
    front = set()
    for t in ok:
        dominated = any(all(a <= b for a, b in zip(keys[o.id], keys[t.id])) and keys[o.id] != keys[t.id]
                        for o in ok if o.id != t.id)
        if not dominated:
            front.add(t.id)
    return front


def _speed(t: Trial, wf: Workflow) -> float | None:
    for m in wf.metrics:
        if m.type in ("latency", "throughput"):
            for s in m.subs:
                v = value(t, m.name, s.name)
                if v is not None:
                    return 1.0 / v if m.type == "latency" else v
    return None


def guard_warning(best: Trial, trials: list[Trial], wf: Workflow) -> str | None:
    """Warn when another candidate of similar speed (within 10%) is markedly more accurate."""
    kind = next((m for m in wf.metrics if m.type in ("accuracy", "perplexity")), None)
    name, sub, lower = (kind.name, kind.subs[0].name, kind.type == "perplexity") if kind else \
        ("accuracy guard", None, None)
    if name not in best.metrics:
        return None
    sub = sub or next(iter(best.metrics[name]))
    lower = lower if lower is not None else sub == "perplexity"
    mine, speed = value(best, name, sub), _speed(best, wf)
    if mine is None or speed is None:
        return None
    for t in trials:
        if t.error or t.id == best.id:
            continue
        other, s = value(t, name, sub), _speed(t, wf)
        if other is None or s is None or s < 0.9 * speed:
            continue
        better = (mine - other) / max(abs(mine), 1e-9) > 0.05 if lower else other - mine > 0.01
        if better:
            return (f"candidate {t.id} is about as fast ({s / speed:.2f}x) and markedly more accurate "
                    f"({name} {sub}: {other:.4g} vs {mine:.4g}); the metrics' priorities chose {best.id}")
    return None


def describe(options: dict, wf: Workflow) -> str:
    parts = [f"{p.key}.{o}={options[p.key][o]}" for p in wf.passes for o in p.space]
    return ", ".join(parts) or "the configured passes"
