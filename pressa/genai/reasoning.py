"""Reasoning content: models that think in `<think>...</think>` before answering (Qwen3, DeepSeek-R1
distills, SmolLM3) get the thinking split from the answer, as `reasoning_content` beside `content`
on the OpenAI API (the field vLLM and OpenVINO Model Server use). A template whose generation prompt
already opens the block (`<think>\\n`) starts the answer inside it."""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def thinks(chat_template: str | None) -> bool:
    return bool(chat_template) and CLOSE in chat_template


class ThinkSplit:
    """Text pieces in, ("reasoning" | "content", text) pieces out, holding back only what may still be
    the start of a marker."""

    def __init__(self, inside: bool = False):
        self.inside, self.decided, self.buf = inside, inside, ""
        self.trim = inside              # newlines right after a marker are no part of either text

    def feed(self, piece: str, final: bool = False) -> list[tuple[str, str]]:
        self.buf += piece
        out: list[tuple[str, str]] = []
        while self.buf:
            if self.trim:
                self.buf = self.buf.lstrip("\n")
                self.trim = not self.buf
                if not self.buf:
                    break
            if self.inside:
                k = self.buf.find(CLOSE)
                if k < 0:
                    keep = 0 if final else _partial(self.buf, CLOSE)
                    out.append(("reasoning", self.buf[:len(self.buf) - keep]))
                    self.buf = self.buf[len(self.buf) - keep:]
                    break
                out.append(("reasoning", self.buf[:k]))
                self.buf, self.inside, self.trim = self.buf[k + len(CLOSE):], False, True
            elif not self.decided:
                head = self.buf.lstrip()
                if head.startswith(OPEN):
                    self.buf, self.inside, self.decided, self.trim = head[len(OPEN):], True, True, True
                elif OPEN.startswith(head) and not final:
                    break
                else:
                    self.decided = True
            else:
                out.append(("content", self.buf))
                self.buf = ""
        return [(kind, text) for kind, text in out if text]

    def split(self, text: str) -> tuple[str, str]:
        """(reasoning, content) of a whole answer."""
        parts = self.feed(text, final=True)
        return ("".join(t for k, t in parts if k == "reasoning"), "".join(t for k, t in parts if k == "content"))


def _partial(text: str, marker: str) -> int:
    """How many characters at the end of `text` may begin `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0
