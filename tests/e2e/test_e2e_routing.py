"""Routes and fallbacks as a client sees them: which upstream served, and the x-ccproxy-route header."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest
from e2e.support import CLIENT_KEY, NO_RETRIES, serve_proxy, user
from fakes import Error, FakeOpenAI, Text
from fakes.server import serve_app

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOpenAI, FakeOpenAI, str, str]]:
    first, second = FakeOpenAI(), FakeOpenAI()
    with serve_app(first) as first_url, serve_app(second) as second_url:
        yield first, second, first_url, second_url


@pytest.fixture
def proxy(tmp_path: Path, fakes: tuple[FakeOpenAI, FakeOpenAI, str, str]) -> Iterator[str]:
    first, second, first_url, second_url = fakes
    first.reset()
    second.reset()
    config = tmp_path / "ccproxy.yaml"
    config.write_text(
        f"server: {{{NO_RETRIES}}}\n"
        "providers:\n"
        f"  primary: {{rules: openai, base_url: '{first_url}/v1', api_key: k1}}\n"
        f"  backup: {{rules: openai, base_url: '{second_url}/v1', api_key: k2}}\n"
        "routes:\n"
        "  default: [primary/gpt-4.1, backup/gpt-4.1-mini]\n"
        "  background: backup/gpt-4.1-mini\n"
    )
    with serve_proxy(config) as url:
        yield url


def client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=CLIENT_KEY, max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
def test_a_503_from_the_first_target_falls_back_to_the_second(
        proxy: str, fakes: tuple[FakeOpenAI, FakeOpenAI, str, str], stream: bool) -> None:
    first, second, _, _ = fakes
    first.queue(Error(503, "primary is down"))
    second.queue(Text("served by the backup"))
    raw = client(proxy).messages.with_raw_response.create(
        model="claude-sonnet-x", max_tokens=50, messages=user("hi"), stream=stream)
    assert raw.headers["x-ccproxy-route"] == "backup/gpt-4.1-mini; reason=default"
    if stream:
        text = "".join(event.delta.text for event in raw.parse()
                       if event.type == "content_block_delta" and event.delta.type == "text_delta")
    else:
        text = raw.parse().content[0].text
    assert text == "served by the backup"
    assert len(first.requests) == 1 and len(second.requests) == 1
    assert second.last.body["model"] == "gpt-4.1-mini"


def test_the_last_error_is_what_the_client_sees(proxy: str, fakes: tuple[FakeOpenAI, FakeOpenAI, str, str]) -> None:
    first, second, _, _ = fakes
    first.queue(Error(500, "primary exploded"))
    second.queue(Error(429, "backup is busy", retry_after=3))
    with pytest.raises(anthropic.RateLimitError) as caught:
        client(proxy).messages.create(model="claude-sonnet-x", max_tokens=50, messages=user("hi"))
    assert "[backup] backup is busy" in caught.value.message  # the configured name, not the rule set's
    assert caught.value.response.headers["x-ccproxy-route"] == "backup/gpt-4.1-mini; reason=default"


def test_a_request_error_does_not_fall_back(proxy: str, fakes: tuple[FakeOpenAI, FakeOpenAI, str, str]) -> None:
    first, second, _, _ = fakes
    first.queue(Error(400, "bad request"))
    with pytest.raises(anthropic.BadRequestError):
        client(proxy).messages.create(model="claude-sonnet-x", max_tokens=50, messages=user("hi"))
    assert second.requests == []


def test_an_unreachable_first_target_falls_back(tmp_path: Path, fakes: tuple[FakeOpenAI, FakeOpenAI, str, str]) -> None:
    _, second, _, second_url = fakes
    second.reset()
    second.queue(Text("still here"))
    config = tmp_path / "ccproxy.yaml"
    config.write_text(
        f"server: {{{NO_RETRIES}}}\n"
        "providers:\n"
        "  dead: {rules: openai, base_url: 'http://127.0.0.1:9/v1', api_key: k}\n"
        f"  backup: {{rules: openai, base_url: '{second_url}/v1', api_key: k2}}\n"
        "routes:\n"
        "  default: [dead/x, backup/gpt-4.1-mini]\n"
    )
    with serve_proxy(config) as url:
        answer = client(url).messages.create(model="m", max_tokens=50, messages=user("hi"))
    assert answer.content[0].text == "still here"


def test_background_route_header_names_its_reason(proxy: str, fakes: tuple[FakeOpenAI, FakeOpenAI, str, str]) -> None:
    _, second, _, _ = fakes
    second.queue(Text("quick"))
    response = httpx.post(f"{proxy}/v1/messages", json={
        "model": "claude-haiku-4-5-20251001", "max_tokens": 20, "messages": user("title please")})
    assert response.status_code == 200
    assert response.headers["x-ccproxy-route"] == "backup/gpt-4.1-mini; reason=background"
