"""`--backend auto`: the faster runtime for this model, this machine and this hint, from a short
measurement made once and remembered in a cache keyed by model file, machine and hint
($XDG_CACHE_HOME/pressa/backends.json)."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from pressa.runtime.options import RuntimeOptions

DECODER_KEY = "decoder-stateful|"      # prefix of a decoder's per-phase figures (genai/backends.py)


def cache_file() -> Path:
    from pressa.tempdirs import user_cache_dir

    return user_cache_dir() / "backends.json"


def key_of(model_path: Path, opts: RuntimeOptions) -> str:
    from pressa.runtime.session import cpu_name

    st = Path(model_path).stat()
    return "|".join(map(str, (Path(model_path).resolve(), st.st_size, int(st.st_mtime), cpu_name(), os.cpu_count(),
                              opts.device.lower(), opts.hint, opts.threads, opts.precision_hint)))


def _time(session, feeds: dict, runs: int = 5) -> float:
    session.run(None, feeds)                        # warm-up (first-run allocations)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(model_path: Path, opts: RuntimeOptions) -> dict:
    """Median seconds per run of both runtimes on made-up inputs (batch 1 for a latency hint, 8 for
    throughput; 128 tokens, or 16 for a model that takes fewer); a runtime that cannot open or run
    the model gets None and its error."""
    from pressa.graph.inputs import sample_inputs
    from pressa.graph.onnx_io import load_model
    from pressa.runtime.session import open_session

    graph = load_model(model_path, load_data=False)
    sessions, out = {}, {}
    for backend in ("onnxruntime", "openvino"):
        try:
            sessions[backend] = open_session(model_path, runtime=opts.model_copy(update={"backend": backend}))
        except Exception as err:                    # not installed, cannot read the graph, ...
            out[backend], out[f"{backend}_error"] = None, str(err).splitlines()[0][:200]
    for seq in (128, 16):
        feeds = sample_inputs(graph, batch=1 if opts.hint == "latency" else 8, seq=seq)
        for backend, session in sessions.items():
            try:
                out[backend] = _time(session, feeds)
                out.pop(f"{backend}_error", None)
            except Exception as err:                # inputs longer than the model takes, ...
                out[backend], out[f"{backend}_error"] = None, str(err).splitlines()[0][:200]
        if any(out.get(b) is not None for b in sessions):
            out["seq_len"] = seq
            break
    return out


def remembered(key: str, measure) -> dict:
    """The figures stored under `key`, or `measure()`'s, stored for next time."""
    path = cache_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = measure()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, indent=1))
            tmp.replace(path)
        except OSError:                             # a read-only home: measure again next time
            pass
    return known[key]


def fastest(figures: dict, prefix: str = "") -> str:
    timed = {b: figures.get(prefix + b) for b in ("onnxruntime", "openvino") if figures.get(prefix + b) is not None}
    return min(timed, key=timed.get) if timed else "onnxruntime"


def auto_choices(artifact: Path) -> list[str]:
    """What `--backend auto` measured and chose for `artifact` on this machine, a line per measurement
    (device, hint, ...); one line saying so when it has not run here yet."""
    from pressa.artifact.kind import require_kind
    from pressa.graph.onnx_io import find_model

    require_kind(Path(artifact), None, "info")
    folder = Path(artifact) if Path(artifact).is_dir() else Path(artifact).parent
    models = {str(p.resolve()) for p in (folder / "model.onnx", find_model(artifact)) if p.is_file()}
    try:
        known = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        known = {}
    lines = []
    for key, figures in known.items():
        decoder = key.startswith(DECODER_KEY)
        fields = key.removeprefix(DECODER_KEY).split("|")
        if fields[0] not in models:
            continue
        device, hint = fields[5], fields[6]
        phases = (("32-token prefill", "prefill_short_"), ("256-token prefill", "prefill_long_"),
                  ("decode step", "step_")) if decoder else (("", ""),)
        said = [f"{what + ' on ' if what else ''}{fastest(figures, p)} (onnxruntime "
                f"{_ms(figures, p + 'onnxruntime')}, openvino {_ms(figures, p + 'openvino')})" for what, p in phases]
        lines.append(f"backend auto ({device}, {hint}): " + "; ".join(said))
    return lines or [f"backend auto has not measured {artifact} on this machine yet: run it once with "
                     "--backend auto (the figures are kept in " + str(cache_file()) + ")"]


def _ms(figures: dict, key: str) -> str:
    return f"{figures[key] * 1e3:.1f} ms" if figures.get(key) is not None else "failed"


def pick_backend(model_path: Path, opts: RuntimeOptions, log=None) -> tuple[str, dict]:
    """(the faster backend, its figures), measured once per model file, machine and hint."""
    figures = remembered(key_of(model_path, opts), lambda: measure(model_path, opts))
    choice = fastest(figures)
    if log:
        shown = ", ".join(f"{b} {figures[b] * 1e3:.2f} ms" for b in ("onnxruntime", "openvino")
                          if figures.get(b) is not None)
        log(f"backend auto: {choice} ({shown}; {opts.hint}, measured once, cached in {cache_file()})")
    return choice, figures
