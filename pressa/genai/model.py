"""The Python API: `pressa.load(path)` -> Model with generate(), stream() and chat()."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pressa.artifact import read_json
from pressa.capture.config import token_ids
from pressa.errors import BadArgument
from pressa.genai.prefix_cache import PrefixCache
from pressa.genai.sampling import SamplingConfig
from pressa.genai.sequence import Detokenizer, Sequence, check_request
from pressa.genai.slots import SlotBatch
from pressa.genai.speculative import VERIFY_WINDOW, check_mode, measure_draft_cost
from pressa.genai.tokenizer import TextTokenizer


@dataclass
class Event:
    """A piece of streamed text for one row of a batch; `finish` is set on its last event."""
    row: int
    text: str
    finish: str | None = None       # "stop" (EOS or stop string) | "length"
    generated: int = 0              # on a row's last event: the tokens it generated


class Model:
    def __init__(self, folder: Path, device: str = "cpu", threads: int | None = None, hint: str = "latency",
                 speculative: str = "off", prefix_cache_mb: float = 256, draft_model: str | Path | None = None,
                 **runtime):
        """`speculative`: "lookup" opens the graph with logits for each row's last positions, which
        verifying drafted tokens needs (generate(speculative="lookup") reopens it so at first use
        otherwise); "draft" verifies the drafts of `draft_model` (a smaller artifact with the same
        vocabulary). `prefix_cache_mb`: memory for the keys and values of prompt prefixes kept across
        calls and chat turns (genai/prefix_cache.py; 0: none).
        `runtime`: the other RuntimeOptions (backend: onnxruntime, openvino or auto; streams,
        precision_hint, cache_dir)."""
        from pressa import log
        from pressa.genai.backends import open_decoder
        from pressa.runtime.options import runtime_options

        self.runtime = runtime_options(device=device, threads=threads, hint=hint, **runtime)
        self.folder = Path(folder)
        self.session = open_decoder(self.folder, self.runtime, log=log.info)
        self.tokenizer = TextTokenizer(self.folder)
        self.draft_backend = self._open_drafter(Path(draft_model)) if draft_model else None
        self.speculative = self.prepare_speculation(speculative)       # the default of serve's requests
        self.prefix_cache = PrefixCache(prefix_cache_mb) if prefix_cache_mb > 0 else None
        self.eos_ids = set(token_ids(self.session.config["model"].get("eos_token_id")))
        gen = self.folder / "generation_config.json"
        if gen.is_file():
            self.eos_ids |= set(token_ids(read_json(gen).get("eos_token_id")))
        eos_tok = self.tokenizer.token_id(self.tokenizer.eos_token)
        if eos_tok is not None:
            self.eos_ids.add(eos_tok)

    @classmethod
    def load(cls, path, **kwargs) -> Model:
        return cls(Path(path), **kwargs)

    def _open_drafter(self, folder: Path):
        """A draft model's decoder, after checking that it reads tokens as this model does."""
        from pressa.genai.backends import open_decoder

        if not folder.is_dir():
            raise BadArgument(f"--draft-model {folder}: no such folder; give an artifact folder made by auto-opt")
        if TextTokenizer(folder).tok.get_vocab() != self.tokenizer.tok.get_vocab():
            raise BadArgument(f"--draft-model {folder}: its vocabulary differs from this model's; a draft model "
                              "must share the tokenizer (a smaller model of the same family)")
        return open_decoder(folder, self.runtime)

    def prepare_speculation(self, mode: str | None) -> str:
        """The checked mode; for speculation, the decoder reopened with logits for each row's last
        positions (verification), and a draft model for `draft`."""
        from pressa.genai.backends import open_decoder

        mode = check_mode(mode)
        if mode == "draft" and self.draft_backend is None:
            raise BadArgument("--speculative draft needs a draft model: --draft-model FOLDER "
                              "(pressa.load(..., draft_model=FOLDER))")
        if mode != "off" and self.session.last_only:
            if self.runtime.backend == "openvino" or not self.session.shared_buffer:
                raise BadArgument("speculative decoding runs on --backend onnxruntime, over graphs built by "
                                  "auto-opt's LLM builder")
            self.session = open_decoder(self.folder, self.runtime, window=VERIFY_WINDOW)
            self.session.draft_cost = measure_draft_cost(self.session)
        return mode

    @functools.cached_property
    def grammar(self):
        """The vocabulary as the grammar engine reads it (genai/constraints.py), built at first use."""
        from pressa.genai.constraints import GrammarTokenizer

        return GrammarTokenizer(self.folder, self.session.vocab_size, self.eos_ids)

    def constraint_for(self, cfg: SamplingConfig):
        """A new sequence's grammar state when its settings hold a grammar (else None)."""
        return self.grammar.constraint(cfg.grammar) if cfg.grammar else None

    @property
    def has_chat_template(self) -> bool:
        return bool(self.tokenizer.chat_template)

    # -- prompts ----------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | list[dict], chat: bool | None = None, tools: list[dict] | None = None
                      ) -> list[int]:
        """A string (wrapped in the chat template when `chat`, default: when the model has one)
        or a list of chat messages (with `tools` for the template to describe)."""
        if isinstance(prompt, list):
            text = self.tokenizer.apply_chat_template(prompt, tools=tools)
            return self.tokenizer.encode(text, add_special_tokens=False)
        use_chat = self.has_chat_template if chat is None else chat
        if use_chat:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
            return self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenizer.encode(prompt, add_special_tokens=True)

    def fit_history(self, messages: list[dict], max_new_tokens: int) -> tuple[list[dict], int]:
        """The latest messages that fit the context with room for `max_new_tokens`: the oldest are
        dropped (a system message stays, and what is kept starts with a user turn). Returns (kept,
        messages dropped); BadArgument when the newest message alone does not fit."""
        limit = self.session.context_length
        system = messages[:1] if messages and messages[0].get("role") == "system" else []
        turns, dropped = list(messages[len(system):]), 0
        while True:
            n = len(self.encode_prompt(system + turns))
            if n + max_new_tokens <= limit:
                return system + turns, dropped
            if len(turns) <= 1:
                raise BadArgument(f"that message is {n} tokens with the chat template; with {max_new_tokens} new "
                                  f"tokens it does not fit the model's context of {limit}: shorten it")
            turns.pop(0)
            dropped += 1
            while len(turns) > 1 and turns[0].get("role") != "user":
                turns.pop(0)
                dropped += 1

    # -- generation: a SlotBatch of its own (the engine serve's scheduler drives too) -----------
    def sequences(self, prompts: list[list[int]], cfg: SamplingConfig, emit=None) -> Iterator[list[Sequence]]:
        """Runs the prompts together to the end, yielding their sequences after the prefill and after
        each decode step. Row i samples with seed + i; `emit(i, text, finish, generated)` gets row i's
        text (no text is decoded without it)."""
        self.prepare_speculation(cfg.speculative)
        for ids in prompts:
            check_request(ids, cfg, self.session)
        capacity = max(len(p) for p in prompts) + cfg.max_new_tokens
        self.session.check_capacity(capacity)
        seqs = []
        for i, ids in enumerate(prompts):
            c = cfg if cfg.seed is None else dataclasses.replace(cfg, seed=cfg.seed + i)
            out = None if emit is None else (lambda t, f, g, i=i: emit(i, t, f, g))
            detok = None if emit is None else Detokenizer(self.tokenizer, cfg.stop, cfg.skip_special_tokens)
            seqs.append(Sequence(list(ids), c, out, detok, constraint=self.constraint_for(c)))
        batch = self.last_batch = SlotBatch(self.session, len(seqs), capacity, self.eos_ids,  # its counters
                                            self.prefix_cache, self.draft_backend)
        batch.admit(seqs)
        yield seqs
        while batch.active:
            batch.step()
            yield seqs

    def generate_ids(self, prompts: list[list[int]], cfg: SamplingConfig) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (tokens [B], active mask [B]) per step; rows stop at EOS unless ignore_eos."""
        counts = np.zeros(len(prompts), np.int64)
        for seqs in self.sequences(prompts, cfg):
            now = np.array([s.count for s in seqs])
            yield np.array([s.next_token for s in seqs], np.int64), now > counts
            counts = now

    def stream_batch(self, prompts: list, cfg: SamplingConfig | None = None, chat: bool | None = None,
                     json_schema=None, **kw) -> Iterator[Event]:
        """Events of a batch of prompts; `json_schema` (a dict, its JSON text, or True for any JSON
        object) holds every answer to it, token by token."""
        cfg = cfg or SamplingConfig(**kw)
        if json_schema is not None:
            from pressa.genai.constraints import json_schema_grammar

            cfg = dataclasses.replace(cfg, grammar=json_schema_grammar(json_schema))
        events: list[Event] = []

        def emit(i, text, finish, generated):
            if text or finish:
                events.append(Event(i, text, finish, generated))

        for _ in self.sequences([self.encode_prompt(p, chat) for p in prompts], cfg, emit):
            yield from events
            events.clear()
    def stream(self, prompt, chat: bool | None = None, **kw) -> Iterator[str]:
        """Text pieces of one prompt as they are produced."""
        for ev in self.stream_batch([prompt], chat=chat, **kw):
            if ev.text:
                yield ev.text

    def generate(self, prompt, chat: bool | None = None, **kw):
        """A string for a prompt, or a list of strings for a list of prompts (one batch)."""
        single = isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], dict))
        prompts = [prompt] if single else list(prompt)
        out = [""] * len(prompts)
        for ev in self.stream_batch(prompts, chat=chat, **kw):
            out[ev.row] += ev.text
        return out[0] if single else out

    def chat(self, messages: list[dict], **kw) -> str:
        return self.generate(messages, **kw)
