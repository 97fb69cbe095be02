"""Answers through a running proxy, read by the official `anthropic` SDK, streamed and not.

Each scenario scripts the fake OpenAI upstream, asks through `client.messages.create` (one JSON
message) and `client.messages.stream(...).get_final_message()` (the SDK's strict accumulator over
our SSE), and checks what the client got and what the upstream received.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import pytest
from e2e.support import (
    MODEL,
    ROUTE_HEADER,
    UPSTREAM_KEY,
    WEATHER_TOOL,
    ask,
    block_starts,
    stream_events,
    text_deltas,
    user,
)
from fakes import Call, Chunks, FakeOpenAI, Reasoning, Text, ToolCalls, Usage, chunk

pytestmark = pytest.mark.e2e

ARGUMENTS = {
    "city": "Trondheim",
    "units": "metric",
    "days": [1, 2, 3],
    "note": 'quotes " and unicode é ✓ survive splitting',
    "nested": {"deep": {"flag": True, "value": None}},
}


def test_text(client: anthropic.Anthropic, fake: FakeOpenAI, streamed: bool) -> None:
    fake.queue(Text("Hello from upstream."))
    message = ask(client, streamed)
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "Hello from upstream.")]
    assert message.stop_reason == "end_turn"
    assert message.model == MODEL
    assert message.id.startswith("msg_")
    sent = fake.last
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.body["model"] == "gpt-4.1"
    assert sent.body["messages"] == [{"role": "user", "content": "Hello"}]
    assert sent.body.get("stream", False) is streamed


def test_streamed_text_in_many_chunks(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    pieces = [f"word{i} " for i in range(200)]
    fake.queue(Text(chunks=pieces))
    events, message = stream_events(client, model=MODEL, max_tokens=256, messages=user("Count"))
    deltas = text_deltas(events)
    assert "".join(deltas) == "".join(pieces)
    assert len(deltas) > 1, "the proxy must stream, not buffer the answer"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "".join(pieces)  # type: ignore[union-attr]


def test_tool_call_with_arguments_in_30_fragments(client: anthropic.Anthropic, fake: FakeOpenAI,
                                                 streamed: bool) -> None:
    call = Call("get_weather", ARGUMENTS)
    fake.queue(ToolCalls([call], split=30))
    message = ask(client, streamed, tools=[WEATHER_TOOL], messages=user("Weather?"))
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use"
    assert (block.id, block.name, block.input) == (call.id, "get_weather", ARGUMENTS)
    tool = fake.last.body["tools"][0]
    assert tool == {"type": "function", "function": {"name": "get_weather",
                                                     "description": WEATHER_TOOL["description"],
                                                     "parameters": WEATHER_TOOL["input_schema"]}}


def test_two_parallel_tool_calls(client: anthropic.Anthropic, fake: FakeOpenAI, streamed: bool) -> None:
    oslo, bergen = Call("get_weather", {"city": "Oslo"}), Call("get_weather", {"city": "Bergen"})
    fake.queue(ToolCalls([oslo, bergen], split=4))
    message = ask(client, streamed, tools=[WEATHER_TOOL], messages=user("Oslo and Bergen?"))
    assert [(b.type, b.id, b.input) for b in message.content if b.type == "tool_use"] == [
        ("tool_use", oslo.id, {"city": "Oslo"}), ("tool_use", bergen.id, {"city": "Bergen"})]
    assert len(message.content) == 2
    assert message.stop_reason == "tool_use"


def test_text_then_tool_then_text_keeps_order(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    call = Call("get_weather", {"city": "Oslo"})
    head = {"index": 0, "id": call.id, "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}
    fake.queue(Chunks([
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me check. "}),
        chunk({"tool_calls": [head]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        chunk({"content": "Checking now."}),
        chunk({}, "tool_calls"),
    ]))
    events, message = stream_events(client, model=MODEL, max_tokens=256, tools=[WEATHER_TOOL],
                                    messages=user("Weather?"))
    assert block_starts(events) == [(0, "text"), (1, "tool_use"), (2, "text")]
    assert [b.type for b in message.content] == ["text", "tool_use", "text"]
    assert message.content[0].text == "Let me check. "  # type: ignore[union-attr]
    assert message.content[1].input == {"city": "Oslo"}  # type: ignore[union-attr]
    assert message.content[2].text == "Checking now."  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"


def test_reasoning_becomes_a_signed_thinking_block(client: anthropic.Anthropic, fake: FakeOpenAI,
                                                   streamed: bool) -> None:
    fake.queue(Reasoning(chunks=["First, ", "think."], then=Text(chunks=["The ", "answer."])))
    message = ask(client, streamed)
    assert [b.type for b in message.content] == ["thinking", "text"]
    thinking, text = message.content
    assert thinking.thinking == "First, think."  # type: ignore[union-attr]
    assert thinking.signature.startswith("ccpx1.")  # type: ignore[union-attr]
    assert len(thinking.signature) > len("ccpx1.")  # type: ignore[union-attr]
    assert text.text == "The answer."  # type: ignore[union-attr]


def test_system_messages_inside_messages_stay_in_place(client: anthropic.Anthropic, fake: FakeOpenAI,
                                                       streamed: bool) -> None:
    """Claude Code 2.1 sends `role: system` messages in messages[]; the SDK types do not allow them."""
    fake.queue(Text("ok"))
    messages: Any = [
        {"role": "user", "content": "first"},
        {"role": "system",
         "content": [{"type": "text", "text": "env: linux", "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": "noted"},
        {"role": "system", "content": "plain system text"},
        {"role": "user", "content": "second"},
    ]
    ask(client, streamed, system="You are terse.", messages=messages)
    assert fake.last.body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first"},
        {"role": "system", "content": "env: linux"},
        {"role": "assistant", "content": "noted"},
        {"role": "system", "content": "plain system text"},
        {"role": "user", "content": "second"},
    ]


def test_streamed_usage_reports_upstream_counts(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    fake.queue(Text("counted", usage=Usage(prompt=100, completion=7, cached=40)))
    with client.messages.stream(model=MODEL, max_tokens=256, messages=user("Count")) as stream:
        deltas = [event.usage for event in stream if event.type == "message_delta"]
        message = stream.get_final_message()
    [usage] = deltas
    assert usage.output_tokens == 7
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (60, 40)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (60, 7)
    assert message.usage.cache_read_input_tokens == 40
    assert fake.last.body["stream_options"] == {"include_usage": True}


def test_whole_usage_reports_upstream_counts(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    fake.queue(Text("counted", usage=Usage(prompt=100, completion=7, cached=40)))
    usage = client.messages.create(model=MODEL, max_tokens=256, messages=user("Count")).usage
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens) == (60, 7, 40)


def test_long_tool_names_are_shortened_upstream_and_restored(client: anthropic.Anthropic, fake: FakeOpenAI,
                                                             streamed: bool) -> None:
    long_name = "mcp__claude_ai_some_remote_workspace_server__" + "search_documents_by_semantic_query"
    assert len(long_name) > 64
    tool: Any = {**WEATHER_TOOL, "name": long_name}

    def reply(body: dict[str, Any]) -> ToolCalls:
        upstream_name = body["tools"][0]["function"]["name"]
        return ToolCalls([Call(upstream_name, {"query": "roadmap"})], split=3)

    fake.responder = reply
    message = ask(client, streamed, tools=[tool, WEATHER_TOOL], messages=user("Search"))
    sent = [t["function"]["name"] for t in fake.last.body["tools"]]
    assert len(sent[0]) <= 64 and sent[0] != long_name
    assert sent[1] == "get_weather"
    [block] = message.content
    assert block.type == "tool_use"
    assert (block.name, block.input) == (long_name, {"query": "roadmap"})


def test_long_tool_name_in_history_is_shortened_the_same_way(client: anthropic.Anthropic,
                                                             fake: FakeOpenAI) -> None:
    long_name = "mcp__" + "x" * 70
    fake.queue(Text("done"))
    messages: Any = [
        {"role": "user", "content": "go"},
        {"role": "assistant",
         "content": [{"type": "tool_use", "id": "toolu_1", "name": long_name, "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"}]},
    ]
    tool: Any = {**WEATHER_TOOL, "name": long_name}
    client.messages.create(model=MODEL, max_tokens=64, tools=[tool], messages=messages)
    body = fake.last.body
    assert body["messages"][1]["tool_calls"][0]["function"]["name"] == body["tools"][0]["function"]["name"]


def test_route_header_on_every_answer(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    fake.default = Text("routed")
    whole = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=user("Hi"))
    assert whole.headers["x-ccproxy-route"] == ROUTE_HEADER
    assert whole.headers["request-id"].startswith("req_")
    assert whole.parse().content[0].text == "routed"  # type: ignore[union-attr]
    streamed = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=user("Hi"),
                                                        stream=True)
    assert streamed.headers["x-ccproxy-route"] == ROUTE_HEADER
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert [event.type for event in streamed.parse()][-1] == "message_stop"
    with client.messages.with_streaming_response.create(model=MODEL, max_tokens=64,
                                                        messages=user("Hi")) as response:
        assert response.headers["x-ccproxy-route"] == ROUTE_HEADER
        assert json.loads(response.read())["content"][0]["text"] == "routed"


PIXEL_PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
             "AAAABJRU5ErkJggg==")


def test_rich_conversation_is_a_valid_openai_request(client: anthropic.Anthropic, fake: FakeOpenAI,
                                                     streamed: bool) -> None:
    """Every common request feature at once; the fake rejects the body if any part leaves the SDK types."""
    fake.queue(Text("All clear."))
    messages: Any = [
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this picture, and what is the weather?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL_PNG}},
            {"type": "document", "title": "forecast.txt",
             "source": {"type": "text", "media_type": "text/plain", "data": "Forecast: snow"}},
        ]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking two cities."},
            {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Bergen"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": "-3 C",
             "cache_control": {"type": "ephemeral"}},
            {"type": "tool_result", "tool_use_id": "toolu_b", "is_error": True,
             "content": [{"type": "text", "text": "station offline"}]},
            {"type": "text", "text": "Summarize."},
        ]},
    ]
    message = ask(client, streamed, messages=messages, tools=[WEATHER_TOOL],
                  tool_choice={"type": "auto"}, stop_sequences=["END"],
                  extra_body={"temperature": 0.2},  # this SDK version no longer has the parameter
                  system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
                  metadata={"user_id": "user-42"})
    assert message.content[0].text == "All clear."  # type: ignore[union-attr]
    sent = fake.last.body
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert sent["messages"][1]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert [c["id"] for c in sent["messages"][2]["tool_calls"]] == ["toolu_a", "toolu_b"]
    assert sent["messages"][3] == {"role": "tool", "tool_call_id": "toolu_a", "content": "-3 C"}
    assert sent["messages"][4]["content"] == "Error: station offline"
    assert (sent["temperature"], sent["tool_choice"]) == (0.2, "auto")
    assert "stop" not in sent, "stop sequences stay with the engine (emulate_stop_sequences)"


def test_concurrent_streams_do_not_mix(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    fake.responder = lambda body: Text(chunks=["echo: ", body["messages"][-1]["content"]],
                                       delay_between_chunks=0.01)

    def one(i: int) -> str:
        with client.messages.stream(model=MODEL, max_tokens=64, messages=user(f"request {i}")) as stream:
            return "".join(stream.text_stream)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, range(16)))
    assert answers == [f"echo: request {i}" for i in range(16)]
