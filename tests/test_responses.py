"""The Responses inbound without a server: its rules on real Codex requests, its request checks, and
its answers (whole and streamed) checked against the openai SDK's models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai.types.responses import Response
from test_fake_responses import EVENT_TYPES

from ccproxy_engine._chat import load_inbound
from ccproxy_engine._errors import RequestError
from ccproxy_engine._functions import encode_signature
from ccproxy_engine._responses import INBOUND_RULES, EventWriter, ResponsesInbound, response_object
from ccproxy_engine._types import SSEEvent

CODEX = Path(__file__).parent / "fixtures" / "codex" / "0.171.0-exec-write-hello"
SIGNATURE = encode_signature("gemini", "gemini-2.5-flash", {"thoughtSignature": "c2ln"})
NAMESPACE: Any = {"type": "namespace", "name": "agents", "description": "Sub-agents",
                  "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object"}}]}


@pytest.fixture(scope="module")
def inbound() -> ResponsesInbound:
    return ResponsesInbound()


def build(inbound: ResponsesInbound, **body: Any) -> dict[str, Any]:
    return inbound.request({"model": "m", "input": "hi", **body}, {})


def test_inbound_rules_compile_without_diagnostics() -> None:
    assert load_inbound(INBOUND_RULES) is not None


@pytest.mark.parametrize("name", ["001-request.json", "002-request.json"])
def test_codex_requests(inbound: ResponsesInbound, name: str) -> None:
    """Codex 0.171: two developer messages are the system prompt, the namespace's functions are
    flattened, web_search is dropped, the exec_command call and its output pair up."""
    body = json.loads((CODEX / name).read_text(encoding="utf-8"))
    sent = inbound.request(body, {})
    assert sent["system"].startswith("You are a coding agent running in the Codex CLI")
    assert "<skills_instructions>" in sent["system"]
    names = [tool["name"] for tool in sent["tools"]]
    assert "exec_command" in names and "multi_agent_v1__spawn_agent" in names
    assert len(names) == len(set(names)) and not any("web_search" in n for n in names)
    first = sent["messages"][0]
    assert first["role"] == "user" and "<environment_context>" in first["content"][0]["text"]
    if name.startswith("002"):
        assert sent["messages"][-2] == {"role": "assistant", "content": [{
            "type": "tool_use", "id": "call_R1", "name": "exec_command",
            "input": {"cmd": "printf hi > hello.txt && echo ok"}}]}
        assert sent["messages"][-1]["content"][0]["tool_use_id"] == "call_R1"
    assert sent["stream"] is True and "max_tokens" not in sent


def test_reasoning_items_with_encrypted_content_become_thinking_blocks(inbound: ResponsesInbound) -> None:
    items = [{"role": "user", "content": "q"},
             {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Plan."}],
              "encrypted_content": SIGNATURE},
             {"type": "reasoning", "id": "rs_2", "summary": []},
             {"type": "function_call", "call_id": "c1", "name": "spawn", "namespace": "agents", "arguments": "{}"},
             {"type": "function_call_output", "call_id": "c1", "output": "ok"}]
    sent = build(inbound, input=items, tools=[NAMESPACE])
    assert sent["messages"][1] == {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "Plan.", "signature": SIGNATURE},
        {"type": "tool_use", "id": "c1", "name": "agents__spawn", "input": {}}]}


def test_images_effort_schema_and_choice(inbound: ResponsesInbound) -> None:
    image = {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "auto"}
    sent = build(inbound, input=[{"role": "user", "content": [image]}], reasoning={"effort": "low"},
                 text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
                 tools=[{"type": "function", "name": "f"}], tool_choice={"type": "function", "name": "f"},
                 parallel_tool_calls=False, max_output_tokens=100)
    assert sent["messages"][0]["content"] == [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "AAAA"}}]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert sent["output_config"] == {"format": {"type": "json_schema", "schema": {"type": "object"}}}
    assert sent["tool_choice"] == {"type": "tool", "name": "f", "disable_parallel_tool_use": True}
    assert sent["max_tokens"] == 100


@pytest.mark.parametrize(("body", "wording"), [
    ({"input": []}, "input:"),
    ({"model": ""}, "model:"),
    ({"store": True}, "store: true"),
    ({"conversation": "conv_1"}, "conversation: not supported"),
    ({"max_output_tokens": 8}, "max_output_tokens: range"),
    ({"top_p": "1"}, "top_p: must be a number"),
    ({"input": [{"role": "tool", "content": "x"}]}, "role tool"),
    ({"reasoning": {"effort": "huge"}}, "reasoning.effort"),
])
def test_refusals(inbound: ResponsesInbound, body: dict[str, Any], wording: str) -> None:
    with pytest.raises(RequestError, match=wording.replace(".", r"\.")):
        build(inbound, **body)


def test_a_whole_answer() -> None:
    message = {"model": "m", "stop_reason": "max_tokens",
               "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 3},
               "content": [{"type": "thinking", "thinking": "", "signature": SIGNATURE},
                           {"type": "tool_use", "id": "c1", "name": "agents__spawn", "input": {"a": 1}},
                           {"type": "text", "text": "Hi"}]}
    body = {"model": "m", "input": "x", "tools": [NAMESPACE], "include": ["reasoning.encrypted_content"]}
    response = Response.model_validate(response_object(message, body, response_id="resp_1", created=1))
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    reasoning, call, text = response.output
    assert text.type == "message"
    assert reasoning.type == "reasoning" and reasoning.encrypted_content == SIGNATURE and reasoning.summary == []
    assert call.type == "function_call"
    assert (call.name, call.namespace, call.arguments) == ("spawn", "agents", '{"a":1}')
    assert response.output_text == "Hi"
    assert response.usage is not None and (response.usage.input_tokens, response.usage.total_tokens) == (15, 18)
    without = response_object(message, {**body, "include": []}, response_id="resp_1", created=1)
    assert "encrypted_content" not in without["output"][0], "encrypted reasoning only when asked for"


def parse(records: bytes) -> list[dict[str, Any]]:
    events = []
    for record in records.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in record.splitlines() if not line.startswith(":"))
        if "data" in lines:
            event = json.loads(lines["data"])
            EVENT_TYPES[event["type"]].model_validate(event)
            events.append(event)
    return events


def test_a_stream_that_fails_ends_with_response_failed() -> None:
    writer = EventWriter({"model": "m", "input": "x"}, response_id="resp_1", created=1)
    stream: list[SSEEvent] = [
        ("message_start", {"message": {"usage": {"input_tokens": 3}}}),
        ("ping", {}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Par"}}),
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ("message_stop", {}),
    ]
    records = writer.feed(stream)
    assert b": ping\n\n" in records
    events = parse(records)
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.output_item.added",
                                           "response.content_part.added", "response.output_text.delta",
                                           "response.failed"]
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "Overloaded"}
    assert writer.is_done and writer.feed(stream) == b""


def test_a_signature_only_thinking_block_streams_as_a_reasoning_item() -> None:
    """Gemini's thought signatures come as thinking blocks without text: an item with encrypted
    content and no summary events."""
    writer = EventWriter({"model": "m", "input": "x", "include": ["reasoning.encrypted_content"]},
                         response_id="resp_1", created=1)
    events = parse(writer.feed([
        ("message_start", {"message": {"usage": {}}}),
        ("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": SIGNATURE}}),
        ("content_block_stop", {"index": 0}),
        ("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}),
        ("message_stop", {}),
    ]))
    assert not [e for e in events if "reasoning_summary" in e["type"]]
    final = Response.model_validate(events[-1]["response"])
    [item] = final.output
    assert item.type == "reasoning" and item.encrypted_content == SIGNATURE and final.status == "completed"
