"""Running one candidate of a workflow: its passes in order, each output cached under the hash of its
input and its config (a re-run reuses it; a changed option recomputes from that pass on), then its
metrics. A cache entry is a folder renamed into place only when complete, so a crash or Ctrl-C
mid-pass leaves no corrupt entry."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pressa import __version__
from pressa.artifact import read_json
from pressa.artifact.folder import raise_if_interrupted
from pressa.engine.config import PassSpec, Workflow
from pressa.errors import PressaError
from pressa.passes.base import BadConfig, NotApplicable, get_pass, make_config, run_into
from pressa.tempdirs import sweep

COMPLETE = ".complete"


def model_key(spec: str) -> str:
    """Identity of the input model: its path with every file's size and mtime (or the spec itself)."""
    p = Path(spec)
    parts = [str(p.resolve()) if p.exists() else spec]
    if p.is_file():
        parts.append(f"{p.stat().st_size}:{p.stat().st_mtime_ns}")
    elif p.is_dir():
        for f in sorted(p.rglob("*")):
            if f.is_file():
                st = f.stat()
                parts.append(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


_FINGERPRINT: list[str] = []


def code_fingerprint() -> str:
    """pressa's own source files (names, sizes, mtimes): a changed pass recomputes its cached steps."""
    if not _FINGERPRINT:
        root = Path(__file__).resolve().parents[1]
        parts = [f"{f.relative_to(root)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(root.rglob("*.py"))]
        _FINGERPRINT.append(hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12])
    return _FINGERPRINT[0]


class StepCache:
    def __init__(self, root: Path):
        self.root = Path(root)
        sweep(self.root, ".tmp-")          # entries half-built by runs that were killed (-9)

    def key(self, input_key: str, pass_type: str, options: dict) -> str:
        blob = json.dumps([input_key, pass_type, options, __version__, code_fingerprint()], sort_keys=True,
                          default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def get(self, key: str) -> Path | None:
        d = self.root / key
        return d if (d / COMPLETE).is_file() else None

    def put(self, key: str, build: Callable[[Path], dict]) -> tuple[Path, dict]:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            report = build(tmp)
            raise_if_interrupted()
            (tmp / COMPLETE).write_text(json.dumps(report, default=str))
            final = self.root / key
            if final.exists():                       # another run finished it first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.rename(final)
            return final, report
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def report(path: Path) -> dict:
        return read_json(path / COMPLETE)


@dataclass
class Trial:
    id: int
    options: dict
    steps: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    artifact: str | None = None
    error: str | None = None
    seconds: float = 0.0


def run_chain(wf: Workflow, passes: list[PassSpec], options: dict, cache: StepCache,
              log: Callable[[str], None], progress=None) -> tuple[Path | str, list[dict]]:
    """Apply the passes with these options; returns (final artifact, step records)."""
    current: Path | str = wf.model
    key = model_key(wf.model)
    steps = []
    made_llm = False                  # the previous pass wrote a model folder (finetune) a converter reads
    for spec in passes:
        cls = get_pass(spec.type)
        opts = options.get(spec.key, spec.fixed)
        cfg = make_config(cls, opts, f"passes.{spec.key}")
        k = cache.key(key, cls.name, cfg.model_dump(mode="json"))
        hit = cache.get(k)
        if hit is not None:
            rep = StepCache.report(hit)
            if rep.get("not_applicable"):
                log(f"  {spec.key} ({cls.name}): cache hit, not applicable: {rep['not_applicable']}")
                steps.append({"pass": spec.key, "cached": True, "skipped": rep["not_applicable"]})
                continue
            log(f"  {spec.key} ({cls.name}): cache hit")
            steps.append({"pass": spec.key, "cached": True, "cache_key": k})
            current, key, made_llm = hit, k, cls.output_kind == "llm"
            continue
        _check_input(cls, current, wf, spec, made_llm)
        log(f"  {spec.key} ({cls.name}): running")
        t0 = time.perf_counter()
        src = current

        try:
            from pressa.log import quiet_tools

            with quiet_tools():
                out, rep = cache.put(k, lambda tmp, c=cls, o=cfg, i=src: _build_step(c, o, i, tmp, log, progress))
        except NotApplicable as err:
            cache.put(k, lambda tmp, e=str(err): {"not_applicable": e})
            log(f"  {spec.key} ({cls.name}): not applicable, skipped: {err}")
            steps.append({"pass": spec.key, "cached": False, "skipped": str(err)})
            continue
        steps.append({"pass": spec.key, "cached": False, "cache_key": k,
                      "seconds": round(time.perf_counter() - t0, 2)})
        current, key, made_llm = out, k, cls.output_kind == "llm"
    return current, steps


def chain_keys(wf: Workflow, options: dict, cache: StepCache) -> list[str]:
    """The cache keys of a candidate's steps, in order, as run_chain computes them (a step cached as not
    applicable passes its input's key on)."""
    key, keys = model_key(wf.model), []
    for spec in wf.passes:
        cls = get_pass(spec.type)
        cfg = make_config(cls, options.get(spec.key, spec.fixed), f"passes.{spec.key}")
        k = cache.key(key, cls.name, cfg.model_dump(mode="json"))
        keys.append(k)
        hit = cache.get(k)
        if hit is None or not StepCache.report(hit).get("not_applicable"):
            key = k
    return keys


def _build_step(cls, cfg, src, tmp: Path, log, progress) -> dict:
    """Run one pass from `src` into the cache's temporary folder; returns its JSON-able report."""
    rep, _ = run_into(cls, cfg, src, tmp, progress, log)
    plain = (str, int, float, bool, dict, list, type(None))
    return {k: v for k, v in rep.items() if isinstance(v, plain)}


def _check_input(cls, current, wf: Workflow, spec: PassSpec, made_llm: bool = False) -> None:
    is_source = isinstance(current, str) or Path(current) == Path(wf.model) or made_llm
    if is_source and wf.model_kind in ("llm", "hf") and cls.input_kind == "onnx":
        raise BadConfig(f"passes.{spec.key}: the input model is not ONNX yet; start with a conversion pass "
                        "(ModelBuilder for LLMs, OnnxConversion for other Hugging Face models)")
    if cls.input_kind in ("llm", "hf") and not is_source:
        raise BadConfig(f"passes.{spec.key}: {cls.name} converts the input model and must come first")


def precision_changing(wf: Workflow, options: dict) -> bool:
    for spec in wf.passes:
        opts = options.get(spec.key, spec.fixed)
        if spec.type.startswith("quantize") or spec.type == "convert-fp16":
            return True
        if spec.type == "model-builder" and opts.get("precision", "int4") != "fp32":
            return True
    return False


def run_trial(trial: Trial, wf: Workflow, cache: StepCache, evaluate: Callable[[Path], dict],
              log: Callable[[str], None]) -> Trial:
    t0 = time.perf_counter()
    try:
        art, trial.steps = run_chain(wf, wf.passes, trial.options, cache, log)
        if isinstance(art, str) or Path(art) == Path(wf.model) and wf.model_kind != "onnx":
            raise PressaError("no pass produced a model")
        trial.artifact = str(art)
        trial.metrics = evaluate(Path(art))
    except BadConfig:
        raise
    except (PressaError, Exception) as err:      # a failed trial is recorded; the search goes on
        trial.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        log(f"  trial {trial.id} failed: {trial.error}")
    trial.seconds = round(time.perf_counter() - t0, 2)
    return trial
