"""Anthropic passthrough: the anthropic SDK through the proxy to an Anthropic-speaking upstream.

What must hold: the body goes upstream byte for byte except the routed model; the answer (JSON or
SSE) comes back byte for byte; the provider's key replaces the client's; anthropic-beta and
anthropic-version are forwarded; errors keep their Anthropic type.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import orjson
import pytest
from e2e.support import CLIENT_KEY, NO_RETRIES, serve_proxy
from fakes.anthropic_upstream import AnthropicError, AnthropicMessage, AnthropicStream, FakeAnthropic
from fakes.server import serve_app

pytestmark = pytest.mark.e2e

UPSTREAM_KEY = "sk-ant-upstream-key"


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeAnthropic, str]]:
    fake = FakeAnthropic()
    with serve_app(fake) as url:
        yield fake, url


@pytest.fixture(scope="module")
def proxy(upstream: tuple[FakeAnthropic, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = tmp_path_factory.mktemp("anthropic") / "ccproxy.yaml"
    config.write_text(
        f"server: {{{NO_RETRIES}}}\n"
        "providers:\n"
        f"  anthropic: {{base_url: '{upstream[1]}', api_key: {UPSTREAM_KEY}}}\n"
        "routes:\n"
        "  default: anthropic/claude-sonnet-4-5\n"
    )
    with serve_proxy(Path(config)) as url:
        yield url


@pytest.fixture
def fake(upstream: tuple[FakeAnthropic, str]) -> FakeAnthropic:
    upstream[0].reset()
    return upstream[0]


def client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=CLIENT_KEY, max_retries=0)


def test_body_goes_up_byte_for_byte_but_the_model(proxy: str, fake: FakeAnthropic) -> None:
    fake.queue(AnthropicMessage([{"type": "text", "text": "hi"}]))
    raw = (b'{"model": "claude-opus-4-1",  "max_tokens": 100,\n "messages": [{"role": "user", '
           b'"content": "caf\\u00e9 \xe2\x98\x95"}], "metadata": {"user_id": "u1"}, "temperature": 1.0}')
    response = httpx.post(f"{proxy}/v1/messages", content=raw,
                          headers={"content-type": "application/json", "x-api-key": CLIENT_KEY,
                                   "anthropic-version": "2023-06-01",
                                   "anthropic-beta": "interleaved-thinking-2025-05-14,context-1m-2025-08-07"})
    assert response.status_code == 200
    assert fake.last.raw == raw.replace(b'"claude-opus-4-1"', b'"claude-sonnet-4-5"')
    headers = fake.last.headers
    assert headers["x-api-key"] == UPSTREAM_KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "interleaved-thinking-2025-05-14,context-1m-2025-08-07"
    assert "authorization" not in headers
    assert response.content == fake.last.sent
    assert response.headers["x-ccproxy-route"] == "anthropic/claude-sonnet-4-5; reason=default"


def test_non_streamed_message_through_the_sdk(proxy: str, fake: FakeAnthropic) -> None:
    fake.queue(AnthropicMessage([{"type": "text", "text": "Hello from Anthropic"}]))
    message = client(proxy).messages.create(model="claude-x", max_tokens=50,
                                            messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].type == "text" and message.content[0].text == "Hello from Anthropic"
    assert message.usage.cache_read_input_tokens == 100


def test_stream_comes_back_byte_for_byte(proxy: str, fake: FakeAnthropic) -> None:
    fake.queue(AnthropicStream.text("Hello there", chunks=["Hel", "lo ", "there"]))
    body = {"model": "claude-x", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", f"{proxy}/v1/messages", json=body, headers={"x-api-key": CLIENT_KEY}) as response:
        received = b"".join(response.iter_bytes())
        assert response.headers["content-type"].startswith("text/event-stream")
    assert received == fake.last.sent


def test_thinking_signature_and_split_tool_input_survive(proxy: str, fake: FakeAnthropic) -> None:
    fake.queue(AnthropicStream.thinking_then_tool("Need the weather.", "EqQBgenuineSignature==", "get_weather",
                                                  '{"city": "Oslo", "unit": "celsius"}'))
    with client(proxy).messages.stream(
            model="claude-x", max_tokens=2000, messages=[{"role": "user", "content": "Weather in Oslo?"}],
            tools=[{"name": "get_weather",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        message = stream.get_final_message()
    thinking, tool = message.content
    assert thinking.type == "thinking" and thinking.signature == "EqQBgenuineSignature=="
    assert tool.type == "tool_use" and tool.input == {"city": "Oslo", "unit": "celsius"}
    assert message.stop_reason == "tool_use"
    # the next turn carries the genuine signature back unchanged
    fake.queue(AnthropicMessage([{"type": "text", "text": "4 degrees."}]))
    client(proxy).messages.create(model="claude-x", max_tokens=2000, messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "4C"}]},
    ], thinking={"type": "enabled", "budget_tokens": 1024})
    assert fake.last.body["messages"][1]["content"][0]["signature"] == "EqQBgenuineSignature=="


@pytest.mark.parametrize(("error", "exception"), [
    (AnthropicError(429, "rate_limit_error", "slow down", {"retry-after": "7"}), anthropic.RateLimitError),
    (AnthropicError(529, "overloaded_error", "Overloaded"), anthropic.APIStatusError),
    (AnthropicError(400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum"),
     anthropic.BadRequestError),
])
def test_errors_keep_their_anthropic_type(proxy: str, fake: FakeAnthropic, error: AnthropicError,
                                          exception: type[Exception]) -> None:
    fake.queue(error)
    with pytest.raises(exception) as caught:
        client(proxy).messages.create(model="claude-x", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    status_error = caught.value
    assert isinstance(status_error, anthropic.APIStatusError)
    assert status_error.status_code == error.status
    payload = orjson.loads(status_error.response.content)
    assert payload["error"]["type"] == error.type
    assert error.message in payload["error"]["message"]
    if error.headers:
        assert status_error.response.headers["retry-after"] == "7"


def test_a_cut_stream_ends_with_an_error_event(proxy: str, fake: FakeAnthropic) -> None:
    fake.queue(AnthropicStream.text("a long answer", chunks=["a ", "long ", "answer"], cut_after=4))
    with pytest.raises(anthropic.APIError), client(proxy).messages.stream(
            model="claude-x", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as stream:
        stream.get_final_message()


def test_claude_code_request_passes_through(proxy: str, fake: FakeAnthropic) -> None:
    path = Path(__file__).parent.parent / "fixtures/claude-code/2.1.332-read-notes/002.json"
    fixture = orjson.loads(path.read_bytes())
    fake.queue(AnthropicStream.text("notes.md has 7 lines."))
    headers = {k: v for k, v in fixture["headers"].items()
               if k.lower() in ("anthropic-beta", "anthropic-version", "x-api-key", "content-type")}
    raw = orjson.dumps(fixture["body"])
    with httpx.stream("POST", f"{proxy}/v1/messages?beta=true", content=raw, headers=headers) as response:
        received = b"".join(response.iter_bytes())
    assert response.status_code == 200
    assert received == fake.last.sent
    assert fake.last.raw == raw.replace(b'"model":"claude-opus-5-5"', b'"model":"claude-sonnet-4-5"')
    assert fake.last.headers["anthropic-beta"] == fixture["headers"]["anthropic-beta"]
