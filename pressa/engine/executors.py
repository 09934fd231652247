"""Where a workflow's trials run: in this process (`local`), or as Ray tasks (`ray`), as many at once as
the cluster holds, each with the CPUs (and memory) it declares. The search itself (which candidates,
TPE's sampler, the ranking) stays in the driver, so a Ray run chooses what a local run chooses.

The step cache on Ray: with a cache directory every node sees (`shared_cache`, the default: on one
machine, or a shared filesystem), workers read and write it directly, so a step one worker built is a
cache hit for the others. Without one, each worker builds in a private cache and returns the steps it
built through Ray's object store; the driver writes them into its own cache (the final artifact and a
later run's hits come from there)."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

from pressa.engine.runner import COMPLETE, StepCache, Trial, run_trial
from pressa.errors import BadArgument

EXECUTORS = ("local", "ray")


class LocalExecutor:
    """Trials one after another, in this process."""

    def run(self, trials: list[Trial], wf, cache: StepCache, evaluator, log: Callable[[str], None],
            announce: Callable[[Trial], None] = lambda t: None) -> None:
        for t in trials:
            announce(t)
            run_trial(t, wf, cache, evaluator, log)

    def close(self) -> None:
        pass


def check_executor(kind: str | None) -> None:
    """--executor's value (None: the config's)."""
    if kind is not None and kind not in EXECUTORS:
        raise BadArgument(f"--executor {kind!r}: use {' or '.join(EXECUTORS)}")


def executor_settings(cfg: dict, engine: dict) -> dict:
    """A workflow config's executor: pressa's `engine.executor` (local | ray) with `ray_address`,
    `ray_cpus_per_trial` and `ray_shared_cache`, or Olive's host system when its type is `RaySystem`
    (config: address); Olive's LocalSystem (and no system) is local."""
    from pressa.passes.base import BadConfig

    systems = cfg.get("systems") or {}
    host = systems.get(engine.get("host", cfg.get("host"))) if isinstance(systems, dict) else None
    host_cfg = (host.get("config") or {}) if isinstance(host, dict) else {}
    kind = engine.get("executor") or ("ray" if isinstance(host, dict) and host.get("type") == "RaySystem" else "local")
    if kind not in EXECUTORS:
        raise BadConfig(f"engine.executor: {kind!r}; use {' or '.join(EXECUTORS)}")
    sizes = {}
    for key, default in (("ray_cpus_per_trial", 1), ("ray_memory_per_trial_mb", None)):
        v = engine.get(key, default)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0):
            raise BadConfig(f"engine.{key}: {v!r}; give a positive number")
        sizes[key] = v
    return {"kind": kind, "address": engine.get("ray_address") or host_cfg.get("address"),
            "cpus_per_trial": sizes["ray_cpus_per_trial"], "memory_mb": sizes["ray_memory_per_trial_mb"],
            "shared_cache": bool(engine.get("ray_shared_cache", True))}


def make_executor(settings: dict, log: Callable[[str], None] = lambda s: None):
    """The executor a workflow's settings (executor_settings, with the command line's overrides) name."""
    if settings.get("kind", "local") == "local":
        if settings.get("address"):
            raise BadArgument("--ray-address applies to --executor ray")
        return LocalExecutor()
    return RayExecutor(settings.get("address"), settings.get("cpus_per_trial", 1), settings.get("shared_cache", True),
                       log, settings.get("memory_mb"))


def _ray():
    try:
        import ray
    except ImportError:
        raise BadArgument("--executor ray needs Ray: pip install 'pressa[ray]'") from None
    return ray


def join_ray(address: str | None) -> bool:
    """Ray for this process: the cluster at `address`, or a local one started here; True when this call
    started or joined it (so the caller shuts it down), False when the process had one already."""
    ray = _ray()
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise BadArgument(f"--ray-address {address}: cannot join the Ray cluster ({err}); start it with "
                          "`ray start --head` or leave the address out for a local Ray") from None
    return True


def needs_gpu(wf, options: dict) -> bool:
    """A trial asks Ray for a GPU when a pass builds for CUDA or the metrics run on a GPU."""
    cuda = any(str(options.get(p.key, p.fixed).get("execution_provider", "")).lower() in ("cuda", "gpu")
               for p in wf.passes)
    return cuda or str(getattr(wf.runtime, "device", "cpu")).lower().startswith("gpu")


class RayExecutor:
    """Trials as Ray tasks. Without an address, a local Ray is started for the run and stopped after it."""

    def __init__(self, address: str | None, cpus_per_trial: float, shared_cache: bool, log,
                 memory_mb: float | None = None):
        ray = _ray()
        self.cpus, self.shared = cpus_per_trial, shared_cache
        self.resources = {"num_cpus": cpus_per_trial, **({"memory": int(memory_mb * 1e6)} if memory_mb else {})}
        self.started = join_ray(address)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus = sum(n.get("Resources", {}).get("CPU", 0) for n in nodes)
        log(f"ray: {'started locally' if self.started and not address else address or 'joined'}, "
            f"{len(nodes)} node(s), {cpus:g} CPUs, {self.cpus:g} per trial")
        self._task = ray.remote(max_retries=0)(_trial_task)

    def run(self, trials: list[Trial], wf, cache: StepCache, evaluator, log: Callable[[str], None],
            announce: Callable[[Trial], None] = lambda t: None) -> None:
        ray = _ray()
        for t in trials:
            announce(t)
        shipped: dict[str, object] = {}                # private caches: the driver's steps go to the workers
        refs = [self._task.options(**self.resources, num_gpus=1 if needs_gpu(wf, t.options) else 0).remote(
                    t, wf, str(cache.root), evaluator, self.shared, self.cpus,
                    {} if self.shared else self._cached(wf, t, cache, shipped)) for t in trials]
        for t, ref in zip(trials, refs):
            try:
                done, lines, built = ray.get(ref)
            except Exception as err:                   # the worker died (a crash, a kill, out of memory)
                t.error = f"worker lost: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
                log(f"trial {t.id} failed: {t.error}")
                continue
            for line in lines:
                log(line)
            for key, blob in built.items():
                _unpack_step(cache, key, blob)
            if built and done.artifact:
                done.artifact = str(cache.root / Path(done.artifact).name)
            t.__dict__.update(done.__dict__)

    def close(self) -> None:
        if self.started:
            _ray().shutdown()

    @staticmethod
    def _cached(wf, trial: Trial, cache: StepCache, shipped: dict) -> dict:
        """{key: object ref of the step's tar} for the trial's steps the driver's cache holds."""
        from pressa.engine.runner import chain_keys

        out = {}
        for key in chain_keys(wf, trial.options, cache):
            if cache.get(key) is not None:
                if key not in shipped:
                    shipped[key] = _ray().put(_pack_step(cache.root / key))
                out[key] = shipped[key]
        return out


def _trial_task(trial: Trial, wf, cache_root: str, evaluator, shared: bool, cpus: float, steps: dict):
    """One trial inside a Ray worker: (the trial as run, its log lines, {step key: tar of each step this
    worker built} when the cache is private, which starts with the driver's `steps`). Its ONNX Runtime
    sessions use the CPUs the task asked for, not every core of the node."""
    import tempfile

    from pressa.runtime.session import THREADS_ENV

    os.environ[THREADS_ENV] = str(max(1, int(cpus)))
    lines: list[str] = []
    private = None if shared else Path(tempfile.mkdtemp(prefix="pressa-ray-cache-"))
    cache = StepCache(Path(cache_root) if shared else private)
    for key, ref in steps.items():                     # refs inside a dict arrive unresolved
        _unpack_step(cache, key, _ray().get(ref))
    try:
        lines.append(f"trial {trial.id} on worker pid {os.getpid()}")
        run_trial(trial, wf, cache, evaluator, lines.append)
        built = {} if shared else {s["cache_key"]: _pack_step(cache.root / s["cache_key"])
                                   for s in trial.steps if not s.get("cached") and s.get("cache_key")}
        return trial, lines, built
    finally:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)


def _pack_step(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname=".")
    return buf.getvalue()


def _unpack_step(cache: StepCache, key: str, blob: bytes) -> None:
    """A step a worker built, into the driver's cache (renamed into place whole, as StepCache.put does)."""
    if cache.get(key) is not None:
        return
    cache.root.mkdir(parents=True, exist_ok=True)
    tmp = cache.root / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(tmp, filter="data")
    if (tmp / COMPLETE).is_file() and not (cache.root / key).exists():
        tmp.rename(cache.root / key)
    shutil.rmtree(tmp, ignore_errors=True)
