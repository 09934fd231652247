"""The OpenVINO backend for tensor models: an artifact's ONNX graph read by OpenVINO, compiled for a
device with performance hints, and run through the small interface pressa's code uses of an ONNX
Runtime session (`get_inputs`, `get_outputs`, `run`). OpenVINO is an optional extra, imported here
only when a command asks for it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pressa.errors import BadArgument, CorruptModel, first_line
from pressa.runtime.options import RuntimeOptions, openvino_device

HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT", "cumulative-throughput": "CUMULATIVE_THROUGHPUT"}
ORT_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "f64": "tensor(double)", "i64": "tensor(int64)",
             "i32": "tensor(int32)", "i16": "tensor(int16)", "i8": "tensor(int8)", "u8": "tensor(uint8)",
             "boolean": "tensor(bool)"}


def core():
    try:
        import openvino as ov
    except ImportError:
        raise BadArgument("--backend openvino needs OpenVINO: pip install 'pressa[openvino]' "
                          "(or make setup)") from None
    global _CORE
    if _CORE is None:
        _CORE = ov.Core()
    return _CORE


_CORE = None


def version() -> str:
    import openvino as ov

    return ov.__version__


def device_name(device: str) -> str:
    """OpenVINO's spelling of a device (cpu -> CPU, gpu -> GPU); BadArgument listing the available ones
    when this machine has no such device."""
    name = openvino_device(device)
    available = core().available_devices
    virtual = name.split(":", 1)[0] in ("AUTO", "HETERO", "MULTI", "BATCH")
    wanted = name.split(":", 1)[1].split(",") if virtual and ":" in name else ([] if virtual else [name])
    missing = [d for d in wanted if d not in available and not any(a.startswith(d + ".") for a in available)]
    if missing:
        raise BadArgument(f"device {device!r}: OpenVINO has no {missing[0]} here; available: "
                          f"{', '.join(available)} (and AUTO, HETERO:..., MULTI:...)")
    return name


def compile_config(opts: RuntimeOptions) -> dict:
    cfg = {"PERFORMANCE_HINT": HINTS[opts.hint]}
    if opts.threads:
        cfg["INFERENCE_NUM_THREADS"] = opts.threads
    if opts.streams is not None:
        cfg["NUM_STREAMS"] = "AUTO" if opts.streams.lower() == "auto" else int(opts.streams)
    if opts.precision_hint is not None:
        cfg["INFERENCE_PRECISION_HINT"] = opts.precision_hint
    if opts.cache_dir is not None:
        Path(opts.cache_dir).mkdir(parents=True, exist_ok=True)
        cfg["CACHE_DIR"] = str(opts.cache_dir)
    return cfg


@dataclass
class IOSpec:
    """An input or output as ONNX Runtime describes it (name, "tensor(float)", [dims or names])."""
    name: str
    type: str
    shape: list


class OpenVINOSession:
    """A compiled OpenVINO model behind the part of ONNX Runtime's InferenceSession pressa uses."""

    def __init__(self, model_path: Path, opts: RuntimeOptions):
        c = core()
        device = device_name(opts.device)
        try:
            model = c.read_model(str(model_path))
        except Exception as err:
            raise CorruptModel(f"{model_path}: OpenVINO cannot read it ({first_line(err, 300)}); "
                               "run it with --backend onnxruntime") from None
        self.config = compile_config(opts)
        try:
            self.compiled = c.compile_model(model, device, self.config)
        except Exception as err:
            raise CorruptModel(f"{model_path}: OpenVINO cannot compile it for {device} ({first_line(err, 300)}); "
                               "run it with --backend onnxruntime") from None
        self.device = device
        self._inputs = [_spec(p) for p in self.compiled.inputs]
        self._outputs = [_spec(p) for p in self.compiled.outputs]
        self._idle: list = []                 # infer requests not in use: concurrent callers each take one
        self._queue = None

    def get_inputs(self) -> list[IOSpec]:
        return self._inputs

    def get_outputs(self) -> list[IOSpec]:
        return self._outputs

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """As ONNX Runtime's session.run; safe to call from several threads (a request each)."""
        try:
            request = self._idle.pop()
        except IndexError:
            request = self.compiled.create_infer_request()
        try:
            result = request.infer(feeds, share_inputs=True)
            by_name = {o.get_any_name(): result[o] for o in self.compiled.outputs}
            names = output_names or [o.name for o in self._outputs]
            return [np.array(by_name[n], copy=True) for n in names]
        finally:
            self._idle.append(request)

    def parallel_requests(self) -> int:
        """Requests the compiled model runs best with at once (1 under a latency hint)."""
        try:
            return max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        except Exception:
            return 1

    def run_many(self, batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Several batches in flight at once on OpenVINO's asynchronous request queue (the throughput
        hint's streams each take one); results in order."""
        import openvino as ov

        if self._queue is None:
            self._queue = ov.AsyncInferQueue(self.compiled, self.parallel_requests())
        out: list = [None] * len(batches)

        def done(request, i):
            out[i] = {o.get_any_name(): np.array(request.get_tensor(o).data, copy=True) for o in self.compiled.outputs}

        self._queue.set_callback(done)
        for i, feeds in enumerate(batches):
            self._queue.start_async(feeds, i)
        self._queue.wait_all()
        return out

    def properties(self) -> dict:
        """What the compiled model says it runs with (hints read back)."""
        keys = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT",
                "OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        out = {}
        for k in keys:
            try:
                v = self.compiled.get_property(k)
            except Exception:             # a device without that property
                continue
            out[k] = v.get_type_name() if hasattr(v, "get_type_name") else str(v)
        return out


def _spec(port) -> IOSpec:
    dims = [d.get_length() if d.is_static else f"d{i}" for i, d in enumerate(port.get_partial_shape())]
    return IOSpec(port.get_any_name(), ORT_TYPES.get(port.get_element_type().get_type_name(), "tensor(float)"), dims)
