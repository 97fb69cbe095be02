"""The OpenAI Responses API through a running proxy: the anthropic SDK in front, the fake behind.

The scenarios of the other suites (text, streams, arguments split over many deltas, parallel calls,
the tool round trip, errors, cut streams, real Claude Code requests), plus what only the Responses
API has: encrypted reasoning that must come back on the next turn with no server state (the fake
accepts back only the encrypted content it issued, in front of the item it led to), typed stream
events, failures reported in band (`response.failed`, `error` events). The fake
(fakes/responses_upstream.py) answers 400 to any body that leaves the openai SDK's
`ResponseCreateParams` types or breaks a protocol rule, and each test's teardown fails if it did.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Message
from e2e.support import (
    CLAUDE_CODE_FIXTURES,
    MODEL,
    NO_RETRIES,
    WEATHER_TOOL,
    Recorded,
    accumulate,
    ask,
    block_starts,
    each_claude_code_request,
    read_events,
    replay,
    serve_proxy,
    stream_events,
    text_deltas,
    user,
)
from fakes import serve_app
from fakes.responses_upstream import Call, Calls, Error, FakeResponses, Reasoning, Text, Usage

pytestmark = pytest.mark.e2e

UPSTREAM_KEY = "sk-responses-e2e-upstream"
PROVIDER = "openai-responses"
ROUTE_HEADER = f"{PROVIDER}/gpt-5-codex; reason=default"
ARGUMENTS = {
    "city": "Trondheim",
    "units": "metric",
    "days": [1, 2, 3],
    "note": 'quotes " and unicode é ✓ survive',
    "nested": {"deep": {"flag": True, "value": None}},
}
THINKING: Any = {"type": "enabled", "budget_tokens": 4096}


@pytest.fixture(scope="module")
def responses() -> Iterator[tuple[FakeResponses, str]]:
    fake = FakeResponses(api_key=UPSTREAM_KEY)
    with serve_app(fake) as url:
        yield fake, url


@pytest.fixture(scope="module")
def proxy_url(responses: tuple[FakeResponses, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The proxy for this module (conftest's `client` and `http` talk to it): every model → gpt-5-codex."""
    config = tmp_path_factory.mktemp("responses") / "ccproxy.yaml"
    config.write_text(
        f"server: {{{NO_RETRIES}}}\n"
        "providers:\n"
        f"  {PROVIDER}: {{base_url: '{responses[1]}/v1', api_key: {UPSTREAM_KEY}}}\n"
        "routes:\n"
        f"  default: {PROVIDER}/gpt-5-codex\n",
        encoding="utf-8",
    )
    with serve_proxy(Path(config)) as url:
        yield url


@pytest.fixture
def fake(responses: tuple[FakeResponses, str]) -> Iterator[FakeResponses]:
    """The module's fake, reset; after the test, it must not have refused any request body."""
    responses[0].reset()
    yield responses[0]
    responses[0].assert_all_accepted()


def as_param(message: Message) -> dict[str, Any]:
    """An answer as the next request's assistant turn, as Claude Code sends it back."""
    return {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in message.content]}


# --- answers -------------------------------------------------------------------------------------


def test_text(client: anthropic.Anthropic, fake: FakeResponses, streamed: bool) -> None:
    fake.queue(Text("Hello from Responses."))
    message = ask(client, streamed, system="Be brief.")
    assert [(b.type, getattr(b, "text", None)) for b in message.content][-1] == ("text", "Hello from Responses.")
    assert message.stop_reason == "end_turn" and message.model == MODEL
    sent = fake.last
    assert sent.path == "/v1/responses" and sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.body["instructions"] == "Be brief."
    assert sent.body["input"] == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]}]
    assert (sent.body["store"], sent.body["stream"]) == (False, streamed)
    assert "previous_response_id" not in sent.body


def test_streamed_text_in_many_deltas(client: anthropic.Anthropic, fake: FakeResponses) -> None:
    pieces = [f"word{i} " for i in range(200)]
    fake.queue(Text("".join(pieces), chunks=pieces))
    events, message = stream_events(client, model=MODEL, max_tokens=256, messages=user("Count"))
    assert text_deltas(events) == pieces, "the proxy must stream, not buffer the answer"
    assert [b.type for b in message.content] == ["text"]


def test_arguments_split_over_many_deltas(client: anthropic.Anthropic, fake: FakeResponses, streamed: bool) -> None:
    fake.queue(Calls([Call("get_weather", ARGUMENTS, id="call_split")], split=17))
    message = ask(client, streamed, tools=[WEATHER_TOOL], messages=user("Weather?"))
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use" and (block.id, block.name, block.input) == ("call_split", "get_weather", ARGUMENTS)
    assert fake.last.body["tools"] == [{"type": "function", "name": "get_weather", "strict": False,
                                        "description": WEATHER_TOOL["description"],
                                        "parameters": WEATHER_TOOL["input_schema"]}]


def test_parallel_calls_after_text(client: anthropic.Anthropic, fake: FakeResponses) -> None:
    calls = [Call("get_weather", {"city": "Oslo"}, id="call_1"), Call("get_weather", {"city": "Bergen"}, id="call_2")]
    fake.queue(Calls(calls, text_before="Checking both.", split=3))
    events, message = stream_events(client, model=MODEL, max_tokens=256, tools=[WEATHER_TOOL],
                                    messages=user("Oslo and Bergen?"))
    assert block_starts(events) == [(0, "text"), (1, "tool_use"), (2, "tool_use")]
    assert [(b.id, b.input) for b in message.content if b.type == "tool_use"] == [
        ("call_1", {"city": "Oslo"}), ("call_2", {"city": "Bergen"})]
    assert message.stop_reason == "tool_use"


def test_reasoning_summaries_become_a_signed_thinking_block(client: anthropic.Anthropic, fake: FakeResponses,
                                                            streamed: bool) -> None:
    fake.queue(Reasoning(["First, think.", "Then answer."], then=Text("The answer."),
                         usage=Usage(input=100, output=37, cached=40, reasoning=30)))
    message = ask(client, streamed, max_tokens=8192, thinking=THINKING)
    assert [b.type for b in message.content] == ["thinking", "text"]
    thinking, text = message.content
    assert thinking.thinking == "First, think.\n\nThen answer."  # type: ignore[union-attr]
    assert thinking.signature.startswith("ccpx1.")  # type: ignore[union-attr]
    assert text.text == "The answer."  # type: ignore[union-attr]
    assert fake.last.body["reasoning"] == {"effort": "medium", "summary": "auto"}
    assert fake.last.body["include"] == ["reasoning.encrypted_content"]
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens) == (60, 37, 40)


# --- the tool loop ---------------------------------------------------------------------------------


def test_tool_round_trip_carries_reasoning_across_turns(client: anthropic.Anthropic, fake: FakeResponses,
                                                        streamed: bool) -> None:
    """No server state: the reasoning item's encrypted content travels through the client in a
    thinking block and comes back as a reasoning input item in front of the call it led to."""
    step = Reasoning(["Need the tool."], then=Calls([Call("get_weather", {"city": "Oslo"}, id="call_w")], split=4))
    fake.queue(step, Text("It snows in Oslo."))
    question = user("Weather in Oslo?")
    first = ask(client, streamed, max_tokens=8192, thinking=THINKING, tools=[WEATHER_TOOL], messages=question)
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_w", "content": "-3 C, snow"}]}
    second = ask(client, streamed, max_tokens=8192, thinking=THINKING, tools=[WEATHER_TOOL],
                 messages=[*question, as_param(first), result])
    assert second.content[-1].text == "It snows in Oslo."  # type: ignore[union-attr]
    assert fake.last.body["input"][1:] == [
        {"type": "reasoning", "id": step.item_id, "encrypted_content": step.encrypted,
         "summary": [{"type": "summary_text", "text": "Need the tool."}]},
        {"type": "function_call", "call_id": "call_w", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "call_w", "output": "-3 C, snow"},
    ]


def test_history_from_elsewhere_sends_no_reasoning(client: anthropic.Anthropic, fake: FakeResponses) -> None:
    fake.queue(Text("Done."))
    messages: Any = [
        *user("Weather in Oslo?"),
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Claude's own thought", "signature": "EqQBCkgIARABGAIiQJ2x0XxQ"},
            {"type": "tool_use", "id": "toolu_01XYZ", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01XYZ", "content": "-3"}]},
    ]
    ask(client, False, tools=[WEATHER_TOOL], messages=messages)
    assert [item["type"] for item in fake.last.body["input"]] == ["message", "function_call", "function_call_output"]


def test_long_tool_names_are_shortened_and_restored(client: anthropic.Anthropic, fake: FakeResponses,
                                                    streamed: bool) -> None:
    long_name = "mcp__claude_ai_some_remote_workspace_server__search_documents_by_semantic_query"
    fake.responder = lambda body: Calls([Call(body["tools"][0]["name"], {"q": "x"})])
    message = ask(client, streamed, tools=[{**WEATHER_TOOL, "name": long_name}], messages=user("Search"))
    sent = fake.last.body["tools"][0]["name"]
    assert len(sent) <= 64 and sent != long_name
    assert [(b.type, getattr(b, "name", None)) for b in message.content][-1] == ("tool_use", long_name)


def test_route_header(client: anthropic.Anthropic, fake: FakeResponses) -> None:
    fake.default = Text("routed")
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=user("Hi"))
    assert raw.headers["x-ccproxy-route"] == ROUTE_HEADER


# --- failures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("error", "kind", "status", "error_type"), [
    (Error(429, "Rate limit reached for gpt-5-codex.", code="rate_limit_exceeded", retry_after=7),
     anthropic.RateLimitError, 429, "rate_limit_error"),
    (Error(500, "The server had an error processing your request."), anthropic.InternalServerError, 500, "api_error"),
    (Error(503, "The engine is currently overloaded."), anthropic.APIStatusError, 529, "overloaded_error"),
    (Error(401, "Incorrect API key provided.", code="invalid_api_key"), anthropic.AuthenticationError, 401,
     "authentication_error"),
], ids=["429", "500", "503", "401"])
def test_upstream_errors(client: anthropic.Anthropic, fake: FakeResponses, streamed: bool, error: Error,
                         kind: type[anthropic.APIStatusError], status: int, error_type: str) -> None:
    fake.queue(error)
    with pytest.raises(kind) as caught:
        ask(client, streamed)
    assert caught.value.status_code == status
    body: Any = caught.value.body
    assert body["error"] == {"type": error_type, "message": f"[{PROVIDER}] {error.message}"}
    if error.retry_after:
        assert caught.value.response.headers["retry-after"] == "7"
    assert len(fake.requests) == 1


def test_context_overflow_speaks_anthropic(client: anthropic.Anthropic, fake: FakeResponses) -> None:
    fake.queue(Error(400, "Your input exceeds the context window of this model.", code="context_length_exceeded"))
    with pytest.raises(anthropic.BadRequestError) as caught:
        ask(client, False)
    assert str(caught.value.body["error"]["message"]).startswith("prompt is too long")  # type: ignore[index]


def test_cut_stream_raises(client: anthropic.Anthropic, fake: FakeResponses) -> None:
    fake.queue(Calls([Call("get_weather", ARGUMENTS)], split=6, cut_after=6))
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(client, True, tools=[WEATHER_TOOL])
    assert "ended prematurely" in caught.value.body["error"]["message"]  # type: ignore[index]


def test_dropped_connection_raises(client: anthropic.Anthropic, fake: FakeResponses) -> None:
    fake.queue(Text("abcd", chunks=["a", "b", "c", "d"], cut_after=6, abort=True))
    with pytest.raises(anthropic.APIStatusError):
        ask(client, True)


def test_error_event_mid_stream_raises(client: anthropic.Anthropic, fake: FakeResponses) -> None:
    fake.queue(Text("x", error_event=Error(429, "Rate limit reached.", code="rate_limit_exceeded")))
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(client, True)
    assert caught.value.body["error"] == {  # type: ignore[index]
        "type": "rate_limit_error", "message": f"[{PROVIDER}] Rate limit reached."}


def test_failed_response_is_an_error(client: anthropic.Anthropic, fake: FakeResponses, streamed: bool) -> None:
    fake.queue(Text("partial", failed=Error(500, "The model failed.", code="server_error")))
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(client, streamed)
    assert caught.value.body["error"] == {  # type: ignore[index]
        "type": "api_error", "message": f"[{PROVIDER}] The model failed."}


def test_max_tokens_and_refusals(client: anthropic.Anthropic, fake: FakeResponses, streamed: bool) -> None:
    fake.queue(Text("Once upon", incomplete="max_output_tokens"), Text("", refusal="I can't help with that."))
    assert ask(client, streamed).stop_reason == "max_tokens"
    refused = ask(client, streamed)
    assert refused.stop_reason == "refusal"
    assert refused.content[-1].text == "I can't help with that."  # type: ignore[union-attr]


# --- Claude Code -------------------------------------------------------------------------------------


def claude_code_reply(body: dict[str, Any]) -> Reasoning | Text:
    """Reasoning then a call to the request's first tool (named as the upstream knows it), or text
    without tools."""
    tools = body.get("tools") or []
    if not tools:
        return Text("OK")
    call = Call(tools[0]["name"], {"file_path": "/home/dev/project/notes.md", "limit": 20})
    return Reasoning(["Look at the file."], then=Calls([call], text_before="Let me look.", split=5),
                     usage=Usage(input=9000, output=40, cached=8000))


@each_claude_code_request
def test_claude_code_request_round_trip(http: httpx.Client, fake: FakeResponses, path: Path) -> None:
    """Each real Claude Code request, byte for byte, reaches the Responses API as a body it takes."""
    recorded = Recorded.load(path)
    body = recorded.body
    fake.responder = claude_code_reply
    _, events = replay(http, recorded)
    sent = fake.last
    assert sent.status == 200, sent.problems
    message = accumulate(events)
    if not body.get("tools"):
        assert [b.type for b in message.content][-1] == "text"
        return
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    tool_use = message.content[2]
    assert tool_use.type == "tool_use" and tool_use.name == body["tools"][0]["name"]
    assert tool_use.input == {"file_path": "/home/dev/project/notes.md", "limit": 20}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (1000, 8000)
    assert [tool["name"] for tool in sent.body["tools"]] == [tool["name"] for tool in body["tools"]]
    assert not sent.body["instructions"].startswith("x-anthropic-billing-header")


def test_claude_code_tool_loop_carries_reasoning(http: httpx.Client, fake: FakeResponses) -> None:
    """The first request of a real run, answered with reasoning and a call; the run's next request,
    rebuilt with our answer in place of the mock's, must carry the encrypted reasoning back."""
    first = Recorded.load(CLAUDE_CODE_FIXTURES / "2.1.332-read-notes" / "001.json")
    step = Reasoning(["Read it."], then=Calls([Call("Read", {"file_path": "/home/dev/project-fixture-1/notes.md"})]))
    fake.queue(step, Text("notes.md has 7 lines."))
    content = json.dumps(first.body).encode()
    with http.stream("POST", first.path, content=content, headers=first.headers) as response:
        answer = accumulate(read_events(response.iter_bytes()))
    tool_use = answer.content[-1]
    assert tool_use.type == "tool_use"
    second = Recorded.load(CLAUDE_CODE_FIXTURES / "2.1.332-read-notes" / "002.json").body
    messages = [m for m in second["messages"] if m["role"] != "assistant"]
    result = messages[-1]
    result["content"][0]["tool_use_id"] = tool_use.id
    body = {**second, "messages": [*messages[:-1], as_param(answer), result]}
    with http.stream("POST", first.path, content=json.dumps(body).encode(), headers=first.headers) as response:
        final = accumulate(read_events(response.iter_bytes()))
    assert final.content[-1].text == "notes.md has 7 lines."  # type: ignore[union-attr]
    items = fake.last.body["input"]
    reasoning = next(i for i, item in enumerate(items) if item["type"] == "reasoning")
    assert items[reasoning]["encrypted_content"] == step.encrypted
    assert items[reasoning + 1] == {"type": "function_call", "call_id": tool_use.id, "name": "Read",
                                    "arguments": json.dumps(tool_use.input, separators=(",", ":"))}
