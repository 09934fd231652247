"""Reasoning content: `<think>...</think>` split from the answer, whole and streamed (hand-written
answers), and on the OpenAI API for a template whose generation prompt opens the block: the reasoning
is exactly what the model generated (the completions endpoint on the same rendered prompt)."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import KEY, running

THINK_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}<assistant><think>\n{% endif %}{# ends with </think> #}")


@pytest.mark.parametrize("text,inside,want", [
    ("<think>\nLet me see.\n2+2.</think>\n\nIt is 4.", False, ("Let me see.\n2+2.", "It is 4.")),
    ("Plain answer.", False, ("", "Plain answer.")),
    ("still thinking", True, ("still thinking", "")),
    ("short</think>Yes.", True, ("short", "Yes.")),
    ("<thi", False, ("", "<thi")),
])
def test_think_blocks_split_the_same_whole_and_streamed(text, inside, want):
    from pressa.genai.reasoning import ThinkSplit

    assert ThinkSplit(inside).split(text) == want
    for step in (1, 2, 5):
        s, parts = ThinkSplit(inside), []
        for i in range(0, len(text), step):
            parts += s.feed(text[i:i + step])
        parts += s.feed("", final=True)
        joined = {k: "".join(t for kind, t in parts if kind == k) for k in ("reasoning", "content")}
        assert (joined["reasoning"], joined["content"]) == want


def test_reasoning_content_on_the_chat_api(byte_llm, tmp_path):
    openai = pytest.importorskip("openai")
    from pressa.serve.models import load_models

    art = tmp_path / "thinker"
    shutil.copytree(byte_llm, art)
    cfg = json.loads((art / "tokenizer_config.json").read_text())
    (art / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": THINK_TEMPLATE}))
    models = load_models([{"name": "thinker", "path": str(art)}])
    with running(models, max_tokens=64) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        kw = dict(model="thinker", messages=[{"role": "user", "content": "2+2?"}], max_tokens=12, temperature=0.8,
                  seed=5)
        whole = client.chat.completions.create(**kw).choices[0].message
        plain = client.completions.create(model="thinker", prompt="<user>2+2?\n<assistant><think>\n", max_tokens=12,
                                          temperature=0.8, seed=5).choices[0].text
        assert whole.model_extra["reasoning_content"] == plain.lstrip("\n") and whole.content == ""
        streamed = {"reasoning_content": "", "content": ""}
        for chunk in client.chat.completions.create(**kw, stream=True):
            if chunk.choices:
                d = chunk.choices[0].delta
                streamed["content"] += d.content or ""
                streamed["reasoning_content"] += (d.model_extra or {}).get("reasoning_content") or ""
        assert streamed == {"reasoning_content": whole.model_extra["reasoning_content"], "content": ""}
