"""Decoder LLMs on OpenVINO, behind the same slot primitives as ONNX Runtime (pressa.genai.slots).

OpenVINO reads pressa's decoder graph itself. Its GroupQueryAttention takes one sequence per request
and returns the past joined with the new keys and values (it reads the past's valid length from the
attention mask, so the slot's whole buffer row is passed as past, without a copy); the new positions
are written back into the slot's row of the cache that ONNX Runtime would have written in place. So
the cache layout, the scheduler, sampling and streaming are the same on both runtimes, and one
generation may prefill on one runtime and decode on the other (`--backend auto` measures both phases
once and picks each's faster runtime: OpenVINO's bf16 prefill, ONNX Runtime's int8-activation decode
on this CPU)."""

from __future__ import annotations

import numpy as np

from pressa.artifact.llm_io import ATTENTION_MASK, INPUT_IDS, LOGITS, past, present
from pressa.errors import BadArgument, CorruptModel, first_line
from pressa.genai.decoder_session import DecoderBackend, DecoderSession


class OpenVINODecoder(DecoderBackend):
    def __init__(self, folder, runtime):
        from pressa.runtime.openvino import compile_config, core, device_name

        super().__init__(folder)
        why = unsupported(self.model_path)
        if why:
            raise BadArgument(f"{self.model_path}: {why}; use --backend onnxruntime (auto does)")
        c = core()
        try:
            model = c.read_model(str(self.model_path))
        except Exception as err:
            raise CorruptModel(f"{self.model_path}: OpenVINO cannot read it ({reason(err)}); rebuild it "
                               "with this pressa (older builds kept the embedding's scales behind a Cast) or use "
                               "--backend onnxruntime") from None
        self.last_only = model.output(LOGITS).get_partial_shape()[1].get_length() == 1 \
            if model.output(LOGITS).get_partial_shape()[1].is_static else False
        kv = model.input(past(0, "key")).get_element_type().get_type_name()
        self.kv_dtype = np.float16 if kv == "f16" else np.float32
        self.compiled = c.compile_model(model, device_name(runtime.device), compile_config(runtime))
        self.request = self.compiled.create_infer_request()

    def bind(self, cache):
        return OpenVINOBinding(self, cache)


def unsupported(model_path) -> str | None:
    """What in the graph OpenVINO's GroupQueryAttention cannot compute: attention soft-capping (Gemma 2).
    (Sliding windows it keeps: Gemma 3 and Mistral match ONNX Runtime past their windows.)"""
    import onnx

    for n in onnx.load(str(model_path), load_external_data=False).graph.node:
        if n.op_type != "GroupQueryAttention":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("softcap"):
            return "OpenVINO's GroupQueryAttention has no attention soft-capping (this model caps its scores)"
    return None


def reason(err: Exception) -> str:
    """The telling line of an OpenVINO error (its first lines are source locations)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.strip().startswith("Exception from")]
    telling = [ln for ln in lines if "failed for" in ln or "not supported" in ln.lower()]
    return (telling or lines or [first_line(err, 200)])[-1][:240]


class OpenVINOBinding:
    """A cache bound for OpenVINO: each row runs as its own request (past = the row's buffer), and the
    new keys and values are copied into the row after it."""

    def __init__(self, dec: OpenVINODecoder, cache):
        self.dec, self.cache = dec, cache

    def run(self, ids: np.ndarray, mask: np.ndarray, logits: np.ndarray) -> None:
        """As ONNX Runtime's Binding.run: right-padded rows, the mask over past and new positions."""
        req, width = self.dec.request, ids.shape[1]
        for r, total in enumerate(mask.sum(axis=1)):
            total = int(total)
            if total == 0:
                continue
            new = min(width, total)                   # prefill: the row's prompt; step: one token
            start = total - new                       # positions already in the cache
            feeds = {INPUT_IDS: ids[r:r + 1, :new], ATTENTION_MASK: np.ones((1, total), np.int64)}
            for i, (k, v) in enumerate(self.cache):
                feeds[past(i, "key")], feeds[past(i, "value")] = k[r:r + 1], v[r:r + 1]
            req.infer(feeds, share_inputs=True)
            for i, (k, v) in enumerate(self.cache):
                k[r, :, start:total] = req.get_tensor(present(i, "key")).data[0, :, start:total]
                v[r, :, start:total] = req.get_tensor(present(i, "value")).data[0, :, start:total]
            out = req.get_tensor(LOGITS).data
            if logits.shape[1] == 1:
                logits[r, 0] = out[0, -1]
            else:
                logits[r, :new] = out[0, -new:]


LONG_PROMPT = 128            # tokens from which a prefill counts as long (measured at 32 and 256)


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

    def run(self, ids: np.ndarray, mask: np.ndarray, logits: np.ndarray) -> None:
        width = ids.shape[1]
        (self.decode if width == 1 else self.short if width < LONG_PROMPT else self.long).run(ids, mask, logits)


def open_decoder(folder, runtime, all_logits: bool = False, log=None) -> DecoderBackend:
    """The decoder backend `runtime` asks for: ONNX Runtime, OpenVINO, or (auto) each phase on the
    runtime measured faster for it here."""
    # ONNX Runtime takes the device asked for only when it is the backend asked for (not OpenVINO's AUTO, ...)
    on_ort = runtime.model_copy(update={"backend": "onnxruntime",
                                        **({} if runtime.backend == "onnxruntime" else {"device": "cpu"})})
    if runtime.backend == "onnxruntime" or all_logits:
        if all_logits and runtime.backend == "openvino":
            raise BadArgument("evaluation (logits at every position) runs on --backend onnxruntime only")
        return DecoderSession(folder, all_logits=all_logits, runtime=on_ort)
    if runtime.backend == "openvino":
        return OpenVINODecoder(folder, runtime)
    ort = DecoderSession(folder, runtime=on_ort)
    try:
        ov = OpenVINODecoder(folder, runtime)
    except (BadArgument, CorruptModel) as err:
        if log:
            log(f"backend auto: onnxruntime ({first_line(err, 160)})")
        return ort
    backends = {"onnxruntime": ort, "openvino": ov}
    chosen = pick_phases(runtime, backends, log)
    if len(set(chosen)) == 1:
        return backends[chosen[0]]
    return SplitDecoder(folder, *(backends[c] for c in chosen))


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


def pick_phases(runtime, backends: dict[str, DecoderBackend], log=None) -> tuple[str, str, str]:
    """(short prefill, long prefill, decode) backends: each phase's faster, measured once per model,
    machine and hint."""
    from pressa.runtime.choose import cache_file, fastest, key_of, remembered

    figures = remembered("decoder|" + key_of(backends["onnxruntime"].model_path, runtime),
                         lambda: measure_phases(backends))
    chosen = tuple(fastest(figures, p) for p in ("prefill_short_", "prefill_long_", "step_"))
    if log:
        def both(p):
            return ", ".join(f"{b} {figures[p + b] * 1e3:.1f} ms" for b in backends)
        log(f"backend auto: prompts under {LONG_PROMPT} tokens on {chosen[0]} ({both('prefill_short_')} for 32), "
            f"longer on {chosen[1]} ({both('prefill_long_')} for 256), decode on {chosen[2]} ({both('step_')} a "
            f"step); measured once, cached in {cache_file()}")
    return chosen
