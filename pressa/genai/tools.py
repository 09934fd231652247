"""Tool (function) calling, as OpenAI's chat API offers it: the model's chat template renders the
tools and the tool results; the calls the model writes are parsed back into `tool_calls`; a required
or named call (`tool_choice`) is forced token by token by a grammar (genai/constraints.py).

How a model writes a call depends on its family; the format is read off the chat template:

- hermes (Qwen2.5, Qwen3, Hermes, SmolLM3): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`,
  one block per call. Also the format for templates that know no tools: pressa then describes the
  tools in a system message and writes earlier calls and results as text.
- llama3 (Llama 3.1+ JSON tool calling): `{"name": ..., "parameters": {...}}`, calls joined by "; ",
  optionally after `<|python_tag|>`.
- mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from pressa.genai.constraints import JSON_LAYOUT


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    name: str
    arguments: str                  # JSON text, as the model wrote it
    id: str = field(default_factory=new_call_id)

    def openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ToolFormat:
    name: str
    start: str                      # what opens the calls in the model's output ("": a JSON object first)
    args_key: str                   # "arguments" or "parameters"
    open: str = ""                  # around each call
    close: str = ""
    joiner: str = "\n"              # between calls
    suffix: str = ""                # after the last call

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """(the text before the calls, the calls); no calls when the output has none that parse."""
        at, calls, _ = self.scan(text)
        return (text[:at].rstrip(), calls) if calls else (text, [])

    def scan(self, text: str) -> tuple[int, list[ToolCall], int]:
        """(where the calls start or -1, the complete calls, where the next call would start)."""
        at = text.find(self.start) if self.start else _first_object(text)
        if at < 0:
            return -1, [], len(text)
        pos = at + len(self.start)
        if text.startswith(PYTHON_TAG, pos):
            pos += len(PYTHON_TAG)
        calls, dec = [], json.JSONDecoder()
        while True:
            pos = _past(text, pos, (self.open, "[", self.joiner.strip()))
            try:
                obj, end = dec.raw_decode(text, pos)
            except ValueError:
                break
            if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
                break
            calls.append(ToolCall(obj["name"], _raw_value(text, pos, end, self.args_key, obj)))
            pos = _past(text, end, (self.close,))
        return at, calls, pos

    def partial(self, text: str, pos: int) -> tuple[str, str] | None:
        """(name, the arguments' JSON text so far) of a call being written at `pos`, once its name is
        complete and its arguments have begun; None otherwise."""
        head = re.match(r'\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"' + self.args_key + r'"\s*:\s*', text[pos:])
        if head is None:
            return None
        start = pos + head.end()
        return json.loads(head.group(1)), text[start:_value_end(text, start)]

    def lark(self, tools: list[dict], parallel: bool, special=lambda s: None) -> str:
        """A grammar whose every sentence is one call (or, with `parallel`, one or more) of these tools.
        `special(text)`: the id of a special token spelled `text` (such a marker is that token)."""
        options = [{"type": "object", "properties": {"name": {"const": t["name"]},
                                                     self.args_key: t.get("parameters") or {"type": "object"}},
                    "required": ["name", self.args_key], "additionalProperties": False} for t in tools]
        schema = json.dumps({"anyOf": options, "x-guidance": JSON_LAYOUT})

        def lit(text):
            token = special(text)
            return f"<[{token}]>" if token is not None else json.dumps(text) if text else ""

        prefix = "" if self.start == self.open.strip() else lit(self.start) + (' "["' if self.suffix == "]" else "")
        call = " ".join(x for x in (lit(self.open), "obj", lit(self.close)) if x)
        more = f" ({lit(self.joiner)} call)*" if parallel else ""
        return (f"start: {prefix} call{more} {lit(self.suffix)}\ncall: {call}\nobj: %json {schema}\n")


PYTHON_TAG = "<|python_tag|>"


def _past(text: str, pos: int, markers: tuple[str, ...]) -> int:
    """Past whitespace and, once, the first of `markers` found there."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    for m in markers:
        m = m.strip()
        if m and text.startswith(m, pos):
            pos += len(m)
            break
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _value_end(text: str, start: int) -> int:
    """Where the JSON object or array that starts at `start` ends (the end of `text` while it is open)."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            escaped, in_string = (not escaped and c == "\\"), in_string and (escaped or c != '"')
            continue
        if c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def _first_object(text: str) -> int:
    """llama3: calls are the whole answer, a JSON object first (after an optional python tag)."""
    stripped = text.lstrip()
    if stripped.startswith(PYTHON_TAG):
        return text.find(PYTHON_TAG)
    return len(text) - len(stripped) if stripped.startswith("{") else -1


def _raw_value(text: str, start: int, end: int, key: str, obj: dict) -> str:
    """The JSON text of obj[key] as written between start and end (re-serialized when not found)."""
    if key not in obj:
        return "{}"
    dec, pos = json.JSONDecoder(), text.find(json.dumps(key), start, end)
    if pos >= 0:
        colon = text.find(":", pos + len(key) + 2, end)
        at = colon + 1
        while at < end and text[at].isspace():
            at += 1
        try:
            value, stop = dec.raw_decode(text, at)
            if value == obj[key]:
                return text[at:stop]
        except ValueError:
            pass
    return json.dumps(obj[key], ensure_ascii=False)


HERMES = ToolFormat("hermes", "<tool_call>", "arguments", "<tool_call>\n", "\n</tool_call>")
LLAMA3 = ToolFormat("llama3", "", "parameters", joiner="; ")
MISTRAL = ToolFormat("mistral", "[TOOL_CALLS]", "arguments", joiner=", ", suffix="]")
FORMATS = {f.name: f for f in (HERMES, LLAMA3, MISTRAL)}


def tool_format(chat_template: str | None) -> ToolFormat:
    t = chat_template or ""
    if "[TOOL_CALLS]" in t:
        return MISTRAL
    if "<tool_call>" in t:
        return HERMES
    if PYTHON_TAG in t or "ipython" in t:
        return LLAMA3
    return HERMES


def template_knows_tools(chat_template: str | None) -> bool:
    return bool(chat_template) and "tools" in chat_template


def messages_for_template(messages: list[dict], tools: list[dict] | None, knows_tools: bool) -> list[dict]:
    """OpenAI messages as a chat template reads them: tool-call arguments as objects (HF's convention).
    For a template that knows no tools: the tools described in a system message (hermes), earlier
    calls written out as text and tool results as user turns."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            calls = [{"type": "function", "id": c.get("id"),
                      "function": {"name": c["function"]["name"], "arguments": _as_object(c["function"]["arguments"])}}
                     for c in m["tool_calls"]]
            if knows_tools:
                m["tool_calls"] = calls
            else:
                text = "\n".join("<tool_call>\n" + json.dumps({"name": c["function"]["name"],
                                                                "arguments": c["function"]["arguments"]})
                                 + "\n</tool_call>" for c in calls)
                m = {"role": "assistant", "content": ((m.get("content") or "") + "\n" + text).strip()}
        elif m.get("role") == "tool" and not knows_tools:
            m = {"role": "user", "content": f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"}
        m["content"] = m.get("content") or ""
        out.append(m)
    if tools and not knows_tools:
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        note = ("You may call functions. The functions, as JSON schemas:\n<tools>\n" + listing + "\n</tools>\n"
                "To call one, answer with <tool_call>\n{\"name\": <function-name>, \"arguments\": <args-object>}"
                "\n</tool_call>")
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + note}
        else:
            out.insert(0, {"role": "system", "content": note})
    return out


def _as_object(arguments):
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


class ToolStream:
    """Streamed text of one choice with tools: text goes out as content until the format's start
    marker may have begun; from there the output is held, and calls go out as OpenAI streams them: a
    delta with the call's id and name once its name is written, then its arguments' JSON text in pieces
    as it is written."""

    def __init__(self, fmt: ToolFormat, most: int | None = None):
        """`most`: calls to pass on at most (1 without parallel_tool_calls, as ChatTools.message keeps)."""
        self.fmt, self.text, self.shown, self.most = fmt, "", 0, most
        self.calls: list[ToolCall] = []
        self.writing: tuple[str, str] | None = None      # (id, arguments sent) of the call being written

    def feed(self, piece: str, final: bool = False) -> list[dict]:
        """Deltas (OpenAI chat chunks' `delta`) for the text so far; `final` at the choice's end."""
        self.text += piece
        at, calls, rest = self.fmt.scan(self.text)
        if calls or not final:          # trailing whitespace waits: it may come before the calls
            stop = len(self.text[:at].rstrip()) if calls else len(self.text[:self._held_from()].rstrip())
        else:
            stop = len(self.text)
        out = []
        if stop > self.shown:
            out.append({"content": self.text[self.shown:stop]})
            self.shown = stop
        for c in calls[len(self.calls):self.most]:
            out += self._arguments(c.name, c.arguments)
            c.id, self.writing = self.writing[0], None
            self.calls.append(c)
        if not final and (calls or at >= 0) and (self.most is None or len(self.calls) < self.most):
            begun = self.fmt.partial(self.text, _past(self.text, rest, (self.fmt.open, "[", self.fmt.joiner.strip())))
            if begun:
                out += self._arguments(*begun)
        return out

    def _arguments(self, name: str, arguments: str) -> list[dict]:
        """Deltas that bring the call being written (announced first, with its id) to `arguments`."""
        index, out = len(self.calls), []
        if self.writing is None:
            self.writing = (new_call_id(), "")
            out.append({"tool_calls": [{"index": index, "id": self.writing[0], "type": "function",
                                        "function": {"name": name, "arguments": ""}}]})
        sent = self.writing[1]
        if len(arguments) > len(sent) and arguments.startswith(sent):
            out.append({"tool_calls": [{"index": index, "function": {"arguments": arguments[len(sent):]}}]})
            self.writing = (self.writing[0], arguments)
        return out

    def _held_from(self) -> int:
        """Where text that may open the calls starts (the end when none may)."""
        if not self.fmt.start:                 # llama3: calls are the whole answer
            head = self.text.lstrip()
            maybe = not head or head.startswith(("{", PYTHON_TAG)) or PYTHON_TAG.startswith(head)
            return self.shown if maybe else len(self.text)
        at = self.text.find(self.fmt.start)
        if at >= 0:
            return at
        for k in range(len(self.fmt.start) - 1, 0, -1):       # the marker's first characters, at the end
            if self.text.endswith(self.fmt.start[:k]):
                return len(self.text) - k
        return len(self.text)
