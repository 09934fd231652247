"""A chat request's tools on the OpenAI API: the prompt with the tools and earlier calls and results
rendered, the grammar that forces a required or named call, and the answer's calls parsed back into
`tool_calls` (whole, or streamed as deltas). The formats are in pressa/genai/tools.py."""

from __future__ import annotations

from pressa.errors import BadArgument
from pressa.genai.tools import PYTHON_TAG, ToolStream, messages_for_template, template_knows_tools, tool_format
from pressa.serve.models import RequestError
from pressa.serve.schemas import ChatRequest, NamedToolChoice


class ChatTools:
    def __init__(self, req: ChatRequest, model):
        tok = model.tokenizer
        self.model, self.fmt = model, tool_format(tok.chat_template)
        self.knows = template_knows_tools(tok.chat_template)
        self.specs = [t.function.model_dump(exclude_unset=True) for t in req.tools]     # as the client sent them
        self.listed = [{"type": "function", "function": s} for s in self.specs]
        self.parallel = req.parallel_tool_calls
        choice = req.tool_choice
        if isinstance(choice, NamedToolChoice):
            forced = [s for s in self.specs if s["name"] == choice.function["name"]]
        else:
            forced = self.specs if choice == "required" else []
        self.grammar = self._grammar(forced, self.parallel and choice == "required") if forced else None
        self.skip_special = not any(m in tok.special_tokens for m in (self.fmt.start, PYTHON_TAG))

    def _grammar(self, forced: list[dict], parallel: bool) -> str:
        from pressa.genai.constraints import lark_grammar

        try:
            return lark_grammar(self.fmt.lark(forced, parallel, self.model.tokenizer.special_tokens.get))
        except BadArgument as err:
            raise RequestError(f"tool_choice: {err}") from None

    def encode(self, messages: list[dict]) -> list[int]:
        """The prompt's token ids: the template renders the tools where it knows them; otherwise they
        are described in a system message (genai/tools.py)."""
        msgs = messages_for_template(messages, self.listed, self.knows)
        return self.model.encode_prompt(msgs, tools=self.listed if self.knows else None)

    def message(self, text: str, finish: str) -> tuple[dict, str]:
        """(the assistant message, finish_reason) of a whole answer."""
        content, calls = self.fmt.parse(text)
        if not calls:
            return {"role": "assistant", "content": text}, finish
        calls = calls if self.parallel else calls[:1]
        return ({"role": "assistant", "content": content or None, "tool_calls": [c.openai() for c in calls]},
                "tool_calls")

    def stream(self) -> ToolStream:
        return ToolStream(self.fmt, None if self.parallel else 1)
