"""Gemini through a running proxy: the anthropic SDK in front, the fake Gemini API behind.

The same scenarios as the OpenAI suite (text, streams, tool calls, parallel calls, text-tool-text,
thinking, errors, real Claude Code requests), plus what only Gemini has: whole function calls,
thought signatures that must come back on the next turn (gemini-3 refuses a step without one), ids
Gemini issues, function responses that need the function's name. The fake (fakes/gemini_upstream.py)
answers 400 to any body that leaves the google-genai SDK's types or breaks a protocol rule, and each
test's teardown fails if it refused one.
"""

from __future__ import annotations

import base64
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
from fakes.gemini_upstream import (
    DUMMY_SIGNATURE,
    Blocked,
    Call,
    Calls,
    Error,
    FakeGemini,
    Text,
    Thoughts,
    Usage,
)

pytestmark = pytest.mark.e2e

UPSTREAM_KEY = "gemini-e2e-upstream-key"
GEMINI_3_CLIENT_MODEL = "claude-e2e-gemini-3"
ROUTE_HEADER = "gemini/gemini-2.5-pro; reason=default"
ARGUMENTS = {
    "city": "Trondheim",
    "units": "metric",
    "days": [1, 2, 3],
    "note": 'quotes " and unicode é ✓ survive',
    "nested": {"deep": {"flag": True, "value": None}},
}


@pytest.fixture(scope="module")
def gemini() -> Iterator[tuple[FakeGemini, str]]:
    fake = FakeGemini(api_key=UPSTREAM_KEY)
    with serve_app(fake) as url:
        yield fake, url


@pytest.fixture(scope="module")
def proxy_url(gemini: tuple[FakeGemini, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The proxy for this module (conftest's `client` and `http` talk to it): gemini-2.5-pro by
    default, gemini-3 (which insists on thought signatures) for one client model and Claude Code 2.1."""
    config = tmp_path_factory.mktemp("gemini") / "ccproxy.yaml"
    config.write_text(
        f"server: {{{NO_RETRIES}}}\n"
        "providers:\n"
        f"  gemini: {{base_url: '{gemini[1]}/v1beta', api_key: {UPSTREAM_KEY}}}\n"
        "routes:\n"
        "  default: gemini/gemini-2.5-pro\n"
        "  models:\n"
        f"    {GEMINI_3_CLIENT_MODEL}: gemini/gemini-3-pro-preview\n"
        "    claude-opus-5-5: gemini/gemini-3-pro-preview\n",
        encoding="utf-8",
    )
    with serve_proxy(Path(config)) as url:
        yield url


@pytest.fixture
def fake(gemini: tuple[FakeGemini, str]) -> Iterator[FakeGemini]:
    """The module's fake, reset; after the test, it must not have refused any request body."""
    gemini[0].reset()
    yield gemini[0]
    gemini[0].assert_all_accepted()


# --- answers -------------------------------------------------------------------------------------


def test_text(client: anthropic.Anthropic, fake: FakeGemini, streamed: bool) -> None:
    fake.queue(Text("Hello from Gemini."))
    message = ask(client, streamed, system="Be brief.")
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "Hello from Gemini.")]
    assert message.stop_reason == "end_turn" and message.model == MODEL
    sent = fake.last
    method = "streamGenerateContent" if streamed else "generateContent"
    assert sent.path == f"/v1beta/models/gemini-2.5-pro:{method}"
    assert sent.query == ({"alt": ["sse"]} if streamed else {}), "the key never goes in the URL"
    assert sent.headers["x-goog-api-key"] == UPSTREAM_KEY
    assert sent.body["contents"] == [{"role": "user", "parts": [{"text": "Hello"}]}]
    assert sent.body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}


def test_streamed_text_in_many_chunks(client: anthropic.Anthropic, fake: FakeGemini) -> None:
    pieces = [f"word{i} " for i in range(200)]
    fake.queue(Text(chunks=pieces))
    events, message = stream_events(client, model=MODEL, max_tokens=256, messages=user("Count"))
    assert text_deltas(events) == pieces, "the proxy must stream, not buffer the answer"
    assert [b.type for b in message.content] == ["text"]


def test_whole_function_call(client: anthropic.Anthropic, fake: FakeGemini, streamed: bool) -> None:
    """Gemini's counterpart of OpenAI's split arguments: a call arrives whole, arguments as an object."""
    fake.queue(Calls([Call("get_weather", ARGUMENTS)], signature=None))
    message = ask(client, streamed, tools=[WEATHER_TOOL], messages=user("Weather?"))
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use" and block.id.startswith("toolu_")
    assert (block.name, block.input) == ("get_weather", ARGUMENTS)
    assert fake.last.body["tools"] == [{"functionDeclarations": [{
        "name": "get_weather", "description": WEATHER_TOOL["description"],
        "parametersJsonSchema": WEATHER_TOOL["input_schema"]}]}]


def test_two_parallel_calls(client: anthropic.Anthropic, fake: FakeGemini, streamed: bool) -> None:
    step = Calls([Call("get_weather", {"city": "Oslo"}, id="fc-1"), Call("get_weather", {"city": "Bergen"}, id="fc-2")])
    fake.queue(step)
    message = ask(client, streamed, tools=[WEATHER_TOOL], messages=user("Oslo and Bergen?"))
    assert [b.type for b in message.content] == ["thinking", "tool_use", "tool_use"]
    assert [(b.id, b.input) for b in message.content if b.type == "tool_use"] == [
        ("gcall_fc-1", {"city": "Oslo"}), ("gcall_fc-2", {"city": "Bergen"})]
    assert message.content[0].signature.startswith("ccpx1.")  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"


def test_text_then_call_then_text_keeps_order(client: anthropic.Anthropic, fake: FakeGemini) -> None:
    from fakes.gemini_upstream import Chunks

    call = {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}
    fake.queue(Chunks([
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Let me check. "}]}}]},
        {"candidates": [{"content": {"role": "model", "parts": [call]}}]},
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Checking now."}]}, "finishReason": "STOP"}],
         "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 9}},
    ]))
    events, message = stream_events(client, model=MODEL, max_tokens=256, tools=[WEATHER_TOOL],
                                    messages=user("Weather?"))
    assert block_starts(events) == [(0, "text"), (1, "tool_use"), (2, "text")]
    assert message.content[1].input == {"city": "Oslo"}  # type: ignore[union-attr]
    assert message.content[2].text == "Checking now."  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"


def test_thoughts_become_a_signed_thinking_block(client: anthropic.Anthropic, fake: FakeGemini,
                                                 streamed: bool) -> None:
    fake.queue(Thoughts(["First, ", "think."], signature=base64.b64encode(b"thought-sig").decode(),
                        then=Text(chunks=["The ", "answer."])))
    message = ask(client, streamed, max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 2048})
    assert [b.type for b in message.content] == ["thinking", "text"]
    thinking, text = message.content
    assert thinking.thinking == "First, think."  # type: ignore[union-attr]
    assert thinking.signature.startswith("ccpx1.")  # type: ignore[union-attr]
    assert text.text == "The answer."  # type: ignore[union-attr]
    assert fake.last.body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 2048, "includeThoughts": True}


def test_usage_counts_thoughts_and_cache(client: anthropic.Anthropic, fake: FakeGemini, streamed: bool) -> None:
    fake.queue(Text("counted", usage=Usage(prompt=100, candidates=7, thoughts=30, cached=40)))
    usage = ask(client, streamed).usage
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens) == (60, 37, 40)


# --- the tool loop ---------------------------------------------------------------------------------


def as_param(message: Message) -> dict[str, Any]:
    """An answer as the next request's assistant turn, as Claude Code sends it back."""
    return {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in message.content]}


def test_two_turn_tool_loop_carries_the_signature_back(client: anthropic.Anthropic, fake: FakeGemini,
                                                       streamed: bool) -> None:
    """gemini-3 refuses a step whose first call lacks its signature: the signature has to travel
    through the client in a thinking block and come back on the same call."""
    step = Calls([Call("get_weather", {"city": "Oslo"}, id="fc-9")], text_before="Checking.")
    fake.queue(step, Text("It snows in Oslo."))
    question = user("Weather in Oslo?")
    first = ask(client, streamed, model=GEMINI_3_CLIENT_MODEL, tools=[WEATHER_TOOL], messages=question)
    assert [b.type for b in first.content] == ["text", "thinking", "tool_use"]
    call = first.content[2]
    assert call.type == "tool_use" and call.id == "gcall_fc-9"
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "-3 C, snow"}]}
    second = ask(client, streamed, model=GEMINI_3_CLIENT_MODEL, tools=[WEATHER_TOOL],
                 messages=[*question, as_param(first), result])
    assert second.content[0].text == "It snows in Oslo."  # type: ignore[union-attr]
    sent = fake.last
    assert sent.path.startswith("/v1beta/models/gemini-3-pro-preview:")
    model_turn, answer_turn = sent.body["contents"][1:]
    assert model_turn == {"role": "model", "parts": [
        {"text": "Checking."},
        {"functionCall": {"id": "fc-9", "name": "get_weather", "args": {"city": "Oslo"}},
         "thoughtSignature": step.signature}]}
    assert answer_turn == {"role": "user", "parts": [
        {"functionResponse": {"id": "fc-9", "name": "get_weather", "response": {"output": "-3 C, snow"}}}]}


def test_history_from_elsewhere_gets_the_dummy_signature(client: anthropic.Anthropic, fake: FakeGemini) -> None:
    fake.queue(Text("Done."))
    messages: Any = [
        *user("Weather in Oslo?"),
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Claude's own thought", "signature": "EqQBCkgIARABGAIiQJ2x0XxQ"},
            {"type": "tool_use", "id": "toolu_01XYZ", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01XYZ", "content": "-3"}]},
    ]
    ask(client, False, model=GEMINI_3_CLIENT_MODEL, tools=[WEATHER_TOOL], messages=messages)
    call_part = fake.last.body["contents"][1]["parts"][0]
    assert call_part["thoughtSignature"] == DUMMY_SIGNATURE
    assert "id" not in call_part["functionCall"], "ids Gemini did not issue are never sent"


def test_rich_conversation_is_a_valid_gemini_request(client: anthropic.Anthropic, fake: FakeGemini,
                                                     streamed: bool) -> None:
    fake.queue(Text("All clear."))
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    messages: Any = [
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this picture, and what is the weather?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": pixel}},
            {"type": "document", "title": "forecast.txt",
             "source": {"type": "text", "media_type": "text/plain", "data": "Forecast: snow"}},
        ]},
        {"role": "user", "content": "Also, be quick."},
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
    message = ask(client, streamed, messages=messages, tools=[WEATHER_TOOL], tool_choice={"type": "auto"},
                  stop_sequences=["END"], extra_body={"temperature": 0.2, "top_k": 20},
                  system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
                  metadata={"user_id": "user-42"})
    assert message.content[0].text == "All clear."  # type: ignore[union-attr]
    body = fake.last.body
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert [next(iter(p)) for p in body["contents"][0]["parts"]] == ["text", "inlineData", "text", "text"]
    assert body["contents"][2]["parts"][1] == {
        "functionResponse": {"name": "get_weather", "response": {"error": "station offline"}}}
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    # stop sequences stay with the engine (emulate_stop_sequences): Gemini would never say which matched
    assert body["generationConfig"] == {"maxOutputTokens": 256, "temperature": 0.2, "topK": 20}


def test_long_tool_names_are_shortened_and_restored(client: anthropic.Anthropic, fake: FakeGemini,
                                                    streamed: bool) -> None:
    long_name = "mcp__claude_ai_some_remote_workspace_server__search_documents_by_semantic_query"
    fake.responder = lambda body: Calls([Call(body["tools"][0]["functionDeclarations"][0]["name"], {"q": "x"})])
    message = ask(client, streamed, tools=[{**WEATHER_TOOL, "name": long_name}], messages=user("Search"))
    sent = fake.last.body["tools"][0]["functionDeclarations"][0]["name"]
    assert len(sent) <= 64 and sent != long_name
    assert [(b.type, getattr(b, "name", None)) for b in message.content][-1] == ("tool_use", long_name)


def test_route_header(client: anthropic.Anthropic, fake: FakeGemini) -> None:
    fake.default = Text("routed")
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, messages=user("Hi"))
    assert raw.headers["x-ccproxy-route"] == ROUTE_HEADER


# --- failures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("error", "kind", "status", "error_type"), [
    (Error(429, "Resource has been exhausted (e.g. check quota).", retry_after=7), anthropic.RateLimitError, 429,
     "rate_limit_error"),
    (Error(500, "An internal error has occurred."), anthropic.InternalServerError, 500, "api_error"),
    (Error(503, "The model is overloaded. Please try again later."), anthropic.APIStatusError, 529,
     "overloaded_error"),
    (Error(403, "Permission denied."), anthropic.PermissionDeniedError, 403, "permission_error"),
    (Error(400, "API key not valid. Please pass a valid API key.", reason="API_KEY_INVALID"),
     anthropic.AuthenticationError, 401, "authentication_error"),
], ids=["429", "500", "503", "403", "key"])
def test_upstream_errors(client: anthropic.Anthropic, fake: FakeGemini, streamed: bool, error: Error,
                         kind: type[anthropic.APIStatusError], status: int, error_type: str) -> None:
    fake.queue(error)
    with pytest.raises(kind) as caught:
        ask(client, streamed)
    assert caught.value.status_code == status
    body: Any = caught.value.body
    assert body["error"] == {"type": error_type, "message": f"[gemini] {error.message}"}
    if error.retry_after:
        assert caught.value.response.headers["retry-after"] == "7"
    assert len(fake.requests) == 1


def test_context_overflow_speaks_anthropic(client: anthropic.Anthropic, fake: FakeGemini) -> None:
    fake.queue(Error(400, "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."))
    with pytest.raises(anthropic.BadRequestError) as caught:
        ask(client, False)
    assert str(caught.value.body["error"]["message"]).startswith(  # type: ignore[index]
        "prompt is too long: 1200000 tokens > 1048576 maximum")


def test_cut_stream_raises(client: anthropic.Anthropic, fake: FakeGemini) -> None:
    fake.queue(Text(chunks=["a", "b", "c", "d"], cut_after=2))
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(client, True)
    assert "ended prematurely" in caught.value.body["error"]["message"]  # type: ignore[index]


def test_dropped_connection_raises(client: anthropic.Anthropic, fake: FakeGemini) -> None:
    fake.queue(Text(chunks=["a", "b", "c", "d"], cut_after=2, abort=True))
    with pytest.raises(anthropic.APIStatusError):
        ask(client, True)


@pytest.mark.parametrize("without_data", [False, True], ids=["data", "bare"])
def test_mid_stream_error_record_raises(client: anthropic.Anthropic, fake: FakeGemini,
                                       without_data: bool) -> None:
    fake.queue(Text(chunks=["a", "b", "c"], mid_stream_error=Error(503, "The model is overloaded."),
                    error_without_data=without_data))
    text: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught, \
            client.messages.stream(model=MODEL, max_tokens=64, messages=user("Hi")) as stream:
        text.extend(stream.text_stream)
    assert "".join(text) == "ab"
    # with or without `data:`, the client gets Gemini's own error (the SSE decoder reads a bare JSON body)
    assert caught.value.body["error"] == {  # type: ignore[index]
        "type": "overloaded_error", "message": "[gemini] The model is overloaded."}


def test_malformed_function_call_is_an_error(client: anthropic.Anthropic, fake: FakeGemini,
                                             streamed: bool) -> None:
    fake.queue(Text(finish_reason="MALFORMED_FUNCTION_CALL", finish_message="Malformed function call: x("))
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(client, streamed, tools=[WEATHER_TOOL])
    assert caught.value.body["error"] == {  # type: ignore[index]
        "type": "api_error",
        "message": "[gemini] upstream stopped with finish reason 'MALFORMED_FUNCTION_CALL': "
                   "Malformed function call: x("}


def test_max_tokens_and_refusals(client: anthropic.Anthropic, fake: FakeGemini, streamed: bool) -> None:
    fake.queue(Text("Once upon", finish_reason="MAX_TOKENS"), Text(finish_reason="SAFETY"),
               Blocked(block_reason="PROHIBITED_CONTENT"))
    assert ask(client, streamed).stop_reason == "max_tokens"
    safety = ask(client, streamed)
    assert (safety.stop_reason, safety.content) == ("refusal", [])
    blocked = ask(client, streamed)
    assert blocked.stop_reason == "refusal"
    assert blocked.content[0].text == "The prompt was blocked (PROHIBITED_CONTENT)."  # type: ignore[union-attr]


# --- Claude Code -------------------------------------------------------------------------------------


def claude_code_reply(body: dict[str, Any]) -> Calls | Text:
    """A step calling the request's first tool (named as the upstream knows it), or text without tools."""
    declarations = (body.get("tools") or [{}])[0].get("functionDeclarations")
    if not declarations:
        return Text("OK")
    return Calls([Call(declarations[0]["name"], {"file_path": "/home/dev/project/notes.md", "limit": 20})],
                 text_before="Let me look.", usage=Usage(prompt=9000, candidates=40, cached=8000))


@each_claude_code_request
def test_claude_code_request_round_trip(http: httpx.Client, fake: FakeGemini, path: Path) -> None:
    """Each real Claude Code request, byte for byte; 2.1 requests go to gemini-3, whose history
    rules are the strictest (their earlier tool calls carry Anthropic-mock signatures: dummy)."""
    recorded = Recorded.load(path)
    body = recorded.body
    fake.responder = claude_code_reply
    _, events = replay(http, recorded)
    sent = fake.last
    assert sent.status == 200, sent.problems
    assert sent.model == ("gemini-3-pro-preview" if body["model"] == "claude-opus-5-5" else "gemini-2.5-pro")
    message = accumulate(events)
    if not body.get("tools"):
        assert [b.type for b in message.content] == ["text"]
        return
    assert [block.type for block in message.content] == ["text", "thinking", "tool_use"]
    tool_use = message.content[2]
    assert tool_use.type == "tool_use" and tool_use.name == body["tools"][0]["name"]
    assert tool_use.input == {"file_path": "/home/dev/project/notes.md", "limit": 20}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (1000, 8000)
    declarations = sent.body["tools"][0]["functionDeclarations"]
    assert len(declarations) == len(body["tools"])
    assert all("$schema" not in d.get("parametersJsonSchema", {}) for d in declarations)
    system = sent.body["systemInstruction"]["parts"]
    assert not any(p["text"].startswith("x-anthropic-billing-header") for p in system)
    calls = [p for c in sent.body["contents"] if c["role"] == "model" for p in c["parts"] if "functionCall" in p]
    assert all(p.get("thoughtSignature") == DUMMY_SIGNATURE for p in calls[:1])


def test_claude_code_tool_loop_continues_on_gemini_3(http: httpx.Client, fake: FakeGemini) -> None:
    """The first request of a real run, answered by a signed step; the run's next request, rebuilt with
    our answer in place of the mock's, must carry that signature back to gemini-3."""
    first = Recorded.load(CLAUDE_CODE_FIXTURES / "2.1.332-read-notes" / "001.json")
    step = Calls([Call("Read", {"file_path": "/home/dev/project-fixture-1/notes.md"})])
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
    assert final.content[0].text == "notes.md has 7 lines."  # type: ignore[union-attr]
    model_turn = fake.last.body["contents"][-2]
    assert model_turn["role"] == "model"
    assert model_turn["parts"][-1]["thoughtSignature"] == step.signature
