"""The workflow engine: candidates from the passes' search spaces (exhaustive, random, or optuna's
TPE; joint or pass by pass), each run through the cache and measured; the Pareto front over the
metrics; the best candidate under the goals and priorities written to output_dir with footprints.json,
report.md and a plot."""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from pressa.engine.config import Workflow
from pressa.engine.metrics import Evaluator
from pressa.engine.report import write_reports
from pressa.engine.runner import StepCache, Trial, precision_changing, run_chain, run_trial
from pressa.errors import PressaError
from pressa.passes.base import BadConfig


class AllTrialsFailed(PressaError):
    exit_code = 1


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


def _candidates(wf: Workflow) -> list[dict]:
    cands = wf.candidates()
    if wf.algorithm == "random":
        random.Random(wf.seed).shuffle(cands)
    return cands[: wf.max_trials or len(cands)]


def search(wf: Workflow, log: Callable[[str], None], evaluator: Evaluator, cache: StepCache) -> list[Trial]:
    trials: list[Trial] = []
    seen: dict[str, Trial] = {}

    def trial(options: dict) -> Trial:
        sig = json.dumps(options, sort_keys=True, default=str)
        if sig in seen:
            return seen[sig]
        t = Trial(len(trials), options)
        log(f"trial {t.id}: {_describe(options, wf)}")
        run_trial(t, wf, cache, evaluator, log)
        trials.append(t)
        seen[sig] = t
        return t

    if wf.execution_order == "pass-by-pass" and any(p.space for p in wf.passes):
        chosen = {p.key: {**p.fixed, **{o: v[0] for o, v in p.space.items()}} for p in wf.passes}
        for p in wf.passes:
            if not p.space:
                continue
            sub = Workflow(**{**wf.__dict__, "passes": [
                type(q)(q.key, q.type, chosen[q.key] if q.key != p.key else q.fixed, q.space if q.key == p.key
                        else {}) for q in wf.passes]})
            done = [trial(c) for c in _candidates(sub)]
            ok = [t for t in done if t.error is None]
            if ok:
                chosen = dict(min(ok, key=lambda t: rank_key(t, wf)).options)
    elif wf.algorithm == "tpe" and wf.candidates()[1:]:
        _tpe(wf, trial)
    else:
        for c in _candidates(wf):
            trial(c)
    return trials


def _tpe(wf: Workflow, trial: Callable[[dict], Trial]) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    axes = [(p.key, o, vals) for p in wf.passes for o, vals in p.space.items()]
    total = len(wf.candidates())
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=wf.seed))

    def objective(tr) -> float:
        opts = {p.key: dict(p.fixed) for p in wf.passes}
        for key, o, vals in axes:
            idx = tr.suggest_categorical(f"{key}.{o}", list(range(len(vals))))
            opts[key][o] = vals[idx]
        t = trial(opts)
        if t.error:
            return math.inf
        return rank_key(t, wf)[0]

    study.optimize(objective, n_trials=min(wf.max_trials or total, total * 3))


def _describe(options: dict, wf: Workflow) -> str:
    parts = [f"{p.key}.{o}={options[p.key][o]}" for p in wf.passes for o in p.space]
    return ", ".join(parts) or "the configured passes"


def run_workflow(wf: Workflow, log: Callable[[str], None], overwrite: bool = False, runs: int = 20) -> dict:
    from pressa.artifact import atomic_folder

    check_workflow_paths(wf, overwrite)
    cache = StepCache(wf.cache_dir)
    t0 = time.perf_counter()
    guard = any(precision_changing(wf, c) for c in wf.candidates()[:1])
    original = _original(wf, cache, log) if guard or any(m.type == "accuracy" for m in wf.metrics) or any(
        s.goal and s.goal[0] != "threshold" for m in wf.metrics for s in m.subs) else None
    evaluator = Evaluator(wf.metrics, original, runs, guard, wf.accuracy_data)
    baseline = None
    if original is not None and any(s.goal and s.goal[0] != "threshold" for m in wf.metrics for s in m.subs):
        baseline = Trial(-1, {}, artifact=str(original), metrics=evaluator(original))
    trials = search(wf, log, evaluator, cache)
    ok = [t for t in trials if t.error is None]
    if not ok:
        raise AllTrialsFailed(f"every trial failed ({len(trials)}); the first: {trials[0].error if trials else '-'}")
    front = pareto(trials, wf)
    passing = [t for t in ok if meets_goals(t, wf, baseline)]
    best = min(passing or ok, key=lambda t: rank_key(t, wf))
    warning = guard_warning(best, trials, wf)
    if warning:
        log(f"warning: {warning}")
    if not passing:
        log("warning: no candidate meets every goal; the best by priority is written")
    with atomic_folder(wf.output_dir, overwrite, workflow_inputs(wf), "output_dir") as tmp:
        for f in Path(best.artifact).iterdir():
            if f.name == ".complete":
                continue
            (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
        summary = write_reports(tmp, wf, trials, best, front, baseline, warning, passing,
                                time.perf_counter() - t0)
        _record_workflow(tmp, wf, best)
    return summary


def written_by_workflow(folder: Path) -> bool:
    """An output_dir a workflow run wrote (its report beside its manifest): a re-run replaces it."""
    return (Path(folder) / "footprints.json").is_file() and (Path(folder) / "pressa.json").is_file()


def _record_workflow(folder: Path, wf: Workflow, best: Trial) -> None:
    """The output's pressa.json records the chosen candidate as a workflow without search: running it
    rebuilds this model."""
    from pressa.artifact import read_manifest, write_json
    from pressa.engine.execute import job

    manifest = read_manifest(folder)
    if manifest:
        steps = [(p.key, p.type, best.options.get(p.key, p.fixed)) for p in wf.passes]
        write_json(folder / "pressa.json", {**manifest, "workflow": job(wf.model, steps)})


def workflow_inputs(wf: Workflow) -> list:
    """What a workflow reads and must never write over: its model, its cache, its data files."""
    data = [m.data for m in wf.metrics] + [wf.accuracy_data]
    data += [v for p in wf.passes for k, v in p.fixed.items() if k.endswith("_data") and isinstance(v, str)]
    return [wf.model, wf.cache_dir, *data]


def check_workflow_paths(wf: Workflow, overwrite: bool) -> None:
    """Before any pass runs: output_dir may be written and overlaps no input (the cache included), and
    cache_dir can be written."""
    from pressa.artifact import check_output, check_writable, guard_inputs

    out, cache = Path(wf.output_dir).resolve(), Path(wf.cache_dir).resolve()
    if out == cache or out in cache.parents or cache in out.parents:
        raise BadConfig(f"output_dir {wf.output_dir} and cache_dir {wf.cache_dir} overlap; replacing the output "
                        "would delete the cache (or the reverse): give them separate folders")
    check_output(wf.output_dir, overwrite, workflow_inputs(wf), "output_dir")
    guard_inputs(wf.cache_dir, [wf.model], "cache_dir")
    check_writable(Path(wf.cache_dir) / "entry", option="cache_dir")


def _original(wf: Workflow, cache: StepCache, log) -> Path | None:
    """The model to compare against: the ONNX input itself, the capture of a Hugging Face model, or
    an fp32 build of an LLM (cached like any step)."""
    from pressa.engine.config import PassSpec

    if wf.model_kind == "onnx":
        from pressa.graph.onnx_io import model_folder

        return model_folder(wf.model) if Path(wf.model).is_file() else Path(wf.model)
    first = wf.passes[0]
    if wf.model_kind == "llm":
        spec = PassSpec("original", "model-builder", {"precision": "fp32"}, {})
    elif first.type == "capture":
        spec = PassSpec("original", "capture", dict(first.fixed), {})
    else:
        return None
    log("reference: the original model as fp32")
    art, _ = run_chain(wf, [spec], {}, cache, log)
    return Path(art)


def dry_run(wf: Workflow) -> dict:
    cache = StepCache(wf.cache_dir)
    from pressa.engine.runner import model_key
    from pressa.passes.base import get_pass, make_config

    cands = _candidates(wf) if wf.algorithm != "tpe" else wf.candidates()
    plan = []
    for c in cands:
        key, steps = model_key(wf.model), []
        for p in wf.passes:
            cls = get_pass(p.type)
            cfg = make_config(cls, c[p.key], f"passes.{p.key}")
            k = cache.key(key, cls.name, cfg.model_dump(mode="json"))
            hit = cache.get(k) is not None
            steps.append({"pass": p.key, "type": cls.name, "options": c[p.key], "cached": hit})
            key = k
        plan.append(steps)
    return {"model": wf.model, "model_kind": wf.model_kind, "passes": [asdict(p) for p in wf.passes],
            "search": {"algorithm": wf.algorithm, "execution_order": wf.execution_order,
                       "space_size": len(wf.candidates()), "trials": len(cands)},
            "metrics": [m.name for m in wf.metrics], "cache_dir": str(wf.cache_dir),
            "output_dir": str(wf.output_dir), "plan": plan, "notes": wf.notes}
