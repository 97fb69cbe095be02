"""The fake Responses API upstream, proven with the `openai` SDK as its client.

If the official SDK can talk to the fake (create, stream, call functions, send the calls and the
encrypted reasoning back) and gets the errors it expects, the fake speaks the Responses wire format;
its own protocol checks are tested here too, so a proxy test that passes against it means something.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from fakes import serve_app
from fakes.responses_upstream import (
    Call,
    Calls,
    Error,
    FakeResponses,
    Reasoning,
    Text,
    Usage,
    check_sdk_types,
    response_body,
    stream_events,
    validate_request,
)
from openai.types.responses import Response, ResponseStreamEvent

KEY = "sk-responses-test"
MODEL = "gpt-5-codex"
WEATHER: Any = {"type": "function", "name": "get_weather", "strict": False,
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
STATELESS: Any = {"store": False, "include": ["reasoning.encrypted_content"], "reasoning": {"summary": "auto"}}

_UNION = typing.get_args(ResponseStreamEvent)
_MEMBERS = typing.get_args(_UNION[0]) if typing.get_origin(_UNION[0]) is typing.Union else _UNION
EVENT_TYPES = {typing.get_args(member.model_fields["type"].annotation)[0]: member for member in _MEMBERS}
"""Event type name → the SDK's event model."""


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeResponses, str]]:
    fake = FakeResponses(api_key=KEY)
    with serve_app(fake) as url:
        yield fake, url


@pytest.fixture
def fake(served: tuple[FakeResponses, str]) -> FakeResponses:
    served[0].reset()
    return served[0]


@pytest.fixture
def client(served: tuple[FakeResponses, str]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{served[1]}/v1", api_key=KEY, max_retries=0) as sdk:
        yield sdk


def reasoning_then_calls() -> Reasoning:
    calls = [Call("get_weather", {"city": "Oslo"}, id="call_a"), Call("get_weather", {"city": "Bergen"}, id="call_b")]
    return Reasoning(["Two cities.", "Ask both."], then=Calls(calls, split=4, text_before="Checking."),
                     usage=Usage(input=100, output=30, cached=40, reasoning=12))


def test_every_event_and_body_fits_the_sdk_models() -> None:
    request = {"model": MODEL, "input": "hi", **STATELESS}
    replies = [reasoning_then_calls(), Text("Hi.", incomplete="max_output_tokens"), Text("", refusal="No."),
               Text("x", failed=Error(500, "boom")), Text("x", error_event=Error(429, "slow down"))]
    for reply in replies:
        for event in stream_events(reply, request):
            EVENT_TYPES[event["type"]].model_validate(event)
        Response.model_validate(response_body(reply, request))


def test_the_sdk_streams_reasoning_text_and_split_parallel_calls(client: openai.OpenAI, fake: FakeResponses) -> None:
    reply = reasoning_then_calls()
    fake.queue(reply)
    with client.responses.stream(model=MODEL, input="weather?", tools=[WEATHER], **STATELESS) as stream:
        deltas = [event.delta for event in stream if event.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    assert len(deltas) == 8 and "".join(deltas[:4]) == '{"city":"Oslo"}'
    kinds = [item.type for item in final.output]
    assert kinds == ["reasoning", "message", "function_call", "function_call"]
    reasoning = final.output[0]
    assert reasoning.type == "reasoning" and reasoning.encrypted_content == reply.encrypted
    assert [part.text for part in reasoning.summary] == ["Two cities.", "Ask both."]
    assert final.usage is not None and final.usage.input_tokens_details.cached_tokens == 40
    fake.assert_all_accepted()


def test_encrypted_reasoning_goes_back_and_only_what_the_fake_issued(client: openai.OpenAI,
                                                                     fake: FakeResponses) -> None:
    reply = Reasoning(["Plan."], then=Calls([Call("get_weather", {"city": "Oslo"}, id="call_1")]))
    fake.queue(reply, Text("Sunny."))
    first = client.responses.create(model=MODEL, input="weather?", tools=[WEATHER], **STATELESS)
    items: Any = [{"role": "user", "content": "weather?"},
                  *[item.model_dump(exclude_none=True) for item in first.output],
                  {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]
    second = client.responses.create(model=MODEL, input=items, tools=[WEATHER], **STATELESS)
    assert second.output_text == "Sunny."
    fake.assert_all_accepted()
    forged = [{**items[1], "encrypted_content": "Zm9yZ2Vk"}, *items[2:]]
    with pytest.raises(openai.BadRequestError, match="could not be verified"):
        client.responses.create(model=MODEL, input=[items[0], *forged], **STATELESS)


def test_scripted_errors_reach_the_sdk(client: openai.OpenAI, fake: FakeResponses) -> None:
    fake.queue(Error(429, "Rate limit reached", retry_after=2))
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model=MODEL, input="hi", **STATELESS)
    assert caught.value.response.headers["retry-after"] == "2"


def test_a_cut_stream_has_no_final_event(client: openai.OpenAI, fake: FakeResponses) -> None:
    fake.queue(Text("Hello there", chunks=["Hello", " there"], cut_after=5))
    events = list(client.responses.create(model=MODEL, input="hi", stream=True, **STATELESS))
    assert [event.type for event in events][-1] == "response.output_text.delta"


def test_protocol_rules() -> None:
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "c1", "output": "ok"}
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "abc"}
    base = {"model": MODEL, "store": False}
    assert validate_request({**base, "input": [call, output]}) == []
    assert validate_request({**base, "input": [output]})[0].startswith("No tool call found")
    assert validate_request({**base, "input": [call]}) == ["No tool output found for function call c1."]
    assert "without its required following item" in validate_request({**base, "input": [reasoning]})[0]
    assert validate_request({**base, "input": [reasoning, call, output]}, {"rs_1": "abc"}) == []
    assert "could not be verified" in validate_request({**base, "input": [reasoning, call, output]}, {})[0]
    assert validate_request({"model": MODEL, "input": "hi"}) == [
        "store must be false: the proxy keeps no state, so nothing may be stored upstream"]
    assert "below minimum" in validate_request({**base, "input": "hi", "max_output_tokens": 1})[0]
    assert "temperature" in validate_request({**base, "input": "hi", "temperature": 0.5})[0]
    assert "not supported" in validate_request({**base, "model": "gpt-4.1", "input": "hi", "reasoning": {}})[0]


def test_sdk_types_catch_what_the_api_refuses() -> None:
    chat_style_tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    problems = [str(p) for p in check_sdk_types({"model": MODEL, "input": "hi", "tools": [chat_style_tool]})]
    assert any("tools[0]" in problem for problem in problems)
    assert [str(p) for p in check_sdk_types({"model": MODEL, "input": "hi", "messages": []})] == [
        "messages: unknown key, not in ResponseCreateParamsNonStreaming"]
