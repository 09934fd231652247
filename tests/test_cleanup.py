"""Nothing is left behind: SIGTERM mid-workflow removes the half-built cache entry and the process's
temporary root; what a killed (-9) process left is swept at the next start; artifacts' files get the
user's usual permissions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import run_cli, write_bert


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _env(tmp: Path) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp)}


def test_sigterm_during_run_leaves_no_cache_entry_or_temporary_files(tmp_path):
    hf = write_bert(tmp_path / "hf", layers=4)
    cfg = {"input_model": {"type": "HfModel", "model_path": str(hf), "task": "feature-extraction"},
           "passes": {"capture": {"type": "OnnxConversion"}, "int8": {"type": "OnnxDynamicQuantization"}},
           "output_dir": "out", "engine": {"cache_dir": "cache"}}
    (tmp_path / "wf.json").write_text(json.dumps(cfg))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pressa", "run", "--config", str(tmp_path / "wf.json")],
                            stderr=subprocess.PIPE, text=True, env=_env(tmp))
    for line in proc.stderr:                      # the torch export has started
        if ": running" in line:
            break
    time.sleep(1.5)
    assert list((tmp_path / "cache").glob(".tmp-*")), "the step should be under way"
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(60) == 128 + signal.SIGTERM, rest
    assert "Traceback" not in rest and rest.strip().splitlines()[-1] == "error: terminated", rest
    assert not list((tmp_path / "cache").glob(".tmp-*"))
    assert not (tmp_path / "out").exists()
    assert list(tmp.iterdir()) == []


def test_a_signal_swallowed_by_a_finalizer_still_stops_the_commit(tmp_path):
    """Python ignores an exception raised while a __del__ runs: a SIGTERM landing there (CI saw one, in a
    regex finalizer) must still keep the artifact from being renamed into place, and the cache entry."""
    import pytest

    from pressa.artifact import Interrupted, atomic_folder, signals_as_exceptions
    from pressa.artifact import folder as folder_mod
    from pressa.engine.runner import StepCache

    class SignalsWhileFinalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)                     # the handler runs here, inside the finalizer

    try:
        with pytest.raises(Interrupted):
            with atomic_folder(tmp_path / "out") as tmp:
                (tmp / "part").write_text("half")
                SignalsWhileFinalized()          # collected at once: its exception is swallowed
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".pressa-tmp-*"))
        folder_mod._RECEIVED.clear()
        with pytest.raises(Interrupted), signals_as_exceptions():
            StepCache(tmp_path / "cache").put("k", lambda d: (SignalsWhileFinalized(), {})[1])
        assert not list((tmp_path / "cache").iterdir())
    finally:
        folder_mod._RECEIVED.clear()


def test_leftovers_of_killed_processes_are_swept_at_the_next_start(tmp_path):
    """A root and a cache entry of a process that died by kill -9 go; a live process's root stays."""
    tmp, cache = tmp_path / "tmp", tmp_path / "cache"
    dead, alive = _dead_pid(), os.getpid()
    (tmp / f"pressa-{dead}" / "calibration-x").mkdir(parents=True)
    (tmp / f"pressa-{dead}" / "calibration-x" / "model.onnx.data").write_bytes(bytes(1000))
    (tmp / f"pressa-{alive}").mkdir()
    (cache / f".tmp-0123456789abcdef-{dead}").mkdir(parents=True)
    (cache / f".tmp-fedcba9876543210-{alive}").mkdir()
    (tmp_path / "m.onnx").write_bytes(b"")
    cfg = {"input_model": str(tmp_path / "m.onnx"), "passes": {"q": {"type": "OnnxDynamicQuantization"}},
           "output_dir": "out", "engine": {"cache_dir": "cache"}}
    (tmp_path / "wf.json").write_text(json.dumps(cfg))
    res = subprocess.run([sys.executable, "-m", "pressa", "run", "--config", str(tmp_path / "wf.json"), "--dry-run"],
                         capture_output=True, text=True, env=_env(tmp))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp.iterdir()) == [f"pressa-{alive}"]
    assert sorted(p.name for p in cache.iterdir()) == [f".tmp-fedcba9876543210-{alive}"]


def test_temporary_folders_live_under_the_process_root(tmp_path, monkeypatch):
    """Calibration, quantization and reference builds take their folders from one root per process."""
    import tempfile

    from pressa import tempdirs

    monkeypatch.setattr(tempdirs, "_ROOT", [])
    monkeypatch.setattr(tempdirs, "_BASE", [str(tmp_path)])
    monkeypatch.setattr(tempfile, "tempdir", None)
    with tempdirs.temp_dir("calibration-") as d:
        assert Path(d).parent == tmp_path / f"pressa-{os.getpid()}"
    tempdirs.cleanup()
    assert list(tmp_path.iterdir()) == []


def test_quantized_artifact_files_have_the_usual_permissions(tmp_path):
    hf = write_bert(tmp_path / "hf")
    assert run_cli("capture", "-m", hf, "-o", tmp_path / "enc").returncode == 0
    res = run_cli("quantize", tmp_path / "enc", "-o", tmp_path / "q", "--mode", "dynamic")
    assert res.returncode == 0, res.stderr
    mask = os.umask(0)
    os.umask(mask)
    for f in (tmp_path / "q").rglob("*"):
        want = (0o777 if f.is_dir() else 0o666) & ~mask
        assert f.stat().st_mode & 0o777 == want, (f.name, oct(f.stat().st_mode))
