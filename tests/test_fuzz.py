"""Property-based fuzzing of the HTTP app (hypothesis, bounded): bodies, headers and model names.

Whatever a client sends, the proxy answers with a status below 500 or an upstream-caused 5xx, every
error is an Anthropic envelope, and no provider key appears in a response or a log line. The app is
driven in process (ASGI, no sockets) so that hundreds of examples stay cheap; the upstream is the
fake OpenAI server, which sometimes answers with an error body that echoes the key.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fakes import Error, FakeOpenAI, Text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient

from ccproxy_engine import create_app
from ccproxy_engine._cli import prepare
from ccproxy_engine._upstream import UpstreamClient

UPSTREAM_KEY = "sk-fuzz-upstream-key-0123456789"
SERVER_KEY = "fuzz-server-key-abcdef"
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False)
                | st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)
model_names = st.text(max_size=40) | st.builds(lambda a, b: f"{a}/{b}", st.sampled_from(["openai", "nope", ""]),
                                               st.text(max_size=30))
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60)
blocks = st.fixed_dictionaries({"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking",
                                                          "document", "weird"])},
                               optional={"text": json_values, "input": json_values, "id": json_values,
                                         "source": json_values, "content": json_values, "name": json_values,
                                         "tool_use_id": json_values, "thinking": json_values})
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"]),
                                           "content": st.text(max_size=50) | st.lists(blocks, max_size=3)}),
                    max_size=4)
anthropic_bodies = st.fixed_dictionaries(
    {"model": model_names, "messages": messages},
    optional={"max_tokens": json_values | st.integers(-5, 10**6), "stream": st.booleans(),
              "system": json_values, "tools": json_values, "tool_choice": json_values,
              "temperature": json_values | st.floats(-5, 5), "top_p": st.floats(-1, 2),
              "top_k": st.integers(-3, 100), "thinking": json_values, "metadata": json_values,
              "stop_sequences": json_values})


class Harness:
    """The app `serve` builds for a one-provider config, with the fake OpenAI behind it in process."""

    def __init__(self, client: AsyncTestClient[Any], fake: FakeOpenAI) -> None:
        self.client = client
        self.fake = fake


def fake_reply(body: dict[str, Any]) -> Any:
    """Mostly a normal answer; sometimes an error whose body echoes the request's credentials."""
    seed = len(orjson.dumps(body)) % 4
    if seed == 0:
        return Error(401, body={"error": {"message": f"bad key: Bearer {UPSTREAM_KEY}", "type": "auth"}})
    if seed == 1:
        return Error(503, f"overloaded (key {UPSTREAM_KEY})")
    return Text("ok")


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    fake = FakeOpenAI(responder=fake_reply, api_key=UPSTREAM_KEY, check_sdk_types=False)
    config = tmp_path / "ccproxy.yaml"
    config.write_text(f"server: {{api_key: {SERVER_KEY}}}\n"
                      f"providers:\n  openai: {{base_url: 'http://upstream.test/v1', api_key: {UPSTREAM_KEY}}}\n"
                      "routes:\n  default: openai/gpt-4.1\n", encoding="utf-8")
    settings_, rules = prepare(config, [])
    upstream = UpstreamClient(transport=httpx.ASGITransport(app=fake))  # type: ignore[arg-type]
    app = create_app(settings_, rules, upstream=upstream, max_body_bytes=256 * 1024)
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as client:
        yield Harness(client, fake)


def check_answer(response: httpx.Response, logs: list[logging.LogRecord]) -> None:
    assert UPSTREAM_KEY not in response.text
    assert all(UPSTREAM_KEY not in record.getMessage() for record in logs)
    assert response.status_code != 500 or response.json()["error"]["type"] == "api_error"
    assert response.status_code < 500 or response.status_code in {502, 503, 504, 529}, response.text
    if response.status_code >= 400:
        body = response.json()
        assert body["type"] == "error"
        assert isinstance(body["error"]["type"], str) and isinstance(body["error"]["message"], str)
    assert all(value.isascii() and value.isprintable() for value in response.headers.values())


async def send(harness: Harness, caplog: pytest.LogCaptureFixture, body: bytes,
               headers: dict[str, bytes]) -> None:
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        response = await harness.client.post("/v1/messages", content=body,
                                             headers={"x-api-key": SERVER_KEY.encode(),
                                                      "content-type": b"application/json", **headers})
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            assert UPSTREAM_KEY not in response.text
            return
    check_answer(response, caplog.records)


@FUZZ
@given(body=anthropic_bodies)
async def test_any_anthropic_shaped_body(harness: Harness, caplog: pytest.LogCaptureFixture,
                                        body: dict[str, Any]) -> None:
    await send(harness, caplog, orjson.dumps(body), {})


@FUZZ
@given(raw=st.binary(max_size=300) | json_values.map(orjson.dumps))
async def test_any_bytes(harness: Harness, caplog: pytest.LogCaptureFixture, raw: bytes) -> None:
    await send(harness, caplog, raw, {})


@FUZZ
@given(model=model_names, request_id=header_text, beta=header_text, key=header_text)
async def test_any_model_name_and_headers(harness: Harness, caplog: pytest.LogCaptureFixture, model: str,
                                    request_id: str, beta: str, key: str) -> None:
    body = orjson.dumps({"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]})
    headers = {name: value.encode("latin-1") for name, value in
               {"request-id": request_id, "anthropic-beta": beta, "authorization": f"Bearer {key}"}.items()}
    await send(harness, caplog, body, headers)
