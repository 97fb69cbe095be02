"""The Chat Completions side without a server: inbound rules, per-target completion, the chunk writer,
the error table. The served proxy with the openai SDK is tests/e2e/test_e2e_openai_clients.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ccproxy_engine._chat import ChatInbound, ChunkWriter, completion, load_inbound, openai_error
from ccproxy_engine._compiler import CompiledRules, compile_rules
from ccproxy_engine._config import ProviderSettings
from ccproxy_engine._endpoint import Endpoint, PassthroughEndpoint
from ccproxy_engine._errors import RequestError
from ccproxy_engine._functions import encode_signature
from ccproxy_engine._loader import load_rules

USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def inbound() -> ChatInbound:
    return ChatInbound()


def build(inbound: ChatInbound, **body: Any) -> dict[str, Any]:
    body.setdefault("model", "m")
    body.setdefault("messages", USER)
    return inbound.request(body, {})


def test_inbound_rules_compile_without_diagnostics() -> None:
    assert load_inbound().rule_set.data["inbound"] is True


@pytest.mark.parametrize(("effort", "thinking"), [
    ("none", {"type": "disabled"}), ("minimal", {"type": "enabled", "budget_tokens": 1024}),
    ("low", {"type": "enabled", "budget_tokens": 2048}), ("medium", {"type": "enabled", "budget_tokens": 8192}),
    ("high", {"type": "enabled", "budget_tokens": 24576}), ("xhigh", {"type": "enabled", "budget_tokens": 32000}),
    ("max", {"type": "enabled", "budget_tokens": 32000}),
])
def test_reasoning_effort_becomes_a_budget(inbound: ChatInbound, effort: str, thinking: dict[str, Any]) -> None:
    assert build(inbound, reasoning_effort=effort)["thinking"] == thinking


def test_json_object_is_any_object(inbound: ChatInbound) -> None:
    body = build(inbound, response_format={"type": "json_object"})
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": {"type": "object"}}}
    assert "output_config" not in build(inbound, response_format={"type": "text"})


def test_pdf_file_part_becomes_a_document(inbound: ChatInbound) -> None:
    part = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
    [message] = build(inbound, messages=[{"role": "user", "content": [part]}])["messages"]
    assert message["content"] == [{"type": "document", "title": "a.pdf", "source": {
        "type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]


def test_stop_string_and_defaults(inbound: ChatInbound) -> None:
    body = build(inbound, stop="END")
    assert body["stop_sequences"] == ["END"]
    assert body == {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                    "stop_sequences": ["END"], "stream": False}, "nothing the client did not ask for"


@pytest.mark.parametrize(("body", "wording"), [
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "input_audio"),
    ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f1"}}]}]}, "file_data"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,xx"}}]}]},
     "base64"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools: type custom"),
    ({"tools": [{"type": "function", "function": {"name": "x"}}], "tool_choice": {"type": "allowed_tools"}},
     "tool_choice"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages.0.role"),
    ({"messages": []}, "messages"),
    ({"top_p": 1.5}, "top_p: range: 0..1"),
    ({"max_tokens": 0}, "max_tokens: range: 1.."),
])
def test_refused_clearly(inbound: ChatInbound, body: dict[str, Any], wording: str) -> None:
    with pytest.raises(RequestError) as caught:
        build(inbound, **body)
    assert wording in caught.value.message


def compiled(rules_name: str) -> CompiledRules:
    rule_sets, _ = load_rules()
    found, _ = compile_rules({rules_name: rule_sets[rules_name]})
    return found[rules_name]


def endpoint(rules_name: str) -> Endpoint:
    return Endpoint(ProviderSettings(name=rules_name, rules=rules_name, base_url=None), compiled(rules_name), env={})


def test_adapt_fills_max_tokens_and_fits_the_budget() -> None:
    openai = endpoint("openai")
    assert ChatInbound.adapt({"max_tokens": 10}, openai, "gpt-4.1") == {"max_tokens": 10}
    assert ChatInbound.adapt({}, openai, "gpt-4.1")["max_tokens"] == 32768
    assert ChatInbound.adapt({}, openai, "gpt-3.5-turbo")["max_tokens"] == 4096
    thinking = {"type": "enabled", "budget_tokens": 24576}
    assert ChatInbound.adapt({"thinking": thinking}, openai, "gpt-3.5-turbo")["thinking"]["budget_tokens"] == 4095
    assert "thinking" not in ChatInbound.adapt({"max_tokens": 1000, "thinking": thinking}, openai, "gpt-4.1")
    body = {"max_tokens": 30000, "thinking": thinking}
    assert ChatInbound.adapt(body, openai, "gpt-4.1") is body


def test_signed_thinking_goes_back_only_to_its_provider(inbound: ChatInbound) -> None:
    signature = encode_signature("gemini", "gemini-3-pro-preview", "c2ln")
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"},
            "extra_content": {"google": {"thought_signature": signature}}}
    body = build(inbound, messages=[*USER, {"role": "assistant", "tool_calls": [call]},
                                    {"role": "tool", "tool_call_id": "c1", "content": "ok"}], max_tokens=100)
    thinking = {"type": "thinking", "thinking": "", "signature": signature}
    assert body["messages"][1]["content"] == [thinking, {"type": "tool_use", "id": "c1", "name": "f", "input": {}}]
    gemini = Endpoint(ProviderSettings(name="gemini", rules="gemini", base_url=None), compiled("gemini"), env={})
    assert ChatInbound.adapt(body, gemini, "gemini-3-pro-preview") is body
    # another provider, and a passthrough (even one of the same name): Anthropic checks signatures
    passthrough = PassthroughEndpoint(ProviderSettings(name="gemini", rules="anthropic", base_url=None),
                                      compiled("anthropic"), env={})
    for other in (endpoint("openai"), passthrough):
        kept = ChatInbound.adapt(body, other, "m")["messages"][1]["content"]
        assert [b["type"] for b in kept] == ["tool_use"], other


def test_completion_validates_as_the_sdk_type() -> None:
    message = {"model": "m", "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 3,
                                                                  "cache_read_input_tokens": 10},
               "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                           {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]}
    answer = ChatCompletion.model_validate(completion(message, completion_id="chatcmpl-1", created=1))
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls and json.loads(choice.message.tool_calls[0].function.arguments) == {"a": 1}
    assert answer.usage and (answer.usage.prompt_tokens, answer.usage.total_tokens) == (15, 18)
    assert answer.model_extra is not None and choice.message.model_extra == {"reasoning_content": "hm"}


def records(data: bytes) -> list[str]:
    return [line[6:] for line in data.decode().split("\n\n") if line.startswith("data: ")]


def test_chunk_writer_sequence() -> None:
    writer = ChunkWriter(completion_id="chatcmpl-1", created=1, model="m", include_usage=True)
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"message": {"usage": {"input_tokens": 7}}}),
        ("ping", {}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
        ("content_block_stop", {"index": 0}),
        ("content_block_start", {"index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "f"}}),
        ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"a"'}}),
        ("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": ": 1}"}}),
        ("content_block_start", {"index": 2, "content_block": {"type": "tool_use", "id": "t2", "name": "g"}}),
        ("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 4}}),
        ("message_stop", {}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "late"}}),
    ]
    data = writer.feed(events)
    assert b": ping\n\n" in data
    found = records(data)
    assert found[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(r)) for r in found[:-1]]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant" and deltas[1].content == "Hi"
    calls = [call for d in deltas for call in d.tool_calls or []]
    assert [(c.index, c.id, c.function and c.function.name, c.function and c.function.arguments) for c in calls] == [
        (0, "t1", "f", ""), (0, None, None, '{"a"'), (0, None, None, ": 1}"), (1, "t2", "g", "")]
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.prompt_tokens == 7
    assert writer.is_done and writer.feed(events) == b""


def test_chunk_writer_error_ends_the_stream() -> None:
    writer = ChunkWriter(completion_id="c", created=1, model="m", include_usage=False)
    data = writer.feed([("message_start", {"message": {}}),
                        ("error", {"error": {"type": "overloaded_error", "message": "[x] busy"}}),
                        ("message_stop", {})])
    last = json.loads(records(data)[-1])
    assert last == {"error": {"message": "[x] busy", "type": "server_error", "param": None, "code": "overloaded"}}
    assert "[DONE]" not in records(data)


@pytest.mark.parametrize(("error_type", "status", "expected"), [
    ("invalid_request_error", 400, (400, "invalid_request_error", None)),
    ("authentication_error", 401, (401, "invalid_request_error", "invalid_api_key")),
    ("billing_error", 402, (429, "insufficient_quota", "insufficient_quota")),
    ("not_found_error", 404, (404, "invalid_request_error", "not_found")),
    ("rate_limit_error", 429, (429, "requests", "rate_limit_exceeded")),
    ("api_error", 502, (502, "server_error", None)),
    ("overloaded_error", 529, (503, "server_error", "overloaded")),
    ("timeout_error", 504, (504, "timeout", None)),
])
def test_openai_error_table(error_type: str, status: int, expected: tuple[int, str, str | None]) -> None:
    got_status, envelope = openai_error(error_type, "msg", status)
    assert (got_status, envelope["error"]["type"], envelope["error"]["code"]) == expected


def test_overflow_keeps_the_wording_and_gets_the_code() -> None:
    status, envelope = openai_error("invalid_request_error", "prompt is too long: 9 tokens > 8 maximum", 400)
    assert status == 400 and envelope["error"]["code"] == "context_length_exceeded"
