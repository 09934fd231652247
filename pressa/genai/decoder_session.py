"""The ONNX Runtime backend of text generation: one decoder graph run step by step with its KV cache
kept in place.

The cache (KVBuffers) is one preallocated buffer per layer, bound both as past and as present
(GroupQueryAttention's shared-buffer mode), so no step copies it. Prompts of different
lengths are laid out right-padded, which is how GroupQueryAttention reads per-row lengths.
A backend offers what the engine (pressa.genai.slots) needs: the model's shape facts,
`new_cache` and `bind(cache).run(ids, mask, logits)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pressa.artifact.llm_io import ATTENTION_MASK, INPUT_IDS, LOGITS, past, present, read_genai_config
from pressa.capture.lora import ADAPTER_IDS, read_adapter_names
from pressa.capture.positions import LAST_TOKEN_NODE
from pressa.errors import BadArgument
from pressa.runtime.session import open_session

_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class DecoderBackend:
    """What every decoder backend shares: the model's shape facts from genai_config.json, the cache
    layout, and whole-batch prefill/step over `bind` (evaluation, tests). A backend sets `last_only`
    and `kv_dtype` and implements `bind(cache)` -> an object with `run(ids, mask, logits)`."""
    last_only = True
    window: int | None = None        # logits for each row's last `window` positions (a verification graph)
    draft_cost = 0.1                 # a drafted token's share of a step (measured when verification opens)
    kv_dtype = np.float32

    def __init__(self, folder: Path):
        folder = Path(folder)
        self.config = read_genai_config(folder)
        d = self.config["model"]["decoder"]
        self.num_layers, self.kv_heads = d["num_hidden_layers"], d["num_key_value_heads"]
        self.head_size = d["head_size"]
        self.context_length = self.config["model"]["context_length"]
        self.vocab_size = self.config["model"]["vocab_size"]
        self.model_path = folder / d.get("filename", "model.onnx")
        # False for the general path's graphs, whose cache grows by concatenation (capture/general.py)
        self.shared_buffer = bool(self.config.get("search", {}).get("past_present_share_buffer", True))
        self.adapters = read_adapter_names(folder)       # run-time LoRA adapters (capture/lora.py), id = index + 1
        self.lengths: np.ndarray | None = None

    def adapter_id(self, name: str | None) -> int:
        """The graph's id of a run-time adapter (0: none, the base)."""
        if not name:
            return 0
        if name not in self.adapters:
            have = f"this model has: {', '.join(self.adapters)}" if self.adapters else "this model has none"
            raise BadArgument(f"no adapter named {name!r}; {have} (auto-opt --adapters NAME=DIR builds them in)")
        return self.adapters.index(name) + 1

    def adapter_rows(self, names: list[str | None]) -> dict:
        """run()'s keyword for rows using these adapters: {} for a model without run-time adapters."""
        if not self.adapters:
            return {}
        return {"adapters": np.asarray([self.adapter_id(n) for n in names], np.int64)}

    def logits_width(self, width: int) -> int:
        """Positions the graph returns logits for, for `width` new tokens per row."""
        return 1 if self.last_only else min(width, self.window) if self.window else width

    def last_index(self, lengths: np.ndarray) -> np.ndarray:
        """Where each row's last real token's logits are, for rows of these lengths."""
        return np.full(len(lengths), -1) if self.last_only or self.window else np.asarray(lengths) - 1

    def check_capacity(self, capacity: int) -> None:
        """BadArgument when a sequence of `capacity` positions (prompt plus new tokens) cannot fit."""
        if capacity > self.context_length:
            raise BadArgument(f"prompt plus new tokens ({capacity}) exceed the model's context length "
                              f"{self.context_length}; shorten the prompt or lower --max-new-tokens")

    # -- slot primitives (what the engine in pressa.genai.slots uses) --------------------------
    def new_cache(self, rows: int, capacity: int, zeros=np.zeros) -> KVBuffers:
        """One key and one value buffer [rows, kv_heads, capacity, head_size] per layer."""
        shape = (rows, self.kv_heads, capacity, self.head_size)
        return KVBuffers((zeros(shape, self.kv_dtype), zeros(shape, self.kv_dtype)) for _ in range(self.num_layers))

    # -- whole-batch use (evaluation, tests): prefill prompts, then step every row ------------
    def prefill(self, prompts: list[list[int]], capacity: int, adapter: str | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Run the prompts (with run-time adapter `adapter`, if any); returns (last-token logits [B, V],
        logits [B, S, V] right-padded, where S is 1 for a last-token graph unless the session was opened
        with all_logits)."""
        self.check_capacity(capacity)
        self.capacity = capacity
        self.cache = self.new_cache(len(prompts), capacity)
        self.binding = self.bind(self.cache)
        ids, mask = right_padded(prompts)
        lens = mask.sum(axis=1)
        logits = np.empty((len(prompts), self.logits_width(ids.shape[1]), self.vocab_size), np.float32)
        self._rows = self.adapter_rows([adapter] * len(prompts))
        self.binding.run(ids, mask, logits, **self._rows)
        self.lengths = lens
        self._step_logits = np.zeros((len(prompts), 1, self.vocab_size), np.float32)
        last = logits[np.arange(len(prompts)), self.last_index(lens)]
        return last, logits

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """One new token per row; returns logits [B, V] (a view reused by the next step)."""
        if int(self.lengths.max()) + 1 > self.capacity:
            raise BadArgument("the KV cache is full; raise the capacity")
        self.binding.run(np.asarray(tokens, np.int64).reshape(-1, 1), step_mask(self.lengths), self._step_logits,
                         **self._rows)
        self.lengths = self.lengths + 1
        return self._step_logits[:, 0, :]

    def bind(self, cache):
        """An object whose run(ids, mask, logits, live=None) runs the graph over `cache`."""
        raise NotImplementedError


class KVBuffers(list):
    """A KV cache held in arrays: one (key, value) pair [rows, kv_heads, capacity, head_size] per
    layer, each row a sequence's slot. A backend's cache answers `rows` and `for_slots`."""

    def rows(self, start: int, stop: int) -> KVBuffers:
        """Rows start..stop-1, as views."""
        return KVBuffers((k[start:stop], v[start:stop]) for k, v in self)

    def for_slots(self, slots: list[int], width: int, new_cache) -> tuple[KVBuffers, object]:
        """(a cache to prefill `slots` in, settle(lengths) to call after the run, or None). Slots that lie
        together are prefilled in place; otherwise into new buffers of `width` positions, whose rows
        settle then copies into their slots (a copy far smaller than the run)."""
        if slots[-1] - slots[0] == len(slots) - 1:
            return self.rows(slots[0], slots[-1] + 1), None
        fresh = new_cache(len(slots), width)

        def settle(lengths):
            for (k, v), (fk, fv) in zip(self, fresh):
                for r, slot in enumerate(slots):
                    k[slot, :, :lengths[r]] = fk[r, :, :lengths[r]]
                    v[slot, :, :lengths[r]] = fv[r, :, :lengths[r]]
        return fresh, settle


class DecoderSession(DecoderBackend):
    def __init__(self, folder: Path, device: str = "cpu", threads: int | None = None, hint: str = "latency",
                 all_logits: bool = False, runtime=None, window: int | None = None):
        """`all_logits`: logits for every prompt position (evaluation); by default graphs built
        with last-token logits compute the vocabulary projection for each row's last token only;
        `window`: for each row's last `window` positions (verifying drafted tokens, genai/speculative.py).
        `runtime` (RuntimeOptions with backend onnxruntime): device, threads and hint in one."""
        import onnxruntime as ort

        super().__init__(folder)
        self.ort = ort
        model_path = self.model_path
        variant = (all_logits_variant(model_path) if all_logits
                   else window_variant(model_path, window) if window else None)
        self.window = window if variant is not None and not all_logits else None
        self.session = open_session(model_path, device, threads, hint, model_bytes=variant, runtime=runtime)
        out = {o.name: o.shape for o in self.session.get_outputs()}[LOGITS]
        self.last_only = out[1] == 1
        types = {i.name: i.type for i in self.session.get_inputs()}
        self.kv_dtype = _NP.get(types.get(past(0, "key")), np.float32)

    def bind(self, cache: list[tuple[np.ndarray, np.ndarray]]) -> Binding | ConcatBinding:
        """The graph with `cache` (rows of the buffers, or views of them) as both past and present (or,
        for a graph whose present is past + new, fed from and copied back into it)."""
        return Binding(self, cache) if self.shared_buffer else ConcatBinding(self, cache)


class Binding:
    """A KV cache bound to the graph as past and present: runs write new keys and values in place."""

    def __init__(self, dec: DecoderSession, cache: list[tuple[np.ndarray, np.ndarray]]):
        self.session, OV = dec.session, dec.ort.OrtValue
        self.io = self.session.io_binding()
        for i, (k, v) in enumerate(cache):
            ko, vo = OV.ortvalue_from_numpy(k), OV.ortvalue_from_numpy(v)
            self.io.bind_ortvalue_input(past(i, "key"), ko)
            self.io.bind_ortvalue_input(past(i, "value"), vo)
            self.io.bind_ortvalue_output(present(i, "key"), ko)
            self.io.bind_ortvalue_output(present(i, "value"), vo)
        self._ov, self._logits = OV, None
        self._adapters = bool(dec.adapters)

    def run(self, ids: np.ndarray, mask: np.ndarray, logits: np.ndarray, live=None,
            adapters: np.ndarray | None = None) -> None:
        """Tokens [B, S] with the attention mask over past and new positions [B, T]; the logits are
        written into `logits` ([B, 1, V] for a last-token graph, else [B, S, V]). `live`: the rows
        that hold sequences, when some do not (a backend that runs rows one by one skips the others).
        `adapters`: each row's run-time adapter id (a graph with adapters; default all 0, the base)."""
        self.io.bind_cpu_input(INPUT_IDS, ids)
        self.io.bind_cpu_input(ATTENTION_MASK, mask)
        if self._adapters:           # an overridable initializer (default 0): bound as an OrtValue, kept alive
            rows = adapters if adapters is not None else np.zeros(len(ids), np.int64)
            self._adapter_value = self._ov.ortvalue_from_numpy(np.ascontiguousarray(rows, np.int64))
            self.io.bind_ortvalue_input(ADAPTER_IDS, self._adapter_value)
        if logits is not self._logits:
            self.io.bind_ortvalue_output(LOGITS, self._ov.ortvalue_from_numpy(logits))
            self._logits = logits
        self.session.run_with_iobinding(self.io)


class ConcatBinding:
    """A graph whose present is past followed by the new positions (the general path's): each run feeds
    the held positions and copies the new keys and values into each row's next free positions, keeping
    the cache laid out as GroupQueryAttention's (each row's tokens from position 0, lengths per row)."""

    def __init__(self, dec: DecoderSession, cache: list[tuple[np.ndarray, np.ndarray]]):
        self.session, self.cache = dec.session, cache
        self.outputs = [LOGITS] + [present(i, kv) for i in range(len(cache)) for kv in ("key", "value")]

    def run(self, ids: np.ndarray, mask: np.ndarray, logits: np.ndarray, live=None) -> None:
        rows, new = ids.shape
        held = mask.shape[1] - new                  # positions already in the cache (the longest row's)
        if held and new != 1:
            raise BadArgument("a prompt continued from a filled cache needs a graph with a shared KV buffer")
        lengths = mask.sum(axis=1) - new if held else np.zeros(rows, np.int64)
        feed_mask = mask if not held else np.concatenate(
            [(np.arange(held)[None, :] < lengths[:, None]), np.ones((rows, 1), bool)], axis=1).astype(np.int64)
        feeds = {INPUT_IDS: ids, ATTENTION_MASK: feed_mask}
        for i, (k, v) in enumerate(self.cache):
            feeds[past(i, "key")] = np.ascontiguousarray(k[:, :, :held])
            feeds[past(i, "value")] = np.ascontiguousarray(v[:, :, :held])
        out = self.session.run(self.outputs, feeds)
        logits[...] = out[0][:, -logits.shape[1]:]
        at = np.arange(rows)
        for i, (k, v) in enumerate(self.cache):
            for buf, got in ((k, out[1 + 2 * i]), (v, out[2 + 2 * i])):
                if held:
                    buf[at, :, lengths] = got[:, :, held]
                else:
                    buf[:, :, :new] = got


def right_padded(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, attention mask) [B, longest], each prompt left-aligned (how GroupQueryAttention reads
    per-row lengths)."""
    lens = [len(p) for p in prompts]
    if min(lens) < 1:
        raise BadArgument("empty prompt: give at least one token")
    ids = np.zeros((len(prompts), max(lens)), np.int64)
    mask = np.zeros((len(prompts), max(lens)), np.int64)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = p
        mask[b, :len(p)] = 1
    return ids, mask


def step_mask(lengths: np.ndarray) -> np.ndarray:
    """The attention mask of a one-token step for rows holding `lengths` positions each."""
    return (np.arange(int(lengths.max()) + 1)[None, :] <= lengths[:, None]).astype(np.int64)


def window_variant(model_path: Path, window: int) -> bytes | None:
    """The graph with logits for each row's last min(S, window) positions instead of its last one (a
    step over a few new tokens scores them all; a prompt's vocabulary projection stays small), as
    bytes whose external data still lives in the artifact; None when the graph has no last-token
    gather. The row's last real token stays at index -1."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(model_path), load_external_data=False)
    gather = next((n for n in m.graph.node if n.name == LAST_TOKEN_NODE), None)
    unsq = next((n for n in m.graph.node if n.output and gather is not None and n.output[0] == gather.input[1]), None)
    if gather is None or unsq is None:
        return None
    lab, last = "/model/logits_window", unsq.input[0]           # each row's last index, int64 [B]
    s32 = next(n.output[0] for n in m.graph.node if n.name == "/model/last_token/Cast_S")
    m.graph.initializer.extend([                                 # scalars, and two 1-D axes lists
        helper.make_tensor(f"{lab}/w", TensorProto.INT32, [], [window]),
        helper.make_tensor(f"{lab}/zero", TensorProto.INT64, [], [0]),
        helper.make_tensor(f"{lab}/one", TensorProto.INT64, [], [1]),
        helper.make_tensor(f"{lab}/axes1", TensorProto.INT64, [1], [1]),
        helper.make_tensor(f"{lab}/axes2", TensorProto.INT64, [1], [2])])
    nodes = [
        helper.make_node("Min", [s32, f"{lab}/w"], [f"{lab}/k32"], f"{lab}/Min"),
        helper.make_node("Cast", [f"{lab}/k32"], [f"{lab}/k"], f"{lab}/Cast", to=TensorProto.INT64),
        helper.make_node("Range", [f"{lab}/zero", f"{lab}/k", f"{lab}/one"], [f"{lab}/steps"], f"{lab}/Range"),
        helper.make_node("Sub", [f"{lab}/steps", f"{lab}/k"], [f"{lab}/back"], f"{lab}/Sub"),       # -k .. -1
        helper.make_node("Unsqueeze", [last, f"{lab}/axes1"], [f"{lab}/last"], f"{lab}/Unsqueeze_last"),
        helper.make_node("Add", [f"{lab}/last", f"{lab}/back"], [f"{lab}/idx0"], f"{lab}/Add"),
        helper.make_node("Add", [f"{lab}/idx0", f"{lab}/one"], [f"{lab}/idx1"], f"{lab}/Add_one"),
        helper.make_node("Max", [f"{lab}/idx1", f"{lab}/zero"], [f"{lab}/idx"], f"{lab}/Max"),
        helper.make_node("Unsqueeze", [f"{lab}/idx", f"{lab}/axes2"], [f"{lab}/indices"], f"{lab}/Unsqueeze"),
    ]
    at = list(m.graph.node).index(gather)
    for k, node in enumerate(nodes):
        m.graph.node.insert(at + k, node)
    gather.input[1] = f"{lab}/indices"
    for o in m.graph.output:
        if o.name == LOGITS:
            o.type.tensor_type.shape.dim[1].dim_param = "logits_window"
    return m.SerializeToString()


def all_logits_variant(model_path: Path) -> bytes | None:
    """The graph with the last-token gather replaced by Identity (every position gets logits), as
    bytes whose external data still lives in the artifact; None when the graph has no such gather."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    node = next((n for n in m.graph.node if n.name == LAST_TOKEN_NODE), None)
    if node is None:
        return None
    node.op_type = "Identity"
    del node.input[1:]
    del node.attribute[:]
    for o in m.graph.output:
        if o.name == LOGITS:
            o.type.tensor_type.shape.dim[1].dim_param = "sequence_length"
    return m.SerializeToString()
