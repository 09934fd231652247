"""ONNX Runtime sessions from performance hints (LATENCY / THROUGHPUT, threads, device)."""

from __future__ import annotations

import os
from pathlib import Path

from pressa.errors import BadArgument, CorruptModel, first_line

PROVIDERS = {"cpu": "CPUExecutionProvider", "gpu": "CUDAExecutionProvider", "cuda": "CUDAExecutionProvider"}


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


THREADS_ENV = "PRESSA_THREADS"     # the default thread count where a scheduler (Ray) gives a process fewer cores


def session_options(threads: int | None = None, hint: str = "latency"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    n = threads or int(os.environ.get(THREADS_ENV) or 0) or min(
        os.cpu_count() or 1, physical_cores() if hint == "latency" else os.cpu_count() or 1)
    so.intra_op_num_threads = n
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if hint == "latency" else "0")
    so.log_severity_level = 3
    return so


def open_session(model_path: Path, device: str = "cpu", threads: int | None = None, hint: str = "latency",
                 model_bytes: bytes | None = None, runtime=None):
    """`model_bytes`: an edited copy of the graph at `model_path`, whose external data stays there.
    `runtime` (pressa.runtime.openvino.RuntimeOptions): the backend and its hints; OpenVINO gives an
    OpenVINOSession, which answers the calls pressa makes of an ONNX Runtime session."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise CorruptModel(f"{model_path}: no such ONNX model; pass an artifact folder made by pressa")
    if model_path.suffix == ".xml":                 # OpenVINO IR runs on OpenVINO, whatever backend was asked
        from pressa.runtime.options import RuntimeOptions

        runtime = (runtime or RuntimeOptions()).model_copy(update={"backend": "openvino"})
    if runtime is not None and runtime.backend == "openvino":
        from pressa.runtime.openvino import OpenVINOSession

        if model_bytes is not None:
            raise BadArgument("this run needs an edited graph, which only --backend onnxruntime opens")
        return OpenVINOSession(model_path, runtime)
    if runtime is not None:
        from pressa.runtime.options import onnxruntime_device

        device, threads, hint = onnxruntime_device(runtime.device), runtime.threads, runtime.hint
    import onnxruntime as ort

    provider = PROVIDERS.get(device)
    if provider is None:
        raise BadArgument(f"device {device!r}: use cpu or gpu")
    available = ort.get_available_providers()
    if provider not in available:
        raise BadArgument(f"{provider} is not available in this onnxruntime ({', '.join(available)}); "
                          "install onnxruntime-gpu for --device gpu")
    so = session_options(threads, hint)
    if model_bytes is not None:
        so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                    str(model_path.parent.resolve()))
    try:
        return ort.InferenceSession(model_bytes if model_bytes is not None else str(model_path), so,
                                    providers=[provider])
    except Exception as err:  # ORT raises its own Fail/InvalidGraph/etc.
        msg = first_line(err, 300)
        raise CorruptModel(f"{model_path}: ONNX Runtime cannot load it ({msg})") from None
