"""Which runtime runs a decoder: ONNX Runtime, OpenVINO, or (`--backend auto`) each phase on the runtime
measured faster for it here, once per model, machine and hint.

When OpenVINO decodes faster, the stateful OpenVINO decoder runs everything (its cache lives in
OpenVINO's state). When only its prefill is faster (bf16 compute on CPUs that have it, while ONNX
Runtime's int8-activation kernels decode faster), short and long prompts prefill on OpenVINO into
ONNX Runtime's cache arrays (OpenVINOArrayDecoder) and ONNX Runtime decodes from them: one
generation, two runtimes, one cache."""

from __future__ import annotations

import numpy as np

from pressa.errors import BadArgument, CorruptModel, first_line
from pressa.genai.decoder_session import DecoderBackend, DecoderSession
from pressa.genai.openvino_decoder import OpenVINOArrayDecoder, OpenVINODecoder

LONG_PROMPT = 128            # tokens from which a prefill counts as long (measured at 32 and 256)
PHASES = ("prefill_short_", "prefill_long_", "step_")


class SplitDecoder(DecoderBackend):
    """Short prefills, long prefills and decode steps each on its own backend, over the same cache."""

    def __init__(self, folder, short: DecoderBackend, long: DecoderBackend, decode: DecoderBackend):
        super().__init__(folder)
        self.phases = (short, long, decode)
        self.last_only, self.kv_dtype = decode.last_only, decode.kv_dtype
        if len({b.kv_dtype for b in self.phases}) > 1:
            raise BadArgument("the two runtimes keep the cache in different types; pick one --backend")

    def bind(self, cache):
        return SplitBinding(*(b.bind(cache) for b in self.phases))


class SplitBinding:
    def __init__(self, short, long, decode):
        self.short, self.long, self.decode = short, long, decode

    def run(self, ids: np.ndarray, mask: np.ndarray, logits: np.ndarray, live=None) -> None:
        width = ids.shape[1]
        phase = self.decode if width == 1 else self.short if width < LONG_PROMPT else self.long
        phase.run(ids, mask, logits, live)


def open_decoder(folder, runtime, all_logits: bool = False, log=None, window: int | None = None) -> DecoderBackend:
    """The decoder backend `runtime` asks for: ONNX Runtime, OpenVINO (stateful), or auto. An OpenVINO
    IR folder runs on OpenVINO."""
    probe = DecoderBackend(folder)
    ir = probe.model_path.suffix == ".xml"
    if ir:
        if all_logits:
            raise BadArgument(f"{folder} is an OpenVINO IR folder, which generates but is not evaluated here; "
                              "evaluate the ONNX artifact it was exported from")
        if log and runtime.backend == "onnxruntime":
            log(f"{folder} is an OpenVINO IR folder: it runs on OpenVINO")
        return OpenVINODecoder(folder, runtime)
    # ONNX Runtime takes the device asked for only when it is the backend asked for (not OpenVINO's AUTO, ...)
    on_ort = runtime.model_copy(update={"backend": "onnxruntime",
                                        **({} if runtime.backend == "onnxruntime" else {"device": "cpu"})})
    if not probe.shared_buffer or probe.adapters:     # general-path graphs and run-time adapters: ONNX Runtime
        if runtime.backend == "openvino":
            what = "has run-time adapters" if probe.adapters else "was built by the general path"
            raise BadArgument(f"{folder} {what}, which run on --backend onnxruntime only")
        return DecoderSession(folder, all_logits=all_logits, runtime=on_ort, window=window)
    if runtime.backend == "onnxruntime" or all_logits or window:
        if all_logits and runtime.backend == "openvino":
            raise BadArgument("evaluation (logits at every position) runs on --backend onnxruntime only")
        return DecoderSession(folder, all_logits=all_logits, runtime=on_ort, window=window)
    if runtime.backend == "openvino":
        return OpenVINODecoder(folder, runtime)
    ort = DecoderSession(folder, runtime=on_ort)
    compiled: list[OpenVINODecoder] = []

    def stateful() -> OpenVINODecoder:        # compiled only to be measured or to decode, never just to be dropped
        if not compiled:
            compiled.append(OpenVINODecoder(folder, runtime))
        return compiled[0]

    try:
        short, long, decode = pick_phases(runtime, ort, stateful, log)
        if decode == "openvino":
            return stateful()
    except (BadArgument, CorruptModel) as err:
        if log:
            log(f"backend auto: onnxruntime ({first_line(err, 160)})")
        return ort
    if "openvino" not in (short, long):
        return ort
    compiled.clear()
    prefill = OpenVINOArrayDecoder(folder, runtime)
    return SplitDecoder(folder, prefill if short == "openvino" else ort, prefill if long == "openvino" else ort, ort)


def measure_phases(backends: dict[str, DecoderBackend], steps: int = 8) -> dict:
    """Seconds of a short (32-token) and a long (256-token) prefill and of one decode step after it, on
    each backend (medians of 3 after a warm-up, and of `steps` steps)."""
    import statistics
    import time

    rng = np.random.default_rng(0)
    out = {}
    for name, dec in backends.items():
        for label, n in (("short", 32), ("long", min(256, dec.context_length - steps - 1))):
            prompt = rng.integers(3, dec.vocab_size, n).tolist()
            times = []
            for _ in range(4):
                t0 = time.perf_counter()
                dec.prefill([prompt], n + steps + 1)
                times.append(time.perf_counter() - t0)
            out[f"prefill_{label}_{name}"] = statistics.median(times[1:])
        stepped = []
        for _ in range(steps):
            t0 = time.perf_counter()
            dec.step(np.array([5]))
            stepped.append(time.perf_counter() - t0)
        out[f"step_{name}"] = statistics.median(stepped)
    return out


def pick_phases(runtime, ort: DecoderSession, openvino, log=None) -> tuple[str, str, str]:
    """(short prefill, long prefill, decode) backends: each phase's faster, measured once per model,
    machine and hint (`openvino()` gives the OpenVINO decoder, made only when measuring)."""
    from pressa.runtime.choose import DECODER_KEY, cache_file, fastest, key_of, remembered

    figures = remembered(DECODER_KEY + key_of(ort.model_path, runtime),
                         lambda: measure_phases({"onnxruntime": ort, "openvino": openvino()}))
    chosen = tuple(fastest(figures, p) for p in PHASES)
    if log:
        def both(p):
            return ", ".join(f"{b} {figures[p + b] * 1e3:.1f} ms" for b in ("onnxruntime", "openvino"))
        log(f"backend auto: prompts under {LONG_PROMPT} tokens on {chosen[0]} ({both('prefill_short_')} for 32), "
            f"longer on {chosen[1]} ({both('prefill_long_')} for 256), decode on {chosen[2]} ({both('step_')} a "
            f"step); measured once, cached in {cache_file()}")
    return chosen
