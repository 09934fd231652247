"""Tokenizer and chat template of an artifact folder (tokenizers + jinja2, no transformers)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from pressa.artifact import read_json
from pressa.errors import BadArgument, CorruptModel, first_line


def _token_str(v) -> str | None:
    if isinstance(v, dict):
        return v.get("content")
    return v


def _byte_level_table() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte: printable Latin-1 bytes stand for
    themselves, the others are mapped in order to code points from 256 up."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


BYTE_OF_CHAR = _byte_level_table()


class TextTokenizer:
    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise CorruptModel(f"{folder}: no tokenizer.json; the artifact needs its tokenizer files")
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as err:             # the tokenizers library's own parse errors
            raise CorruptModel(f"{path}: not a readable tokenizer ({first_line(err, 160)}); rebuild the "
                               "artifact or re-download the file") from None
        cfg_path = folder / "tokenizer_config.json"
        self.config = read_json(cfg_path) if cfg_path.is_file() else {}
        template = self.config.get("chat_template")
        if isinstance(template, list):       # named templates: take "default"
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        self.chat_template: str | None = template
        self.bos_token = _token_str(self.config.get("bos_token"))
        self.eos_token = _token_str(self.config.get("eos_token"))
        self._compiled = None
        self._byte_level: bool | None = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token: int) -> bytes:
        """The bytes a single token stands for (a byte-level BPE token may hold part of a character)."""
        piece = self.tok.id_to_token(token) or ""
        if self._byte_level is None:
            decoder = json.loads(self.tok.to_str()).get("decoder") or {}
            self._byte_level = decoder.get("type") == "ByteLevel"
        if self._byte_level and all(c in BYTE_OF_CHAR for c in piece):
            return bytes(BYTE_OF_CHAR[c] for c in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):        # SentencePiece byte
            return bytes([int(piece[3:5], 16)])
        return self.decode([token], skip_special_tokens=False).encode()

    @property
    def special_tokens(self) -> dict[str, int]:
        """The special added tokens (text -> id), which decoding skips by default."""
        if not hasattr(self, "_special"):
            self._special = {t.content: i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}
        return self._special

    def token_id(self, token: str | None) -> int | None:
        return self.tok.token_to_id(token) if token else None

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None) -> str:
        """`tools`: OpenAI's tool list ({"type": "function", "function": {...}}), for templates that
        render them (genai/tools.py)."""
        if not self.chat_template:
            raise BadArgument("this model has no chat template; use --no-chat")
        if self._compiled is None:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])

            def raise_exception(msg):
                raise TemplateError(msg)

            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
                x, indent=indent, ensure_ascii=ensure_ascii)
            self._compiled = env.from_string(self.chat_template)
        try:
            return self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token or "", eos_token=self.eos_token or "",
                                         tools=tools)
        except Exception as err:
            raise BadArgument(f"the chat template failed: {err}") from None
