"""Failures through a running proxy: upstream errors, broken streams, and malformed client input.

The `anthropic` SDK decides what a client sees: the exception class it raises for our status, and
that an `event: error` inside a stream raises instead of ending as a clean `end_turn`. Raw httpx
checks what the SDK cannot send (invalid JSON, missing fields) or would hide (the HTTP status of a
stream that failed before its first byte).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from e2e.support import CLIENT_KEY, MODEL, serve_proxy, user
from fakes import Error, FakeOpenAI, Text

pytestmark = pytest.mark.e2e

CHUNKS = [f"part{i} " for i in range(12)]


def assert_envelope(response: httpx.Response, status: int, error_type: str) -> str:
    """The response is the Anthropic error envelope with this status and type; returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    message = body["error"]["message"]
    assert isinstance(message, str) and message
    return message


def stream_final(client: anthropic.Anthropic) -> anthropic.types.Message:
    with client.messages.stream(model=MODEL, max_tokens=64, messages=user("Hi")) as stream:
        return stream.get_final_message()


# --- upstream errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_upstream_429_is_a_rate_limit_error(client: anthropic.Anthropic, fake: FakeOpenAI,
                                            streamed: bool) -> None:
    fake.queue(Error(429, "Rate limit reached for gpt-4.1 on tokens per min", retry_after=7))
    with pytest.raises(anthropic.RateLimitError) as caught:
        if streamed:
            stream_final(client)
        else:
            client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"))
    error = caught.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "7"
    assert isinstance(error.body, dict)
    assert error.body["error"]["type"] == "rate_limit_error"
    assert error.body["error"]["message"] == "[openai] Rate limit reached for gpt-4.1 on tokens per min"
    assert len(fake.requests) == 1, "max_retries=0: the SDK must not retry"


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_upstream_500_is_an_internal_server_error(client: anthropic.Anthropic, fake: FakeOpenAI,
                                                  streamed: bool) -> None:
    fake.queue(Error(500, "The server had an error while processing your request."))
    with pytest.raises(anthropic.InternalServerError) as caught:
        if streamed:
            stream_final(client)
        else:
            client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"))
    assert caught.value.status_code == 500
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert "server had an error" in caught.value.body["error"]["message"]  # type: ignore[index]


def test_upstream_503_is_overloaded_529(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    fake.queue(Error(503, "The engine is currently overloaded, please try again later"))
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"))
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_upstream_401_is_reported_as_an_upstream_failure(client: anthropic.Anthropic,
                                                         fake: FakeOpenAI) -> None:
    """A wrong upstream key is the proxy's problem; the client sees which provider refused it."""
    fake.api_key = "sk-some-other-key"
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"))
    assert caught.value.status_code == 401
    assert caught.value.body["error"]["message"].startswith("[openai] ")  # type: ignore[index]


@pytest.mark.parametrize("status", [429, 500, 503])
def test_stream_error_before_first_byte_is_an_http_error(http: httpx.Client, fake: FakeOpenAI,
                                                         status: int) -> None:
    fake.queue(Error(status, "nope"))
    body = {"model": MODEL, "max_tokens": 64, "stream": True, "messages": user("Hi")}
    response = http.post("/v1/messages", json=body)
    assert response.status_code != 200
    assert response.status_code == {429: 429, 500: 500, 503: 529}[status]
    assert not response.text.startswith("event:")
    assert_envelope(response, response.status_code, response.json()["error"]["type"])
    assert response.json()["error"]["message"] == "[openai] nope"


def test_cut_stream_raises_and_never_ends_cleanly(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    fake.queue(Text(chunks=CHUNKS, cut_after=4))
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught, \
            client.messages.stream(model=MODEL, max_tokens=64, messages=user("Hi")) as stream:
        seen.extend(event.type for event in stream)
    assert "message_stop" not in seen and "message_delta" not in seen
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert "ended prematurely" in caught.value.body["error"]["message"]  # type: ignore[index]


def test_dropped_connection_mid_stream_raises(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    fake.queue(Text(chunks=CHUNKS, cut_after=4, abort=True))
    with pytest.raises(anthropic.APIStatusError) as caught:
        stream_final(client)
    assert caught.value.body["type"] == "error"  # type: ignore[index]


def test_cut_stream_before_any_content_raises(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    fake.queue(Text(chunks=CHUNKS, cut_after=0))
    with pytest.raises(anthropic.APIStatusError) as caught:
        stream_final(client)
    assert "ended without a response" in caught.value.body["error"]["message"]  # type: ignore[index]


def test_mid_stream_error_record_raises(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    fake.queue(Text(chunks=CHUNKS, mid_stream_error=Error(500, "upstream exploded", type="server_error",
                                                          code="server_error")))
    text: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught, \
            client.messages.stream(model=MODEL, max_tokens=64, messages=user("Hi")) as stream:
        text.extend(stream.text_stream)
    assert "".join(text) == "".join(CHUNKS), "what arrived before the error reaches the client"
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "api_error"
    assert error["message"] == "[openai] upstream exploded"


def test_mid_stream_rate_limit_record_keeps_its_type(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    fake.queue(Text(chunks=CHUNKS, cut_after=3,
                    mid_stream_error=Error(429, "slow down", code="rate_limit_exceeded")))
    with pytest.raises(anthropic.APIStatusError) as caught:
        stream_final(client)
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_mid_stream_context_overflow_starts_with_the_phrase_claude_code_compacts_on(
        client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    fake.queue(Text(chunks=CHUNKS, cut_after=1, mid_stream_error=Error(
        400, "This model's maximum context length is 128000 tokens", code="context_length_exceeded")))
    with pytest.raises(anthropic.APIStatusError) as caught:
        stream_final(client)
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == ("prompt is too long: [openai] "
                                "This model's maximum context length is 128000 tokens")


# --- malformed client input ------------------------------------------------------------------------


def post_raw(http: httpx.Client, content: bytes) -> httpx.Response:
    return http.post("/v1/messages", content=content, headers={"content-type": "application/json"})


def test_invalid_json_is_a_400(http: httpx.Client, fake: FakeOpenAI) -> None:
    message = assert_envelope(post_raw(http, b'{"model": "x", "max_tokens": '), 400, "invalid_request_error")
    assert "not valid JSON" in message
    assert fake.requests == []


def test_body_that_is_not_an_object_is_a_400(http: httpx.Client) -> None:
    assert_envelope(post_raw(http, b"[1, 2]"), 400, "invalid_request_error")


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"model": MODEL, "messages": user("Hi")}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 64, "messages": [{"role": "bot", "content": "Hi"}]},
         "messages.0.role"),
        ({"model": MODEL, "max_tokens": 64, "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "name": "get_weather", "input": {}}]},
        ]}, "messages.1.content.0: 'id'"),
        ({"model": MODEL, "max_tokens": "many", "messages": user("Hi")}, "max_tokens"),
    ],
    ids=["missing-max_tokens", "bad-role", "tool_use-without-id", "max_tokens-not-int"],
)
def test_invalid_request_is_a_400_naming_the_field(http: httpx.Client, fake: FakeOpenAI,
                                                   body: dict[str, Any], named: str) -> None:
    message = assert_envelope(http.post("/v1/messages", json=body), 400, "invalid_request_error")
    assert named in message
    assert fake.requests == []


def test_unknown_top_level_fields_are_tolerated(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    fake.queue(Text("fine"))
    message = client.messages.create(
        model=MODEL, max_tokens=64, messages=user("Hi"),
        extra_body={"context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
                    "foo": {"bar": 1}},
    )
    assert message.content[0].text == "fine"  # type: ignore[union-attr]
    assert "context_management" not in fake.last.body and "foo" not in fake.last.body


def test_unknown_path_is_a_404_envelope(http: httpx.Client) -> None:
    assert_envelope(http.get("/v1/nothing-here"), 404, "not_found_error")
    assert_envelope(http.post("/v2/messages", json={}), 404, "not_found_error")


def test_wrong_method_is_a_405_envelope(http: httpx.Client) -> None:
    assert_envelope(http.get("/v1/messages"), 405, "invalid_request_error")


@pytest.fixture(scope="module")
def small_proxy_url(config_path: Path) -> Iterator[str]:
    with serve_proxy(config_path, max_body_bytes=1024 * 1024) as url:
        yield url


def test_body_over_the_limit_is_a_413_envelope(small_proxy_url: str, fake: FakeOpenAI) -> None:
    big = {"model": MODEL, "max_tokens": 64, "messages": user("x" * (1536 * 1024))}
    with httpx.Client(base_url=small_proxy_url, headers={"x-api-key": CLIENT_KEY}, timeout=20) as raw:
        response = raw.post("/v1/messages", content=orjson.dumps(big),
                            headers={"content-type": "application/json"})
    assert_envelope(response, 413, "request_too_large")
    assert fake.requests == []


def test_body_under_the_limit_passes(small_proxy_url: str, fake: FakeOpenAI) -> None:
    fake.queue(Text("small enough"))
    with anthropic.Anthropic(base_url=small_proxy_url, api_key=CLIENT_KEY, max_retries=0) as sdk:
        message = sdk.messages.create(model=MODEL, max_tokens=64, messages=user("x" * (512 * 1024)))
    assert message.content[0].text == "small enough"  # type: ignore[union-attr]
