"""Models behind the server, each loaded once: a TextGenerator runs every request's sequences through
one continuous-batching scheduler (pressa.genai.scheduler); a TensorModel batches requests dynamically
(pressa.serve.batching). Both within a concurrency limit and a bounded queue. `models.yaml` entries
are ModelEntry."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pressa.errors import BadArgument, PressaError, first_line
from pressa.runtime.options import RuntimeOptions

V2_TYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
            "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
ORT_TO_V2 = {"tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(int8)": "INT8", "tensor(int16)": "INT16",
             "tensor(int32)": "INT32", "tensor(int64)": "INT64", "tensor(float16)": "FP16",
             "tensor(float)": "FP32", "tensor(double)": "FP64"}


class Busy(PressaError):
    """The model's queue is full; the client should retry later (503 with Retry-After)."""


class RequestError(PressaError):
    """A request the server cannot serve as sent (4xx)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class TensorSpec:
    name: str
    datatype: str
    shape: list


class ServedModel:
    """A model loaded once behind the server, within a concurrency limit and a bounded queue."""

    def __init__(self, name: str, model, max_concurrency: int = 8, max_queue: int = 64):
        self.name, self.model = name, model
        self.slots = threading.BoundedSemaphore(max_concurrency)
        self.max_queue = max_queue
        self.waiting = 0
        self._lock = threading.Lock()
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []

    @property
    def queued(self) -> int:
        """What its scheduler or batcher holds beyond the requests waiting for a slot."""
        return 0

    @property
    def depth(self) -> int:
        return self.waiting + self.queued

    def close(self) -> None:
        """End what still waits (at shutdown)."""

    def busy(self, what: str) -> Busy:
        return Busy(f"model {self.name} has {self.max_queue} {what} queued; retry shortly")

    # -- admission ---------------------------------------------------------------------------
    def acquire(self, timeout: float = 120.0) -> None:
        """A slot now, or a place among the `max_queue` waiting for one (Busy when those are taken)."""
        if self.slots.acquire(blocking=False):
            return
        with self._lock:
            if self.waiting >= self.max_queue:
                raise Busy(f"model {self.name} has {self.waiting} requests waiting; retry shortly")
            self.waiting += 1
        try:
            if not self.slots.acquire(timeout=timeout):
                raise Busy(f"model {self.name} is busy; retry shortly")
        finally:
            with self._lock:
                self.waiting -= 1

    def release(self) -> None:
        self.slots.release()


class TextGenerator(ServedModel):
    """A decoder LLM: text in, text out (the KV cache and logits stay inside), every request's
    sequences through one continuous-batching scheduler."""

    def __init__(self, name: str, model, max_concurrency: int = 8, max_queue: int = 64, context: int | None = None):
        from pressa.genai.scheduler import Scheduler

        super().__init__(name, model, max_concurrency, max_queue)
        self.inputs = [TensorSpec("text_input", "BYTES", [-1])]
        self.outputs = [TensorSpec("text_output", "BYTES", [-1])]
        self.scheduler = Scheduler(model, slots=max_concurrency, max_queue=max_queue, capacity=context,
                                   on_full=lambda: self.busy("generations"))

    @property
    def queued(self) -> int:
        return self.scheduler.depth

    def close(self) -> None:
        self.scheduler.close()

    def submit(self, prompts: list[list[int]], cfg, emit) -> list:
        """One sequence per prompt's token ids, sequence i sampling with seed + i; emit(i, text, finish,
        generated) for sequence i. Nothing is left running when one cannot start."""
        seqs = []
        try:
            for i, ids in enumerate(prompts):
                c = dataclasses.replace(cfg, speculative=self.model.speculative,
                                        **({} if cfg.seed is None else {"seed": cfg.seed + i}))
                seqs.append(self.scheduler.submit(ids, c, lambda t, f, g, *lp, i=i: emit(i, t, f, g, *lp)))
        except BadArgument as err:
            raise RequestError(str(err)) from None
        finally:
            if len(seqs) < len(prompts):
                for s in seqs:
                    s.cancel()
        return seqs

    def generate_texts(self, prompts: list[str], cfg, timeout: float = 600.0) -> list[str]:
        """Blocking: one completion per prompt (the chat template applied where the model has one),
        all through the scheduler at once; for predict and infer on a text generator."""
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise RequestError("a text generator takes a non-empty list of prompt strings")
        texts, ends = [""] * len(prompts), [threading.Event() for _ in prompts]
        errors: list[str] = []

        def emit(i, text, finish, generated):
            if text:
                texts[i] += text
            if finish:
                if text is None:
                    errors.append(finish)
                ends[i].set()

        seqs = self.submit([self.model.encode_prompt(p) for p in prompts], cfg, emit)
        try:
            for e in ends:
                if not e.wait(timeout):
                    raise RequestError(f"generation took over {timeout:.0f} s", 504)
        finally:
            for s in seqs:
                s.cancel()
        if errors:
            raise RequestError(f"generation failed ({errors[0]})", 500)
        return texts


class TensorModel(ServedModel):
    """Any other ONNX model: named tensors in and out (texts through its tokenizer, where it has one),
    requests batched dynamically where every input has a free batch dimension."""

    def __init__(self, name: str, model, max_concurrency: int = 8, max_queue: int = 64, max_batch: int = 32,
                 max_wait: float = 0.005):
        super().__init__(name, model, max_concurrency, max_queue)
        sess = model.session
        self.inputs = [TensorSpec(i.name, ORT_TO_V2.get(i.type, i.type), _dims(i.shape)) for i in sess.get_inputs()]
        self.outputs = [TensorSpec(o.name, ORT_TO_V2.get(o.type, o.type), _dims(o.shape)) for o in sess.get_outputs()]
        self.batcher = None
        if max_batch > 1 and all(t.shape and t.shape[0] == -1 for t in self.inputs):
            from pressa.serve.batching import Batcher

            parallel = getattr(model.session, "parallel_requests", lambda: 1)()       # OpenVINO's streams
            self.batcher = Batcher(self._run, max_batch, max_wait, max_queue, on_full=lambda: self.busy("requests"),
                                   workers=parallel)

    @property
    def queued(self) -> int:
        return self.batcher.depth if self.batcher else 0

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self.model.run(feeds)
        except Exception as err:              # ORT's own shape/type complaints: the client's fault
            raise RequestError(f"the model could not run these inputs ({first_line(err, 200)})") from None

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        want = {t.name: t for t in self.inputs}
        unknown = [k for k in feeds if k not in want]
        if unknown:
            raise RequestError(f"unknown input {unknown[0]!r}; the model's inputs: {', '.join(want)}")
        missing = [k for k in want if k not in feeds]
        if missing:
            raise RequestError(f"missing input {missing[0]!r}")
        for k, arr in feeds.items():
            spec = want[k]
            if len(spec.shape) != arr.ndim:
                raise RequestError(f"input {k!r}: {arr.ndim} dimensions given, the model takes {len(spec.shape)}")
            if any(d > 0 and d != a for d, a in zip(spec.shape, arr.shape)):
                raise RequestError(f"input {k!r}: shape {list(arr.shape)} does not fit {spec.shape}")
            feeds[k] = arr.astype(V2_TYPES.get(spec.datatype, arr.dtype), copy=False)
        if self.batcher is not None:
            return self.batcher.submit(feeds)
        self.acquire()
        try:
            return self._run(feeds)
        finally:
            self.release()

    def text_feeds(self, texts: list[str]) -> dict[str, np.ndarray]:
        if not (self.model.folder / "tokenizer.json").is_file():
            raise RequestError(f"model {self.name} takes no text (no tokenizer beside it)")
        if not texts or not all(isinstance(t, str) for t in texts):
            raise RequestError("text inputs must be a non-empty list of strings")
        return self.model.encode_text(texts)

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """(embeddings, tokens read): the texts are tokenized once, for both."""
        feeds = self.text_feeds(texts)
        self.acquire()
        try:
            return self.model.embed_feeds(feeds), int(feeds["attention_mask"].sum())
        except Exception as err:              # ORT's complaint about the input (too long, say)
            raise RequestError(f"the model could not embed these texts ({first_line(err, 200)})") from None
        finally:
            self.release()


def served(models: dict[str, ServedModel], name: str, want: type[ServedModel] = ServedModel,
           use: str = "") -> ServedModel:
    """The model of that name (404 when none is served), of the kind the route takes (400 naming the
    route to `use` otherwise)."""
    if name not in models:
        raise RequestError(f"no model named {name!r}; served: {', '.join(models)}", 404)
    m = models[name]
    if not isinstance(m, want):
        what = "does not generate text" if want is TextGenerator else "is a text generator"
        raise RequestError(f"model {name} {what}; use {use}")
    return m


def _dims(shape) -> list:
    return [d if isinstance(d, int) else -1 for d in shape]


class ServingLimits(BaseModel):
    """How much of the server one model may take: the keys of a models.yaml entry, and the `serve` flags
    that give every entry its defaults (cli/options.py makes them from these fields)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_concurrency: int = Field(8, ge=1, description="sequences a text generator decodes together (continuous "
                                 "batching), requests a tensor model runs at once")
    max_queue: int = Field(64, ge=0, description="requests waiting, beyond those running, before 503 with "
                           "Retry-After")
    max_batch: int = Field(32, ge=1, description="rows per dynamic batch of predict/infer requests (1 = no batching)")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits for more requests after its first")
    context: int | None = Field(None, ge=2, description="positions (prompt + new tokens) each generation may hold; "
                                "default the model's context length, at most 4096")
    prefix_cache_mb: float = Field(256, ge=0, description="a text generator's memory for the keys and values of "
                                   "prompt prefixes reused across requests and chat turns (0: none)")
    speculative: Literal["lookup", "draft", "off"] = Field(
        "off", description="a text generator's decoding: lookup drafts tokens from the prompt and verifies them in "
        "one step (the same output, faster where answers echo the input); draft: draft_model drafts them")
    draft_model: Path | None = Field(None, description="with speculative draft: a smaller artifact with the same "
                                     "vocabulary")


class ModelEntry(RuntimeOptions, ServingLimits):
    """One served model, as `models.yaml` lists it (unset options take the command line's values): its
    name and path, the runtime keys (RuntimeOptions') and its ServingLimits."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, pattern=r"^[\w.\-]+$", description="the name clients use")
    path: Path = Field(description="an artifact folder (or .onnx file)")


def model_entries(raw, defaults: dict, where: str = "models") -> list[ModelEntry]:
    """Validated entries: each a mapping with a unique name and an existing path; unknown keys are named
    with the nearest known one."""
    import difflib

    from pydantic import ValidationError

    if not isinstance(raw, list) or not raw:
        raise BadArgument(f"{where}: give a non-empty list of {{name, path}} entries")
    out: list[ModelEntry] = []
    for i, e in enumerate(raw):
        if not isinstance(e, dict):
            raise BadArgument(f"{where}[{i}]: must be a mapping with name and path")
        try:
            entry = ModelEntry(**{**defaults, **e})
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(x) for x in first["loc"])
            hint = ""
            if first["type"] == "extra_forbidden":
                close = difflib.get_close_matches(key, list(ModelEntry.model_fields), n=1)
                hint = f", did you mean {close[0]}?" if close else f" (keys: {', '.join(ModelEntry.model_fields)})"
                raise BadArgument(f"{where}[{i}].{key}: unknown key{hint}") from None
            raise BadArgument(f"{where}[{i}].{key}: {first['msg']}") from None
        if any(o.name == entry.name for o in out):
            raise BadArgument(f"{where}[{i}].name: {entry.name!r} is served twice; give each model its own name")
        if not entry.path.exists():
            raise BadArgument(f"model {entry.name}: {entry.path} does not exist")
        out.append(entry)
    return out


def load_models(entries: list, threads: int | None = None) -> dict[str, ServedModel]:
    """Each entry (a ModelEntry, or a mapping validated as one) loaded once, as a TextGenerator or a
    TensorModel by its artifact kind."""
    import pressa
    from pressa.artifact import ArtifactKind, kind_of

    if not all(isinstance(e, ModelEntry) for e in entries):
        entries = model_entries(entries, {})
    out: dict[str, ServedModel] = {}
    for e in entries:
        runtime = e.model_dump(include=set(RuntimeOptions.model_fields))
        llm = kind_of(e.path) == ArtifactKind.DECODER_LLM
        extra = {"speculative": e.speculative, "prefix_cache_mb": e.prefix_cache_mb,
                 "draft_model": e.draft_model} if llm else {}
        model = pressa.load(e.path, **{**runtime, "threads": e.threads or threads, **extra})
        if llm:
            out[e.name] = TextGenerator(e.name, model, e.max_concurrency, e.max_queue, e.context)
        else:
            out[e.name] = TensorModel(e.name, model, e.max_concurrency, e.max_queue, e.max_batch, e.max_wait_ms / 1000)
    return out
