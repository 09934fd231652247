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
from pressa.engine.executors import LocalExecutor, make_executor
from pressa.engine.metrics import Evaluator
from pressa.engine.paths import check_workflow_paths, record_workflow, workflow_inputs
from pressa.engine.ranking import describe, guard_warning, meets_goals, pareto, rank_key
from pressa.engine.report import write_reports
from pressa.engine.runner import StepCache, Trial, precision_changing, run_chain
from pressa.errors import PressaError


class AllTrialsFailed(PressaError):
    exit_code = 1


def _candidates(wf: Workflow) -> list[dict]:
    cands = wf.candidates()
    if wf.algorithm == "random":
        random.Random(wf.seed).shuffle(cands)
    return cands[: wf.max_trials or len(cands)]


def search(wf: Workflow, log: Callable[[str], None], evaluator: Evaluator, cache: StepCache,
           executor=None) -> list[Trial]:
    """The trials the search strategy asks for, run by `executor` (engine/executors.py; default: here,
    one after another). Candidates known up front (exhaustive, random, each pass of pass-by-pass) go to
    the executor together; TPE asks for one at a time, its sampler in this process."""
    executor = executor or LocalExecutor()
    trials: list[Trial] = []
    seen: dict[str, Trial] = {}

    def signature(options: dict) -> str:
        return json.dumps(options, sort_keys=True, default=str)

    def batch(options_list: list[dict]) -> list[Trial]:
        new = []
        for options in options_list:
            if signature(options) not in seen:
                t = Trial(len(trials), options)
                trials.append(t)
                seen[signature(options)] = t
                new.append(t)
        executor.run(new, wf, cache, evaluator, log, lambda t: log(f"trial {t.id}: {describe(t.options, wf)}"))
        return [seen[signature(o)] for o in options_list]

    def trial(options: dict) -> Trial:
        return batch([options])[0]

    if wf.execution_order == "pass-by-pass" and any(p.space for p in wf.passes):
        chosen = {p.key: {**p.fixed, **{o: v[0] for o, v in p.space.items()}} for p in wf.passes}
        for p in wf.passes:
            if not p.space:
                continue
            sub = Workflow(**{**wf.__dict__, "passes": [
                type(q)(q.key, q.type, chosen[q.key] if q.key != p.key else q.fixed, q.space if q.key == p.key
                        else {}) for q in wf.passes]})
            done = batch(_candidates(sub))
            ok = [t for t in done if t.error is None]
            if ok:
                chosen = dict(min(ok, key=lambda t: rank_key(t, wf)).options)
    elif wf.algorithm == "tpe" and wf.candidates()[1:]:
        _tpe(wf, trial)
    else:
        batch(_candidates(wf))
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


def run_workflow(wf: Workflow, log: Callable[[str], None], overwrite: bool = False, runs: int = 20) -> dict:
    from pressa.artifact import atomic_folder

    check_workflow_paths(wf, overwrite)
    cache = StepCache(wf.cache_dir)
    t0 = time.perf_counter()
    guard = any(precision_changing(wf, c) for c in wf.candidates()[:1])
    original = _original(wf, cache, log) if guard or any(m.type == "accuracy" for m in wf.metrics) or any(
        s.goal and s.goal[0] != "threshold" for m in wf.metrics for s in m.subs) else None
    evaluator = Evaluator(wf.metrics, original, runs, guard, wf.accuracy_data, wf.runtime)
    baseline = None
    if original is not None and any(s.goal and s.goal[0] != "threshold" for m in wf.metrics for s in m.subs):
        baseline = Trial(-1, {}, artifact=str(original), metrics=evaluator(original))
    executor = make_executor(wf.executor, log)
    try:
        trials = search(wf, log, evaluator, cache, executor)
    finally:
        executor.close()
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
        record_workflow(tmp, wf, best)
    return summary


def _original(wf: Workflow, cache: StepCache, log) -> Path | None:
    """The model to compare against: the ONNX input itself, the capture of a Hugging Face model, or
    an fp32 build of an LLM (cached like any step)."""
    from pressa.engine.config import PassSpec

    if wf.model_kind == "onnx":
        from pressa.graph.onnx_io import model_folder

        return model_folder(wf.model) if Path(wf.model).is_file() else Path(wf.model)
    from pressa.passes.base import get_pass

    first = wf.passes[0]
    chain = []
    if get_pass(first.type).output_kind == "llm":          # fine-tuned first: the reference is the tuned model
        chain, what = [first], "the fine-tuned model as fp32"
    if wf.model_kind == "llm":
        chain.append(PassSpec("original", "model-builder", {"precision": "fp32"}, {}))
    elif first.type == "capture":
        chain.append(PassSpec("original", "capture", dict(first.fixed), {}))
    else:
        return None
    log(f"reference: {what if len(chain) > 1 else 'the original model as fp32'}")
    art, _ = run_chain(wf, chain, {}, cache, log)
    return Path(art)


def dry_run(wf: Workflow) -> dict:
    cache = StepCache(wf.cache_dir)
    from pressa.engine.runner import chain_keys
    from pressa.passes.base import get_pass

    cands = _candidates(wf) if wf.algorithm != "tpe" else wf.candidates()
    plan = [[{"pass": p.key, "type": get_pass(p.type).name, "options": c[p.key], "cached": cache.get(k) is not None}
             for p, k in zip(wf.passes, chain_keys(wf, c, cache))] for c in cands]
    return {"model": wf.model, "model_kind": wf.model_kind, "passes": [asdict(p) for p in wf.passes],
            "search": {"algorithm": wf.algorithm, "execution_order": wf.execution_order,
                       "space_size": len(wf.candidates()), "trials": len(cands)},
            "metrics": [m.name for m in wf.metrics], "cache_dir": str(wf.cache_dir),
            "output_dir": str(wf.output_dir), "plan": plan, "notes": wf.notes}
