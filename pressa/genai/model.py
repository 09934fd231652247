"""The Python API: `pressa.load(path)` -> Model with generate(), stream() and chat()."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pressa.artifact import read_json
from pressa.capture.config import token_ids
from pressa.errors import BadArgument
from pressa.genai.decoder_session import DecoderSession
from pressa.genai.sampling import SamplingConfig, apply_repetition_penalty, choose
from pressa.genai.tokenizer import TextTokenizer


@dataclass
class Event:
    """A piece of streamed text for one row of a batch; `finish` is set on its last event."""
    row: int
    text: str
    finish: str | None = None       # "stop" (EOS or stop string) | "length"
    generated: int = 0              # on a row's last event: the tokens it generated


class _Row:
    """Incremental detokenization of one sequence, holding back text that may still change:
    an incomplete UTF-8 character, or the start of a stop string."""

    def __init__(self, tok: TextTokenizer, stops: list[str]):
        self.tok, self.stops = tok, stops
        self.ids: list[int] = []
        self.count = 0                  # tokens generated, an end-of-sequence token included
        self.emitted = 0
        self.text = ""
        self.done: str | None = None
        self.hold = max((len(s) for s in stops), default=1) - 1

    def take(self, token: int, eos_ids: set[int], ignore_eos: bool) -> str:
        """Feed one generated token; returns the text now safe to show. Sets `done` to "stop" on an
        end-of-sequence token or a stop string."""
        self.count += 1
        if not ignore_eos and token in eos_ids:
            self.done = "stop"
            return self.flush()
        return self.push(token)

    def push(self, token: int) -> str:
        self.ids.append(token)
        self.text = self.tok.decode(self.ids)
        for s in self.stops:
            k = self.text.find(s, max(0, self.emitted - len(s)))
            if k >= 0:
                self.text = self.text[:k]
                self.done = "stop"
                return self.flush()
        end = len(self.text) - self.hold
        if self.text.endswith("\ufffd"):
            end = min(end, len(self.text.rstrip("\ufffd")))
        if end > self.emitted:
            out, self.emitted = self.text[self.emitted:end], end
            return out
        return ""

    def flush(self) -> str:
        """The text not shown yet, at the end of the sequence. A character whose bytes were cut off by
        the end (U+FFFD from an incomplete UTF-8 sequence) is dropped, not shown as U+FFFD."""
        self.text = self.text.rstrip("\ufffd")
        out, self.emitted = self.text[self.emitted:], len(self.text)
        return out


class Model:
    def __init__(self, folder: Path, device: str = "cpu", threads: int | None = None, hint: str = "latency"):
        self.folder = Path(folder)
        self.session = DecoderSession(self.folder, device, threads, hint)
        self.tokenizer = TextTokenizer(self.folder)
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

    @property
    def has_chat_template(self) -> bool:
        return bool(self.tokenizer.chat_template)

    # -- prompts ----------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | list[dict], chat: bool | None = None) -> list[int]:
        """A string (wrapped in the chat template when `chat`, default: when the model has one)
        or a list of chat messages."""
        if isinstance(prompt, list):
            return self.tokenizer.encode(self.tokenizer.apply_chat_template(prompt), add_special_tokens=False)
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

    # -- generation -------------------------------------------------------------------------
    def generate_ids(self, prompts: list[list[int]], cfg: SamplingConfig) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (tokens [B], active mask [B]) per step; rows stop at EOS unless ignore_eos."""
        if cfg.max_new_tokens < 1:
            raise BadArgument("max new tokens must be at least 1")
        rng = np.random.default_rng(cfg.seed)
        capacity = max(len(p) for p in prompts) + cfg.max_new_tokens
        logits, _ = self.session.prefill(prompts, capacity)
        seen = [np.asarray(p, np.int64) for p in prompts]
        active = np.ones(len(prompts), bool)
        eos = np.array(sorted(self.eos_ids), np.int64)
        for step in range(cfg.max_new_tokens):
            logits = np.array(logits, copy=True) if cfg.repetition_penalty != 1.0 else logits
            apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
            tokens = choose(logits, cfg, rng).astype(np.int64)
            yield tokens, active.copy()
            if cfg.repetition_penalty != 1.0:
                seen = [np.append(s, t) for s, t in zip(seen, tokens)]
            if not cfg.ignore_eos:
                active &= ~np.isin(tokens, eos)
            if not active.any() or step == cfg.max_new_tokens - 1:
                return
            logits = self.session.step(tokens)

    def stream_batch(self, prompts: list, cfg: SamplingConfig | None = None, chat: bool | None = None,
                     **kw) -> Iterator[Event]:
        cfg = cfg or SamplingConfig(**kw)
        ids = [self.encode_prompt(p, chat) for p in prompts]
        rows = [_Row(self.tokenizer, cfg.stop) for _ in ids]
        gen = self.generate_ids(ids, cfg)
        for tokens, active in gen:
            for b, row in enumerate(rows):
                if row.done or not active[b]:
                    continue
                piece = row.take(int(tokens[b]), self.eos_ids, cfg.ignore_eos)
                if row.done:
                    yield Event(b, piece, row.done, row.count)
                elif piece:
                    yield Event(b, piece)
            if all(r.done for r in rows):
                gen.close()
                return
        for b, row in enumerate(rows):
            if not row.done:
                row.done = "length"
                yield Event(b, row.flush(), "length", row.count)

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
