"""OpenAI-format clients: the official `openai` SDK through `/v1/chat/completions` to every kind of upstream.

One proxy, three providers behind it, each a fake that speaks its real wire format and refuses bodies
that leave its SDK's types: Gemini (`FakeGemini`), Anthropic passthrough (`FakeAnthropic`) and an
OpenAI Chat Completions upstream (`FakeOpenAI`). The client model name picks the provider
(`routes.models`). The SDK's own helpers are the strict checks of the answers: `create()` parses the
``chat.completion``, and `chat.completions.stream(...)` accumulates the chunks (it raises on a tool
call fragment with a bad index, an error record, or a stream cut before ``[DONE]``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from e2e.support import serve_proxy
from fakes import FakeOpenAI, serve_app
from fakes import gemini_upstream as gemini
from fakes import openai_upstream as oai
from fakes.anthropic_upstream import AnthropicError, AnthropicMessage, AnthropicStream, FakeAnthropic
from openai.types.chat import ChatCompletion

pytestmark = pytest.mark.e2e

SERVER_KEY = "sk-proxy-openai-clients"
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ARGUMENTS = {"city": "Trondheim", "days": [1, 2, 3], "note": 'quotes " and unicode é ✓', "nested": {"deep": True}}
PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
         "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


@dataclass
class Upstreams:
    gemini: gemini.FakeGemini
    anthropic: FakeAnthropic
    openai: FakeOpenAI


@pytest.fixture(scope="module")
def upstreams_and_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Upstreams, str]]:
    fakes = Upstreams(gemini.FakeGemini(api_key="gemini-key"), FakeAnthropic(),
                      FakeOpenAI(api_key="openai-key", check_sdk_types=True))
    with serve_app(fakes.gemini) as gemini_url, serve_app(fakes.anthropic) as anthropic_url, \
            serve_app(fakes.openai) as openai_url:
        config = tmp_path_factory.mktemp("openai-clients") / "ccproxy.yaml"
        config.write_text(
            f"server: {{api_key: {SERVER_KEY}}}\n"
            "providers:\n"
            f"  gemini: {{base_url: '{gemini_url}/v1beta', api_key: gemini-key}}\n"
            f"  anthropic: {{base_url: '{anthropic_url}', api_key: anthropic-key}}\n"
            f"  openai: {{base_url: '{openai_url}/v1', api_key: openai-key}}\n"
            "routes:\n"
            "  default: openai/gpt-4.1\n"
            "  models:\n"
            "    to-gemini: gemini/gemini-2.5-pro\n"
            "    to-gemini-3: gemini/gemini-3-pro-preview\n"
            "    to-anthropic: anthropic/claude-sonnet-4-5\n"
            "    to-openai: openai/gpt-4.1\n"
            "    to-fallback: [anthropic/claude-sonnet-4-5, openai/gpt-4.1]\n",
            encoding="utf-8",
        )
        with serve_proxy(Path(config)) as url:
            yield fakes, url


@pytest.fixture
def fakes(upstreams_and_proxy: tuple[Upstreams, str]) -> Iterator[Upstreams]:
    found = upstreams_and_proxy[0]
    found.gemini.reset()
    found.anthropic.reset()
    found.openai.reset()
    yield found
    found.gemini.assert_all_accepted()
    found.openai.assert_valid_with_sdk_types()


@pytest.fixture
def client(upstreams_and_proxy: tuple[Upstreams, str]) -> Iterator[openai.OpenAI]:
    """The official SDK, pointed at the proxy with the server key (sent as Authorization: Bearer)."""
    with openai.OpenAI(base_url=f"{upstreams_and_proxy[1]}/v1", api_key=SERVER_KEY, max_retries=0,
                       timeout=20) as sdk:
        yield sdk


@pytest.fixture(params=[False, True], ids=["whole", "streamed"])
def streamed(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def chat(client: openai.OpenAI, streamed: bool, **params: Any) -> ChatCompletion:
    """One request, whole or through the SDK's stream accumulator (`get_final_completion`)."""
    params.setdefault("messages", [{"role": "user", "content": "Hello"}])
    if not streamed:
        completion: ChatCompletion = client.chat.completions.create(**params)
        return completion
    params.setdefault("stream_options", {"include_usage": True})
    with client.chat.completions.stream(**params) as stream:
        for _ in stream:
            pass
        return stream.get_final_completion()


def queue_text(fakes: Upstreams, provider: str, pieces: list[str]) -> None:
    if provider == "gemini":
        fakes.gemini.queue(gemini.Text(chunks=pieces))
    elif provider == "anthropic":
        fakes.anthropic.queue(AnthropicStream.text("".join(pieces), chunks=pieces))
    else:
        fakes.openai.queue(oai.Text(chunks=pieces))


def queue_text_message(fakes: Upstreams, provider: str, text: str, streamed: bool) -> None:
    if provider == "anthropic" and not streamed:
        fakes.anthropic.queue(AnthropicMessage([{"type": "text", "text": text}]))
    else:
        queue_text(fakes, provider, [text[:5], text[5:]])


PROVIDERS = ["gemini", "anthropic", "openai"]


# --- text ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_text(client: openai.OpenAI, fakes: Upstreams, provider: str, streamed: bool) -> None:
    queue_text_message(fakes, provider, "Hello from upstream.", streamed)
    completion = chat(client, streamed, model=f"to-{provider}",
                      messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    [choice] = completion.choices
    assert choice.message.content == "Hello from upstream."
    assert choice.message.role == "assistant" and choice.message.tool_calls in (None, [])
    assert choice.finish_reason == "stop"
    assert completion.model == f"to-{provider}"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    if provider == "anthropic":
        sent = fakes.anthropic.last.body
        assert sent["system"] == "Be brief." and sent["model"] == "claude-sonnet-4-5"
        assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
        assert sent["max_tokens"] == 64000, "no max_tokens: the model's max_output (Anthropic requires one)"
        assert "authorization" not in fakes.anthropic.last.headers, "the server key never goes upstream"
    elif provider == "gemini":
        assert fakes.gemini.last.body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
        assert fakes.gemini.last.body["generationConfig"]["maxOutputTokens"] == 65536
    else:
        assert fakes.openai.last.body["messages"][0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_streamed_text_arrives_in_pieces(client: openai.OpenAI, fakes: Upstreams, provider: str) -> None:
    pieces = [f"word{i} " for i in range(60)]
    queue_text(fakes, provider, pieces)
    stream = client.chat.completions.create(model=f"to-{provider}", stream=True,
                                            messages=[{"role": "user", "content": "Count"}])
    chunks = list(stream)
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert contents == pieces, "the proxy must stream, not buffer"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks), "no usage chunk unless stream_options asks for it"


def test_usage_chunk_when_asked(client: openai.OpenAI, fakes: Upstreams) -> None:
    fakes.gemini.queue(gemini.Text(chunks=["a", "b"], usage=gemini.Usage(prompt=100, candidates=7, cached=40)))
    chunks = list(client.chat.completions.create(model="to-gemini", stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "x"}]))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (100, 7, 107)
    assert last.usage.prompt_tokens_details is not None and last.usage.prompt_tokens_details.cached_tokens == 40


# --- tool calls ----------------------------------------------------------------------------------


def queue_calls(fakes: Upstreams, provider: str, calls: list[tuple[str, str, dict[str, Any]]],
                streamed: bool) -> None:
    """Calls (id, name, arguments) in the provider's own shape; OpenAI's and Anthropic's arguments are
    split over many chunks."""
    if provider == "gemini":
        fakes.gemini.queue(gemini.Calls([gemini.Call(name, args, id=call_id) for call_id, name, args in calls]))
    elif provider == "openai":
        fakes.openai.queue(oai.ToolCalls(calls=[oai.Call(name, args, id=call_id) for call_id, name, args in calls],
                                         split=7))
    elif streamed:
        blocks = []
        for call_id, name, args in calls:
            text = json.dumps(args)
            pieces = [text[i:i + 5] for i in range(0, len(text), 5)]
            blocks.append(({"type": "tool_use", "id": call_id, "name": name, "input": {}},
                           [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]))
        fakes.anthropic.queue(AnthropicStream.of("claude-sonnet-4-5", blocks, "tool_use"))
    else:
        fakes.anthropic.queue(AnthropicMessage([{"type": "tool_use", "id": call_id, "name": name, "input": args}
                                                for call_id, name, args in calls], stop_reason="tool_use"))


def expected_id(provider: str, call_id: str) -> str:
    return f"gcall_{call_id}" if provider == "gemini" else call_id


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_call_with_arguments_in_many_chunks(client: openai.OpenAI, fakes: Upstreams, provider: str,
                                                 streamed: bool) -> None:
    queue_calls(fakes, provider, [("call_1", "get_weather", ARGUMENTS)], streamed)
    completion = chat(client, streamed, model=f"to-{provider}", tools=[WEATHER],
                      messages=[{"role": "user", "content": "Weather?"}])
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id == expected_id(provider, "call_1")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == ARGUMENTS


@pytest.mark.parametrize("provider", PROVIDERS)
def test_parallel_calls(client: openai.OpenAI, fakes: Upstreams, provider: str, streamed: bool) -> None:
    queue_calls(fakes, provider, [("call_A", "get_weather", {"city": "Oslo"}),
                                  ("call_B", "get_weather", {"city": "Bergen"})], streamed)
    completion = chat(client, streamed, model=f"to-{provider}", tools=[WEATHER],
                      messages=[{"role": "user", "content": "Oslo and Bergen?"}])
    calls = completion.choices[0].message.tool_calls or []
    assert [(c.id, json.loads(c.function.arguments)) for c in calls] == [
        (expected_id(provider, "call_A"), {"city": "Oslo"}), (expected_id(provider, "call_B"), {"city": "Bergen"})]


def test_tool_call_stream_fragments(client: openai.OpenAI, fakes: Upstreams) -> None:
    """The reference chunk shape: index, id, type and name on the first fragment, then arguments only."""
    queue_calls(fakes, "anthropic", [("toolu_X", "get_weather", {"city": "Oslo"})], True)
    chunks = list(client.chat.completions.create(model="to-anthropic", stream=True, tools=[WEATHER],
                                                 messages=[{"role": "user", "content": "Weather?"}]))
    fragments = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    head, *rest = fragments
    assert (head.index, head.id, head.type, head.function and head.function.name) == (
        0, "toolu_X", "function", "get_weather")
    assert len(rest) > 1 and all(f.index == 0 and f.id is None and f.function and f.function.name is None
                                 for f in rest)
    assert "".join(f.function.arguments or "" for f in rest if f.function) == json.dumps({"city": "Oslo"})


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tool_results_go_back(client: openai.OpenAI, fakes: Upstreams, provider: str, streamed: bool) -> None:
    queue_text_message(fakes, provider, "Oslo -3, Bergen 4.", streamed)
    messages: Any = [
        {"role": "user", "content": "Oslo and Bergen?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{key}", "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
            for key, city in (("A", "Oslo"), ("B", "Bergen"))]},
        {"role": "tool", "tool_call_id": "call_A", "content": "-3"},
        {"role": "tool", "tool_call_id": "call_B", "content": [{"type": "text", "text": "4"}]},
    ]
    completion = chat(client, streamed, model=f"to-{provider}", tools=[WEATHER], messages=messages)
    assert completion.choices[0].message.content == "Oslo -3, Bergen 4."
    if provider == "anthropic":
        sent = fakes.anthropic.last.body["messages"]
        assert sent[1] == {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_A", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "call_B", "name": "get_weather", "input": {"city": "Bergen"}}]}
        assert sent[2] == {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_A", "content": "-3"},
            {"type": "tool_result", "tool_use_id": "call_B", "content": "4"}]}
    elif provider == "gemini":
        contents = fakes.gemini.last.body["contents"]
        responses = [part["functionResponse"] for part in contents[2]["parts"]]
        assert [(r["name"], r["response"]) for r in responses] == [
            ("get_weather", {"output": "-3"}), ("get_weather", {"output": "4"})]
    else:
        sent = fakes.openai.last.body["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
        assert [(m["tool_call_id"], m["content"]) for m in sent[2:]] == [("call_A", "-3"), ("call_B", "4")]


def test_gemini_3_tool_loop_carries_the_signature(client: openai.OpenAI, fakes: Upstreams, streamed: bool) -> None:
    """Gemini 3 refuses a step whose first call lost its thought signature: the call carries it in
    ``extra_content.google.thought_signature`` (where Gemini's own OpenAI endpoint puts it), and the
    client sending the message back as it came is enough."""
    step = gemini.Calls([gemini.Call("get_weather", {"city": "Oslo"}, id="fc-1")])
    fakes.gemini.queue(step, gemini.Text("It snows in Oslo."))
    question: Any = [{"role": "user", "content": "Weather in Oslo?"}]
    first = chat(client, streamed, model="to-gemini-3", tools=[WEATHER], messages=question)
    assistant = first.choices[0].message
    [call] = assistant.tool_calls or []
    assert call.model_extra and call.model_extra["extra_content"]["google"]["thought_signature"].startswith("ccpx1.")
    turn = [*question, assistant.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "-3, snow"}]
    second = chat(client, streamed, model="to-gemini-3", tools=[WEATHER], messages=turn)
    assert second.choices[0].message.content == "It snows in Oslo."
    parts = fakes.gemini.last.body["contents"][1]["parts"]
    assert parts[0]["functionCall"]["name"] == "get_weather" and parts[0]["thoughtSignature"] == step.signature


def test_tool_choice_and_parallel_tool_calls(client: openai.OpenAI, fakes: Upstreams) -> None:
    queue_text_message(fakes, "anthropic", "ok ok ok", False)
    chat(client, False, model="to-anthropic", tools=[WEATHER], parallel_tool_calls=False,
         tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert fakes.anthropic.last.body["tool_choice"] == {"type": "tool", "name": "get_weather",
                                                        "disable_parallel_tool_use": True}
    assert fakes.anthropic.last.body["tools"] == [{"name": "get_weather", "description": "Current weather for a city",
                                                   "input_schema": WEATHER["function"]["parameters"]}]


def test_reasoning_streams_as_reasoning_content(client: openai.OpenAI, fakes: Upstreams) -> None:
    fakes.anthropic.queue(AnthropicStream.thinking_then_tool("Let me think.", "c2ln", "get_weather",
                                                             json.dumps({"city": "Oslo"})))
    completion = chat(client, True, model="to-anthropic", tools=[WEATHER], reasoning_effort="medium")
    message = completion.choices[0].message
    assert message.model_extra is not None and message.model_extra.get("reasoning_content") == "Let me think."
    assert message.tool_calls and json.loads(message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    assert fakes.anthropic.last.body["thinking"] == {"type": "enabled", "budget_tokens": 8192}


def test_fallback_to_the_next_target(client: openai.OpenAI, fakes: Upstreams, streamed: bool) -> None:
    """Routing, fallbacks and the route header are the pipeline's, whatever API the client speaks."""
    fakes.anthropic.queue(AnthropicError(503, "overloaded_error", "busy"))
    fakes.openai.queue(oai.Text("From the second target."))
    completion = chat(client, streamed, model="to-fallback")
    assert completion.choices[0].message.content == "From the second target."
    assert len(fakes.anthropic.requests) == 1 and fakes.openai.last.body["model"] == "gpt-4.1"


# --- the rest of the request ---------------------------------------------------------------------


def test_images_by_url_and_data(client: openai.OpenAI, fakes: Upstreams) -> None:
    queue_text_message(fakes, "anthropic", "A pixel, twice.", False)
    content: Any = [{"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": PIXEL}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    chat(client, False, model="to-anthropic", messages=[{"role": "user", "content": content}])
    [_, data, url] = fakes.anthropic.last.body["messages"][0]["content"]
    assert data == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                "data": PIXEL.split(",", 1)[1]}}
    assert url == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}


def test_image_data_reaches_gemini(client: openai.OpenAI, fakes: Upstreams) -> None:
    fakes.gemini.queue(gemini.Text("A pixel."))
    chat(client, False, model="to-gemini", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": PIXEL}}]}])
    parts = fakes.gemini.last.body["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": PIXEL.split(",", 1)[1]}}


def test_sampling_stop_effort_and_schema(client: openai.OpenAI, fakes: Upstreams) -> None:
    queue_text_message(fakes, "anthropic", '{"a": 1}', False)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    chat(client, False, model="to-anthropic", max_completion_tokens=3000, temperature=0.5, top_p=0.9,
         stop=["END"], reasoning_effort="high", user="u-1",
         response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": schema}},
         messages=[{"role": "developer", "content": "JSON only."}, {"role": "user", "content": "Go"}])
    sent = fakes.anthropic.last.body
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (3000, 0.5, 0.9)
    assert sent["stop_sequences"] == ["END"] and sent["system"] == "JSON only."
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2999}, "the budget stays under max_tokens"
    assert sent["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert sent["metadata"] == {"user_id": "u-1"}


def test_response_format_reaches_openai(client: openai.OpenAI, fakes: Upstreams) -> None:
    fakes.openai.queue(oai.Text('{"a": 1}'))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    chat(client, False, model="to-openai", reasoning_effort="low",
         response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": schema}})
    assert fakes.openai.last.body["response_format"] == {"type": "json_schema",
                                                         "json_schema": {"name": "output", "schema": schema}}


# --- errors --------------------------------------------------------------------------------------


def test_openai_range_checks_and_refusals(client: openai.OpenAI, fakes: Upstreams) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"temperature": 2.5}, "temperature: range: 0..2"),
        ({"n": 2}, "n: only one choice"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"response_format": {"type": "regex"}}, "response_format"),
    ]
    for params, wording in cases:
        params.setdefault("messages", [{"role": "user", "content": "x"}])
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="to-anthropic", **params)
        error = caught.value
        assert error.status_code == 400 and wording in error.message
        assert isinstance(error.body, dict) and error.body["type"] == "invalid_request_error"
        assert set(error.body) == {"message", "type", "param", "code"}
    assert fakes.anthropic.requests == [], "a refused request never reaches an upstream"
    # temperature 1.5 is fine for OpenAI's range (Anthropic's own is 0..1)
    fakes.openai.queue(oai.Text("warm"))
    chat(client, False, model="to-openai", temperature=1.5)
    assert fakes.openai.last.body["temperature"] == 1.5


def test_structured_output_refused_where_unsupported(upstreams_and_proxy: tuple[Upstreams, str],
                                                     tmp_path: Path) -> None:
    """DeepSeek takes no JSON schema: a clear 400 in OpenAI's envelope, nothing sent."""
    config = tmp_path / "ccproxy.yaml"
    config.write_text("providers:\n  deepseek: {base_url: 'http://127.0.0.1:9/v1', api_key: k}\n"
                      "routes:\n  default: deepseek/deepseek-chat\n", encoding="utf-8")
    with serve_proxy(config) as url, openai.OpenAI(base_url=f"{url}/v1", api_key="any", max_retries=0) as sdk, \
            pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                    response_format={"type": "json_object"})
    assert "structured output" in caught.value.message


@pytest.mark.parametrize("provider", PROVIDERS)
def test_upstream_rate_limit(client: openai.OpenAI, fakes: Upstreams, provider: str) -> None:
    if provider == "gemini":
        fakes.gemini.queue(gemini.Error(429, "quota"))
    elif provider == "anthropic":
        fakes.anthropic.queue(AnthropicError(429, "rate_limit_error", "slow down"))
    else:
        fakes.openai.queue(oai.Error(429, "slow down", type="requests", code="rate_limit_exceeded"))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=f"to-{provider}", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 429
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "rate_limit_exceeded"
    assert f"[{provider}]" in caught.value.message


def test_overloaded_is_openai_503(client: openai.OpenAI, fakes: Upstreams) -> None:
    fakes.anthropic.queue(AnthropicError(529, "overloaded_error", "Overloaded"))
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="to-anthropic", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 503


def test_error_inside_a_stream(client: openai.OpenAI, fakes: Upstreams) -> None:
    """A failure after the stream started: a data: {"error": ...} record ends it; the SDK raises."""
    fakes.openai.queue(oai.Text(chunks=["Par", "tial", "!"], mid_stream_error=oai.Error(500, "boom"), cut_after=2))
    received: list[str] = []
    stream = client.chat.completions.create(model="to-openai", stream=True,
                                            messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.extend(choice.delta.content or "" for choice in chunk.choices)
    assert "boom" in caught.value.message
    assert received and "Partial!".startswith("".join(received)), "what came before the error was streamed"


def test_error_record_on_the_wire(upstreams_and_proxy: tuple[Upstreams, str], fakes: Upstreams) -> None:
    fakes.anthropic.queue(AnthropicStream.text("Hello", cut_after=4))
    response = httpx.post(f"{upstreams_and_proxy[1]}/v1/chat/completions",
                          headers={"authorization": f"Bearer {SERVER_KEY}"},
                          json={"model": "to-anthropic", "stream": True,
                                "messages": [{"role": "user", "content": "x"}]})
    records = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    last = json.loads(records[-1])
    assert set(last) == {"error"} and set(last["error"]) == {"message", "type", "param", "code"}
    assert "[DONE]" not in records


def test_wrong_key_and_unknown_path_in_openai_envelope(upstreams_and_proxy: tuple[Upstreams, str]) -> None:
    url = upstreams_and_proxy[1]
    with openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0) as sdk, \
            pytest.raises(openai.AuthenticationError) as caught:
        sdk.chat.completions.create(model="to-openai", messages=[{"role": "user", "content": "x"}])
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "invalid_api_key"
    body = httpx.post(f"{url}/v1/chat/completions", headers={"authorization": f"Bearer {SERVER_KEY}"},
                      content=b"{not json").json()
    assert body["error"]["type"] == "invalid_request_error" and "not valid JSON" in body["error"]["message"]
    # an Anthropic client of the same proxy keeps Anthropic's envelope
    anthropic_error = httpx.post(f"{url}/v1/messages", headers={"x-api-key": "wrong",
                                                                "anthropic-version": "2023-06-01"}, json={})
    assert anthropic_error.status_code == 401 and anthropic_error.json()["type"] == "error"


# --- models --------------------------------------------------------------------------------------


def test_models_in_openai_shape(client: openai.OpenAI, upstreams_and_proxy: tuple[Upstreams, str]) -> None:
    ids = [model.id for model in client.models.list()]
    assert {"to-gemini", "gemini/gemini-2.5-pro", "anthropic/claude-sonnet-4-5"} <= set(ids)
    model = client.models.retrieve("gemini/gemini-2.5-pro")
    assert (model.object, model.owned_by) == ("model", "gemini")
    anthropic_shape = httpx.get(f"{upstreams_and_proxy[1]}/v1/models",
                                headers={"x-api-key": SERVER_KEY, "anthropic-version": "2023-06-01"}).json()
    assert "has_more" in anthropic_shape and anthropic_shape["data"][0]["type"] == "model"
