"""Decoder LLMs on OpenVINO, behind the same slot primitives as ONNX Runtime (pressa.genai.slots).

OpenVINODecoder is stateful: the graph's past/present pairs become OpenVINO state (ReadValue/Assign,
pressa.runtime.ir_export.make_stateful), so the KV cache lives inside OpenVINO and is never copied
through Python. Each slot of the engine is one infer request of the compiled model, holding its
sequence's cache as that request's state; a step runs the live slots' requests (queued together on
OpenVINO's asynchronous API). An OpenVINO IR folder written by `pressa export --format openvino` is
already stateful and runs the same way.

OpenVINOArrayDecoder keeps the cache in pressa's arrays instead, as ONNX Runtime does (past = the
slot's buffer row, the new positions copied back after each run): `--backend auto` uses it to
prefill on OpenVINO into the cache that ONNX Runtime then decodes from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pressa.artifact.llm_io import ATTENTION_MASK, INPUT_IDS, LOGITS, past, present
from pressa.errors import BadArgument, CorruptModel, first_line
from pressa.genai.decoder_session import DecoderBackend

BEAM_IDX = "beam_idx"
_FIRST_ROW = np.zeros(1, np.int32)


def read_decoder(model_path: Path):
    """The decoder graph as an OpenVINO model; BadArgument/CorruptModel with one line when it cannot be."""
    from pressa.runtime.openvino import core

    model_path = Path(model_path)
    if model_path.suffix == ".onnx":
        why = unsupported(model_path)
        if why:
            raise BadArgument(f"{model_path}: {why}; use --backend onnxruntime (auto does)")
    try:
        return core().read_model(str(model_path))
    except Exception as err:
        raise CorruptModel(f"{model_path}: OpenVINO cannot read it ({reason(err)}); rebuild it "
                           "with this pressa (older builds kept the embedding's scales behind a Cast) or use "
                           "--backend onnxruntime") from None


def unsupported(model_path) -> str | None:
    """What in the graph OpenVINO's GroupQueryAttention cannot compute: attention soft-capping (Gemma 2),
    the probabilities output of --exact-speculation. (Sliding windows it keeps: Gemma 3 and Mistral match
    ONNX Runtime past their windows.)"""
    import onnx

    for n in onnx.load(str(model_path), load_external_data=False).graph.node:
        if n.op_type != "GroupQueryAttention":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("softcap"):
            return "OpenVINO's GroupQueryAttention has no attention soft-capping (this model caps its scores)"
        if attrs.get("qk_output"):
            return ("built with --exact-speculation, whose attention OpenVINO's GroupQueryAttention cannot "
                    "output (an IR export can: pressa export --format openvino)")
    return None


def reason(err: Exception) -> str:
    """The telling line of an OpenVINO error (its first lines are source locations)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.strip().startswith("Exception from")]
    telling = [ln for ln in lines if "failed for" in ln or "not supported" in ln.lower()]
    return (telling or lines or [first_line(err, 200)])[-1][:240]


def _last_only(model) -> bool:
    dim = model.output(LOGITS).get_partial_shape()[1]
    return dim.is_static and dim.get_length() == 1


def _compile(model, runtime):
    from pressa.runtime.openvino import compile_config, core, device_name

    device = device_name(runtime.device)
    try:
        return core().compile_model(model, device, compile_config(runtime))
    except Exception as err:
        raise CorruptModel(f"OpenVINO cannot compile the decoder for {device} ({reason(err)}); "
                           "use --backend onnxruntime") from None


class OpenVINODecoder(DecoderBackend):
    """The stateful decoder: a cache is a set of infer requests, one per slot (RequestRows)."""

    def __init__(self, folder, runtime):
        from pressa.runtime.ir_export import make_stateful

        super().__init__(folder)
        model = read_decoder(self.model_path)
        if not any(op.get_type_name() == "ReadValue" for op in model.get_ops()):
            names = [i.get_any_name() for i in model.inputs if i.get_any_name().startswith("past_key_values.")]
            make_stateful(model, {n: present(int(n.split(".")[1]), n.rsplit(".", 1)[1]) for n in names})
        self.last_only = _last_only(model)
        self.compiled = _compile(model, runtime)

    def new_cache(self, rows: int, capacity: int, zeros=None) -> RequestRows:
        """`rows` slots, each an infer request made when first used (its state grows with its sequence)."""
        return RequestRows(self.compiled, [None] * rows, list(range(rows)))

    def bind(self, cache: RequestRows) -> StatefulBinding:
        return StatefulBinding(self, cache)


class RequestRows:
    """Slots as infer requests of one compiled model; `rows` and `for_slots` select without copying."""

    def __init__(self, compiled, requests: list, index: list[int]):
        self.compiled, self._requests, self.index = compiled, requests, index

    def request(self, row: int):
        i = self.index[row]
        if self._requests[i] is None:
            self._requests[i] = self.compiled.create_infer_request()
        return self._requests[i]

    def rows(self, start: int, stop: int) -> RequestRows:
        return RequestRows(self.compiled, self._requests, self.index[start:stop])

    def for_slots(self, slots: list[int], width: int, new_cache) -> tuple[RequestRows, None]:
        return RequestRows(self.compiled, self._requests, [self.index[s] for s in slots]), None


class StatefulBinding:
    """Runs each live row on its slot's request: a row whose new tokens are all its positions starts
    a new sequence (its state is reset first); otherwise the tokens extend the state's sequence."""

    def __init__(self, dec: OpenVINODecoder, cache: RequestRows):
        self.dec, self.cache = dec, cache

    def run(self, ids: np.ndarray, mask: np.ndarray, logits: np.ndarray, live=None) -> None:
        started = []
        for r, new, total in row_runs(ids, mask, live):
            req = self.cache.request(r)
            if new == total:
                req.reset_state()
            req.start_async({INPUT_IDS: ids[r:r + 1, :new], ATTENTION_MASK: np.ones((1, total), np.int64),
                             BEAM_IDX: _FIRST_ROW}, share_inputs=True)
            started.append((r, new, req))
        for r, new, req in started:
            req.wait()
            put_logits(logits, r, req.get_tensor(LOGITS).data, new)


def row_runs(ids: np.ndarray, mask: np.ndarray, live=None):
    """(row, new tokens, positions after them) for each row to run one by one: the live rows (all when
    None) that hold positions; a prefill's new tokens are the row's prompt, a step's one token."""
    width, totals = ids.shape[1], mask.sum(axis=1)
    for r in range(len(ids)) if live is None else live:
        total = int(totals[r])
        if total:
            yield r, min(width, total), total


def put_logits(logits: np.ndarray, row: int, out: np.ndarray, new: int) -> None:
    """A one-row run's logits `out` [1, S, V] into row `row` of the batch's `logits` (its last position
    for a last-token buffer [B, 1, V], else its new positions)."""
    if logits.shape[1] == 1:
        logits[row, 0] = out[0, -1]
    else:
        logits[row, :new] = out[0, -new:]


class OpenVINOArrayDecoder(DecoderBackend):
    """OpenVINO over pressa's own KV arrays (KVBuffers): the prefill phase of `--backend auto`."""

    def __init__(self, folder, runtime):
        super().__init__(folder)
        model = read_decoder(self.model_path)
        if self.model_path.suffix != ".onnx":
            raise BadArgument(f"{self.model_path}: an OpenVINO IR decoder keeps its cache as state; "
                              "run it with --backend openvino")
        self.last_only = _last_only(model)
        kv = model.input(past(0, "key")).get_element_type().get_type_name()
        self.kv_dtype = np.float16 if kv == "f16" else np.float32
        self.compiled = _compile(model, runtime)
        self.request = self.compiled.create_infer_request()

    def bind(self, cache):
        return ArrayBinding(self, cache)


class ArrayBinding:
    """Each row runs as its own request (past = the row's buffer; OpenVINO's GroupQueryAttention reads
    the past's valid length from the mask), and the new keys and values are copied into the row."""

    def __init__(self, dec: OpenVINOArrayDecoder, cache):
        self.dec, self.cache = dec, cache

    def run(self, ids: np.ndarray, mask: np.ndarray, logits: np.ndarray, live=None) -> None:
        req = self.dec.request
        for r, new, total in row_runs(ids, mask, live):
            start = total - new                       # positions already in the cache
            feeds = {INPUT_IDS: ids[r:r + 1, :new], ATTENTION_MASK: np.ones((1, total), np.int64)}
            for i, (k, v) in enumerate(self.cache):
                feeds[past(i, "key")], feeds[past(i, "value")] = k[r:r + 1], v[r:r + 1]
            req.infer(feeds, share_inputs=True)
            for i, (k, v) in enumerate(self.cache):
                k[r, :, start:total] = req.get_tensor(present(i, "key")).data[0, :, start:total]
                v[r, :, start:total] = req.get_tensor(present(i, "value")).data[0, :, start:total]
            put_logits(logits, r, req.get_tensor(LOGITS).data, new)
