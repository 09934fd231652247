"""Tool calling on the OpenAI API: each family's call format parsed from hand-written answers, streamed
deltas (arguments in pieces as they are written) that reassemble into the whole answer's calls, and,
through the official openai client on a tiny random model, forced calls that always parse and validate
against the tool's parameters, a named function, and a round trip whose tool result reaches the prompt
as the chat template renders it."""

from __future__ import annotations

import json

import pytest

from conftest import TOOLS_TEMPLATE
from helpers import KEY

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                                    "unit": {"enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "integer", "minimum": -12,
                                                                                "maximum": 14}},
                                       "required": ["zone"], "additionalProperties": False}}}


@pytest.mark.parametrize("fmt,text,calls", [
    ("hermes", 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}\n'
               '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone":1}}\n</tool_call>',
     [("get_weather", '{"city": "Oslo", "unit": "c"}'), ("get_time", '{"zone":1}')]),
    ("llama3", '<|python_tag|>{"name": "get_time", "parameters": {"zone": -3}}; {"name": "x", "parameters": {}}',
     [("get_time", '{"zone": -3}'), ("x", "{}")]),
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Rome", "unit": "f"}}]',
     [("get_weather", '{"city": "Rome", "unit": "f"}')]),
    ("hermes", "No call here, just <tool_call> talk {", []),
])
def test_each_family_format_parses_and_streams_the_same_calls(fmt, text, calls):
    from pressa.genai.tools import FORMATS, ToolStream

    content, got = FORMATS[fmt].parse(text)
    assert [(c.name, c.arguments) for c in got] == calls
    assert all(json.loads(c.arguments) is not None for c in got)
    stream, deltas = ToolStream(FORMATS[fmt]), []
    for i in range(0, len(text), 3):                       # three characters at a time, as tokens arrive
        deltas += stream.feed(text[i:i + 3])
    deltas += stream.feed("", final=True)
    assert "".join(d.get("content", "") for d in deltas) == (content if got else text)
    names = [d["tool_calls"][0]["function"]["name"] for d in deltas if "name" in d.get("tool_calls", [{}])[0].get(
        "function", {})]
    args = {}
    for d in deltas:
        for c in d.get("tool_calls", []):
            args[c["index"]] = args.get(c["index"], "") + c["function"]["arguments"]
    assert list(zip(names, [args[i] for i in sorted(args)])) == calls
    pieces = [c for d in deltas for c in d.get("tool_calls", []) if c["index"] == 0 and c["function"]["arguments"]]
    assert len(pieces) >= (len(calls[0][1]) // 3 if calls else 0)      # the arguments stream as they are written


def test_the_family_is_read_off_the_chat_template():
    from pressa.genai.tools import tool_format

    assert tool_format(TOOLS_TEMPLATE).name == "hermes"
    assert tool_format("{{ '[TOOL_CALLS]' }}").name == "mistral"
    assert tool_format("{% if m.role == 'ipython' %}<|python_tag|>{% endif %}").name == "llama3"
    assert tool_format(None).name == "hermes"


def _client(byte_server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=byte_server["url"] + "/v1", api_key=KEY, max_retries=0)


def test_required_tool_choice_always_yields_a_valid_call(byte_server):
    jsonschema = pytest.importorskip("jsonschema")
    client = _client(byte_server)
    msgs = [{"role": "user", "content": "Weather or time?"}]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}
    seen = set()
    for seed in range(8):
        r = client.chat.completions.create(model="bytes", messages=msgs, tools=[WEATHER, CLOCK], tool_choice="required",
                                           temperature=1.0, seed=seed, max_tokens=300, parallel_tool_calls=False)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        call = choice.message.tool_calls[0]
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
        seen.add(call.function.name)
    named = client.chat.completions.create(model="bytes", messages=msgs, tools=[WEATHER, CLOCK], temperature=1.0,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}},
                                           seed=3, max_tokens=300)
    assert [c.function.name for c in named.choices[0].message.tool_calls] == ["get_time"]


def test_streamed_tool_call_deltas_reassemble_into_the_whole_call(byte_server):
    client = _client(byte_server)
    kw = dict(model="bytes", messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER],
              tool_choice="required", temperature=0.9, seed=11, max_tokens=300)
    whole = client.chat.completions.create(**kw).choices[0].message.tool_calls
    names, args, finish = {}, {}, None
    for chunk in client.chat.completions.create(**kw, stream=True):
        for d in chunk.choices[0].delta.tool_calls or []:
            if d.function.name:
                names[d.index] = d.function.name
            args[d.index] = args.get(d.index, "") + (d.function.arguments or "")
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert [(names[i], args[i]) for i in sorted(names)] == [(c.function.name, c.function.arguments) for c in whole]


def test_a_tool_round_trip_renders_the_result_into_the_next_prompt(byte_server, byte_llm):
    """The call goes back as the assistant's turn and the result as a tool turn; the next prompt is the
    chat template rendered by jinja2 itself over those messages (byte tokens: its length in bytes)."""
    import jinja2

    client = _client(byte_server)
    msgs = [{"role": "user", "content": "Weather in Oslo?"}]
    first = client.chat.completions.create(model="bytes", messages=msgs, tools=[WEATHER], tool_choice="required",
                                           temperature=0, max_tokens=300)
    call = first.choices[0].message.tool_calls[0]
    msgs += [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
             {"role": "tool", "tool_call_id": call.id, "content": '{"temp": -3, "sky": "snow"}'}]
    second = client.chat.completions.create(model="bytes", messages=msgs, tools=[WEATHER], temperature=0,
                                            max_tokens=5)
    shown = [dict(m) for m in msgs]
    shown[1] = {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": call.function.name, "arguments": json.loads(call.function.arguments)}}]}
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)          # as transformers renders templates
    env.filters["tojson"] = lambda x: json.dumps(x, ensure_ascii=False)
    text = env.from_string(TOOLS_TEMPLATE).render(messages=shown, tools=[WEATHER], add_generation_prompt=True)
    assert '{"temp": -3, "sky": "snow"}' in text
    assert second.usage.prompt_tokens == len(text.encode())
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_bad_tool_requests_are_400s(byte_server):
    openai = pytest.importorskip("openai")
    client = _client(byte_server)
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError, match="not one of the tools"):
        client.chat.completions.create(model="bytes", messages=msgs, tools=[WEATHER],
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError, match="cannot both hold"):
        client.chat.completions.create(model="bytes", messages=msgs, tools=[WEATHER], tool_choice="required",
                                       response_format={"type": "json_object"})
    with pytest.raises(openai.BadRequestError, match="tool_choice needs tools"):
        client.chat.completions.create(model="bytes", messages=msgs, tool_choice="required")


def test_without_parallel_tool_calls_the_stream_passes_on_one_call_as_the_whole_answer_does():
    from pressa.genai.tools import HERMES, ToolStream

    text = ('<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
            '<tool_call>\n{"name": "b", "arguments": {"y": 2}}\n</tool_call>')
    stream, deltas = ToolStream(HERMES, most=1), []
    for i in range(0, len(text), 4):
        deltas += stream.feed(text[i:i + 4])
    deltas += stream.feed("", final=True)
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert {c["index"] for c in calls} == {0} and [c.name for c in stream.calls] == ["a"]
    assert "".join(c["function"]["arguments"] for c in calls) == '{"x": 1}'
