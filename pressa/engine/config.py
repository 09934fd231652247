"""Workflow configs: Olive's schema (the tutorial's `input_model.config.hf_config`, `engine.*`, and the
current `HfModel` / top-level `search_strategy` form), NNCF's YAML, and pressa's own, all turned into
one validated Workflow. Errors name the key path and the nearest known key."""

from __future__ import annotations

import difflib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from pressa.errors import first_line
from pressa.passes.base import BadConfig, get_pass, make_config
from pressa.runtime.options import RuntimeOptions, openvino_device

TOP_KEYS = {"input_model", "systems", "evaluators", "passes", "engine", "search_strategy", "evaluator", "host",
            "target", "cache_dir", "output_dir", "data_configs", "workflow_id", "log_severity_level",
            "clean_cache", "evaluate_input_model", "output_name", "packaging_config", "pass_flows", "model",
            "input_info", "compression", "target_device", "accuracy_check", "calibration_data", "log_level",
            "no_artifacts", "verbose", "runtime"}
ENGINE_KEYS = {"search_strategy", "evaluator", "host", "target", "cache_dir", "output_dir", "log_severity_level",
               "clean_cache", "evaluate_input_model", "output_name", "packaging_config", "plot_pareto_frontier",
               "log_to_file", "no_artifacts", "runtime", "executor", "ray_address", "ray_cpus_per_trial",
               "ray_memory_per_trial_mb", "ray_shared_cache"}
METRIC_TYPES = {"latency", "throughput", "accuracy", "perplexity", "size", "memory"}
LATENCY_STATS = ("avg", "min", "max", "p50", "p75", "p90", "p95", "p99", "p999")
GOALS = {"threshold", "min-improvement", "max-degradation", "percent-min-improvement", "percent-max-degradation"}


@dataclass
class PassSpec:
    key: str                     # the config's name for this step
    type: str                    # the registered pass name
    fixed: dict                  # option -> value
    space: dict                  # option -> list of candidate values


@dataclass
class SubMetric:
    name: str
    higher_is_better: bool
    priority: int
    goal: tuple[str, float] | None


@dataclass
class MetricSpec:
    name: str
    type: str
    subs: list[SubMetric]
    data: str | None = None


@dataclass
class Workflow:
    model: str
    model_kind: str              # "llm" (built from weights) | "hf" (capture) | "onnx"
    task: str | None
    passes: list[PassSpec]
    metrics: list[MetricSpec]
    execution_order: str = "joint"
    algorithm: str = "exhaustive"
    max_trials: int | None = None
    seed: int = 0
    cache_dir: Path = Path("cache")
    output_dir: Path = Path("models/optimized")
    accuracy_data: str | None = None
    notes: list[str] = field(default_factory=list)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)     # what metrics run the candidates on
    executor: dict = field(default_factory=lambda: {"kind": "local"})   # where trials run (engine/executors.py)

    def candidates(self) -> list[dict]:
        """Every combination of searched options: [{pass key: {option: value}}]."""
        axes = [(p.key, o, vals) for p in self.passes for o, vals in p.space.items()]
        combos = itertools.product(*[vals for _, _, vals in axes]) if axes else [()]
        out = []
        for combo in combos:
            c = {p.key: dict(p.fixed) for p in self.passes}
            for (key, opt, _), val in zip(axes, combo):
                c[key][opt] = val
            out.append(c)
        return out


def _unknown(keys, known: set, where: str) -> None:
    for k in keys:
        if k not in known:
            close = difflib.get_close_matches(k, sorted(known), n=1)
            hint = f", did you mean {close[0]}?" if close else ""
            raise BadConfig(f"{where}{'.' if where else ''}{k}: unknown key{hint}")


def read_config(path: Path) -> dict:
    p = Path(path)
    if not p.is_file():
        from pressa.errors import SourceNotFound

        raise SourceNotFound(f"{p}: no such config file")
    from pressa.textio import read_text

    text = read_text(p, f"{p}")
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:
        first = first_line(err)
        raise BadConfig(f"{p}: not valid {'YAML' if p.suffix in ('.yaml', '.yml') else 'JSON'} ({first})") from None
    if not isinstance(data, dict):
        raise BadConfig(f"{p}: the config must be a mapping of keys to values")
    return data


def _model(cfg: dict, base: Path) -> tuple[str, str, str | None]:
    m = cfg.get("input_model", cfg.get("model"))
    if m is None:
        raise BadConfig("input_model: missing; name the model to optimize (a folder, .onnx file or Hub id)")
    if isinstance(m, str):
        spec, mtype, task = m, None, None
    elif isinstance(m, dict):
        _unknown(m, {"type", "config", "model_path", "task", "model_name", "hf_config", "load_kwargs",
                     "io_config", "model_attributes", "adapter_path", "dummy_inputs_func", "model_loader"},
                 "input_model")
        inner = m.get("config", {}) or {}
        if not isinstance(inner, dict):
            raise BadConfig("input_model.config: must be a mapping")
        hf = inner.get("hf_config", m.get("hf_config", {})) or {}
        spec = m.get("model_path") or inner.get("model_path") or hf.get("model_name") or m.get("model_name")
        task = m.get("task") or hf.get("task") or inner.get("task")
        mtype = str(m.get("type", "")).lower()
        if not spec:
            raise BadConfig("input_model: no model_path (or config.hf_config.model_name)")
    else:
        raise BadConfig("input_model: must be a path or a mapping")
    p = Path(spec)
    if not p.is_absolute() and (base / p).exists():
        spec = str(base / p)
    _check_model_exists(str(spec))
    if str(spec).endswith(".onnx") or mtype == "onnxmodel" or (Path(spec).is_dir() and any(Path(spec).glob("*.onnx"))):
        return spec, "onnx", task
    generative = task.startswith("text-generation") if task else _is_llm(spec)
    return spec, ("llm" if generative else "hf"), task


def _check_model_exists(spec: str) -> None:
    """A model that is neither a path here, a bundled name nor a Hub id fails now, not mid-run."""
    from pressa.errors import SourceNotFound
    from pressa.sources.bundled import bundled_folder, is_bundled_name
    from pressa.sources.hub import looks_like_hub_id

    if Path(spec).exists() or is_bundled_name(spec) or bundled_folder(spec) or looks_like_hub_id(spec):
        return
    raise SourceNotFound(f"input_model: {spec}: no such file or folder (and not a Hub id like org/name)")


def _is_llm(spec: str) -> bool:
    from pressa.capture.architectures import ARCHITECTURES
    from pressa.sources.bundled import is_bundled_name

    p = Path(spec)
    if p.suffix == ".gguf" or is_bundled_name(spec):          # the bundled LLMs are GGUF files
        return True
    cfg = p / "config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text()).get("model_type") in ARCHITECTURES
    return False


def _search_space(cls, opt: str, value) -> list | None:
    """A list of candidates when `value` declares a search: {"values": [...]}, {"range": [lo, hi, step]},
    or a plain list for an option that is not itself a list."""
    if isinstance(value, dict) and set(value) <= {"values", "search", "range", "type"} and (
            "values" in value or "search" in value or "range" in value):
        if "range" in value:
            return _range(opt, value["range"])
        values = value.get("values", value.get("search"))
        if not isinstance(values, list) or not values:
            raise BadConfig(f"{opt}.values: give a non-empty list of candidates")
        return list(values)
    field_ = cls.Config.model_fields.get(opt)
    if isinstance(value, list) and field_ is not None and getattr(field_.annotation, "__origin__", None) is not list \
            and "list" not in str(field_.annotation):
        return list(value)
    return None


def _range(opt: str, spec) -> list:
    """{"range": [lo, hi]} or [lo, hi, step]: lo, lo + step, ... up to hi included."""
    ok = isinstance(spec, list) and len(spec) in (2, 3) and all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in spec)
    if not ok:
        raise BadConfig(f"{opt}.range: give [low, high] or [low, high, step] as numbers")
    lo, hi, step = (*spec, 1) if len(spec) == 2 else spec
    if step <= 0 or hi < lo:
        raise BadConfig(f"{opt}.range: {spec} is empty; use low <= high and a positive step")
    n = int((hi - lo) / step + 1e-9) + 1
    if n > 10_000:
        raise BadConfig(f"{opt}.range: {spec} has {n} values; narrow it or use a larger step")
    return [lo + i * step for i in range(n)]


def _passes(cfg: dict) -> list[PassSpec]:
    raw = cfg.get("passes")
    if raw is None and "compression" in cfg:
        return [_nncf_pass(cfg)]
    if not isinstance(raw, dict) or not raw:
        raise BadConfig("passes: give at least one pass, as {name: {type: PassName, ...options}}")
    out = []
    for key, spec in raw.items():
        where = f"passes.{key}"
        if isinstance(spec, list):                      # Olive allows a list of pass configs per name
            spec = spec[0] if spec else {}
        if not isinstance(spec, dict) or "type" not in spec:
            raise BadConfig(f"{where}.type: missing; name the pass (see `pressa passes`)")
        try:
            cls = get_pass(str(spec["type"]))
        except BadConfig as err:
            raise BadConfig(f"{where}.type: {err}") from None
        if "config" in spec:
            if not isinstance(spec["config"], dict):
                raise BadConfig(f"{where}.config: must be a mapping of options")
            opts, where_opts = dict(spec["config"]), f"{where}.config"
            _unknown([k for k in spec if k not in ("type", "config", "disable_search", "host", "evaluator")],
                     {"type", "config"}, where)
        else:
            opts = {k: v for k, v in spec.items() if k not in ("type", "disable_search", "host", "evaluator")}
            where_opts = where
        opts = _olive_option_names(cls, opts)
        fixed, space = {}, {}
        for opt, value in opts.items():
            try:
                cands = _search_space(cls, opt, value)
            except BadConfig as err:
                raise BadConfig(f"{where_opts}.{err}") from None
            if cands is not None and not spec.get("disable_search"):
                space[opt] = cands
            else:
                fixed[opt] = value
        for probe in [fixed] + [{**fixed, o: v[0]} for o, v in space.items()]:
            make_config(cls, probe, where_opts)           # key path errors now, not mid-search
        for o, vals in space.items():
            for v in vals:
                make_config(cls, {**fixed, o: v}, where_opts)
        out.append(PassSpec(key, cls.name, fixed, space))
    return out


def _olive_option_names(cls, opts: dict) -> dict:
    """Options as Olive spells them (declared on each pass's fields) renamed to pressa's."""
    from pressa.passes.base import olive_names

    table = olive_names(cls.Config)
    out: dict = {}
    for k, v in opts.items():
        if k in table:
            target = table[k]
            if target is None:
                continue
            if "." in target:
                scope, part = target.split(".", 1)
                out.setdefault(scope, {})[part] = v
                continue
            if target == "method" and isinstance(v, str):
                v = v.lower()                       # Olive's MinMax / Entropy / Percentile
            k = target
        out[k] = v
    return out


def _nncf_pass(cfg: dict) -> PassSpec:
    comp = cfg["compression"]
    if isinstance(comp, list):
        comp = comp[0] if comp else {}
    if not isinstance(comp, dict) or comp.get("algorithm") != "quantization":
        raise BadConfig("compression.algorithm: pressa maps NNCF's 'quantization' algorithm; got "
                        f"{comp.get('algorithm') if isinstance(comp, dict) else comp!r}")
    _unknown(comp, {"algorithm", "initializer", "ignored_scopes", "preset", "overflow_fix", "weights",
                    "activations", "target_scopes"}, "compression")
    init = (comp.get("initializer") or {}).get("range") or {}
    fixed: dict = {"samples": int(init.get("num_init_samples", 300))}
    if cfg.get("calibration_data"):
        fixed["calibration_data"] = str(cfg["calibration_data"])
    if init.get("type") in ("percentile", "mean_percentile"):
        fixed["method"] = "percentile"
    if comp.get("ignored_scopes"):
        fixed["ignored_scope"] = {"patterns": [s.removeprefix("{re}") for s in comp["ignored_scopes"]]}
    if cfg.get("accuracy_check", {}).get("max_drop") is not None:
        fixed["max_drop"] = float(cfg["accuracy_check"]["max_drop"])
    return PassSpec("quantization", "quantize-static", fixed, {})


def _metrics(cfg: dict) -> list[MetricSpec]:
    evaluators = cfg.get("evaluators") or {}
    engine = cfg.get("engine") or {}
    name = engine.get("evaluator") or cfg.get("evaluator")
    if isinstance(name, dict):
        ev = name
    elif name:
        if name not in evaluators:
            raise BadConfig(f"engine.evaluator: no evaluator named {name!r} in evaluators")
        ev = evaluators[name]
    elif len(evaluators) == 1:
        ev = next(iter(evaluators.values()))
    else:
        ev = {"metrics": [{"name": "latency", "type": "latency", "sub_types": [{"name": "avg"}]}]}
    out = []
    for i, m in enumerate(ev.get("metrics") or []):
        where = f"evaluators.metrics[{i}]"
        _unknown(m, {"name", "type", "sub_types", "data_config", "user_config", "backend", "data"}, where)
        mtype = str(m.get("type", "")).lower()
        if mtype not in METRIC_TYPES:
            raise BadConfig(f"{where}.type: {mtype!r}; use one of {', '.join(sorted(METRIC_TYPES))}")
        subs = []
        for j, s in enumerate(m.get("sub_types") or [{"name": _default_sub(mtype)}]):
            _unknown(s, {"name", "priority", "goal", "higher_is_better", "metric_config"}, f"{where}.sub_types[{j}]")
            goal = s.get("goal")
            if goal is not None:
                if goal.get("type") not in GOALS:
                    raise BadConfig(f"{where}.sub_types[{j}].goal.type: use one of {', '.join(sorted(GOALS))}")
                goal = (goal["type"], float(goal.get("value", 0)))
            subs.append(SubMetric(str(s.get("name", _default_sub(mtype))),
                                  bool(s.get("higher_is_better", _higher(mtype, s.get("name", "")))),
                                  int(s.get("priority", j + 1 if i == 0 else 100 + j)), goal))
        data = m.get("data") or (m.get("user_config") or {}).get("data_dir") or m.get("data_config")
        out.append(MetricSpec(str(m.get("name", mtype)), mtype, subs, data if isinstance(data, str) else None))
    return out or [MetricSpec("latency", "latency", [SubMetric("avg", False, 1, None)])]


def _default_sub(mtype: str) -> str:
    return {"latency": "avg", "throughput": "avg", "accuracy": "agreement", "perplexity": "perplexity",
            "size": "mb", "memory": "peak_mb"}[mtype]


def _higher(mtype: str, sub: str) -> bool:
    return mtype in ("throughput", "accuracy")


def parse_workflow(cfg: dict, base: Path = Path("."), model_override: str | None = None) -> Workflow:
    _unknown(cfg, TOP_KEYS, "")
    engine = cfg.get("engine") or {}
    if not isinstance(engine, dict):
        raise BadConfig("engine: must be a mapping")
    _unknown(engine, ENGINE_KEYS, "engine")
    if model_override:
        cfg = {**cfg, "input_model": model_override}
    model, kind, task = _model(cfg, base)
    strategy = engine.get("search_strategy", cfg.get("search_strategy")) or {}
    if strategy is True:
        strategy = {}
    if not isinstance(strategy, dict):
        strategy = {}
    _unknown(strategy, {"execution_order", "search_algorithm", "sampler", "search_algorithm_config",
                        "max_samples", "num_samples", "seed", "output_model_num", "stop_when_goals_met",
                        "max_iter", "max_time", "include_pass_params"}, "search_strategy")
    algo = str(strategy.get("search_algorithm") or strategy.get("sampler") or "exhaustive").lower()
    algo = {"sequential": "exhaustive", "grid": "exhaustive", "tpe": "tpe", "random": "random"}.get(algo, algo)
    if algo not in ("exhaustive", "random", "tpe"):
        raise BadConfig(f"search_strategy.search_algorithm: {algo!r}; use exhaustive, random or tpe")
    order = str(strategy.get("execution_order", "joint")).lower().replace("_", "-")
    if order not in ("joint", "pass-by-pass"):
        raise BadConfig(f"search_strategy.execution_order: {order!r}; use joint or pass-by-pass")
    cfg_algo = strategy.get("search_algorithm_config") or {}
    trials = strategy.get("max_samples") or strategy.get("num_samples") or cfg_algo.get("num_samples")
    wf = Workflow(model=model, model_kind=kind, task=task, passes=_passes(cfg), metrics=_metrics(cfg),
                  execution_order=order, algorithm=algo, max_trials=int(trials) if trials else None,
                  seed=int(strategy.get("seed", cfg_algo.get("seed", 0)) or 0),
                  cache_dir=base / str(engine.get("cache_dir", cfg.get("cache_dir", "cache"))),
                  output_dir=base / str(engine.get("output_dir", cfg.get("output_dir", "models/optimized"))),
                  accuracy_data=(cfg.get("accuracy_check") or {}).get("data") or cfg.get("calibration_data"))
    for m in wf.metrics:
        m.data = _rebase(m.data, base)
    for ps in wf.passes:
        for opts in [ps.fixed]:
            if isinstance(opts.get("calibration_data"), str):
                opts["calibration_data"] = _rebase(opts["calibration_data"], base)
    wf.accuracy_data = _rebase(wf.accuracy_data, base)
    wf.runtime, note = _runtime(cfg, engine)
    if note:
        wf.notes.append(note)
    from pressa.engine.executors import executor_settings

    wf.executor = executor_settings(cfg, engine)
    return wf


EP_BACKENDS = {"OpenVINOExecutionProvider": ("openvino", "cpu"), "CPUExecutionProvider": ("onnxruntime", "cpu"),
               "CUDAExecutionProvider": ("onnxruntime", "gpu")}


def _runtime(cfg: dict, engine: dict) -> tuple[RuntimeOptions, str | None]:
    """What the candidates are measured on: pressa's `runtime` section (RuntimeOptions' keys), or Olive's
    target system (its first accelerator's device and execution provider), this machine either way."""
    from pydantic import ValidationError

    own = engine.get("runtime", cfg.get("runtime"))
    if own is not None:
        if not isinstance(own, dict):
            raise BadConfig("runtime: must be a mapping of backend, device, hint, threads, ...")
        try:
            return RuntimeOptions(**own), f"runtime: {RuntimeOptions(**own).backend} on {own.get('device', 'cpu')}"
        except ValidationError as err:
            e = err.errors()[0]
            raise BadConfig(f"runtime.{'.'.join(map(str, e['loc']))}: {e['msg']}") from None
    systems = cfg.get("systems") or {}
    name = engine.get("target", cfg.get("target")) or engine.get("host", cfg.get("host"))
    system = systems.get(name) if isinstance(name, str) else next(iter(systems.values()), None)
    if not isinstance(system, dict):
        return RuntimeOptions(), ("target: runs on this machine (local system, CPU)"
                                  if systems or name else None)
    acc = ((system.get("config") or {}).get("accelerators") or [{}])[0] or {}
    eps = acc.get("execution_providers") or ["CPUExecutionProvider"]
    backend, device = EP_BACKENDS.get(eps[0], ("onnxruntime", "cpu"))
    device = str(acc.get("device") or device).lower()
    if backend == "openvino":
        device = openvino_device(device)
    note = f"target: {eps[0]} on {device} ({'OpenVINO' if backend == 'openvino' else 'ONNX Runtime'}), this machine"
    if eps[0] not in EP_BACKENDS:
        note += f"; {eps[0]} is not one of pressa's runtimes, so ONNX Runtime's CPU provider measures"
    return RuntimeOptions(backend=backend, device=device), note


def load_workflow(path: Path, model: str | None = None, output: Path | None = None) -> Workflow:
    """A workflow from a config file, or from an artifact's pressa.json (the workflow that made it;
    its paths are absolute, and the rest is relative to the current folder, not the artifact's).
    `model` and `output` override the config's input model and output_dir."""
    from pressa.artifact import is_manifest

    cfg, base = read_config(path), Path(path).parent
    if is_manifest(cfg):
        cfg, base = cfg["workflow"], Path.cwd()
    if output is not None:
        cfg = {**cfg, "output_dir": str(Path(output).absolute())}
    return parse_workflow(cfg, base, model)


def _rebase(path: str | None, base: Path) -> str | None:
    """A relative path in a config names a file beside the config when one is there."""
    if not path or Path(path).is_absolute() or not (base / path).exists():
        return path
    return str(base / path)
