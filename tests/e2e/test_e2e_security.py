"""What the proxy promises a hostile client (docs/security.md), tried through a served proxy.

Each test here failed before its fix: the server key was documented and never checked, upstream error
bodies that echo request headers reached clients and logs with the provider key inside, a model name
could steer the Gemini URL, an unencodable model name left the upstream stream open, and Anthropic's
range checks were not applied.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from e2e.support import MODEL, UPSTREAM_KEY, serve_proxy, user, wait_until, write_config
from fakes import Error, FakeOpenAI, Text, serve_app

from ccproxy_engine import _app

pytestmark = pytest.mark.e2e

SERVER_KEY = "ccpx-server-key-0123456789"
STREAM_BODY = {"model": MODEL, "max_tokens": 64, "stream": True, "messages": user("Hi")}


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["type"] == "error", body
    error: dict[str, Any] = body["error"]
    return error


# --- the server key ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_proxy(upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = write_config(tmp_path_factory.mktemp("keyed"), upstream.url, server=f"api_key: {SERVER_KEY}")
    with serve_proxy(config) as url:
        yield url


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": user("Hi")}),
    ("POST", "/v1/messages?beta=true", {"model": MODEL, "max_tokens": 8, "messages": user("Hi")}),
    ("POST", "/v1/messages/count_tokens", {"model": MODEL, "messages": user("Hi")}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/openai/gpt-4.1", None),
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": user("Hi")}),
    ("GET", "/ui/api/requests", None),
    ("GET", "/ui/api/summary", None),
])
@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong-key"}, {"authorization": "Bearer wrong-key"},
                                     {"authorization": SERVER_KEY}, {"x-api-key": SERVER_KEY[:-1]}],
                         ids=["none", "wrong-x-api-key", "wrong-bearer", "no-bearer-scheme", "prefix"])
def test_every_endpoint_requires_the_key(keyed_proxy: str, fake: FakeOpenAI, method: str, path: str,
                                         body: Any, headers: dict[str, str]) -> None:
    response = httpx.request(method, keyed_proxy + path, json=body, headers=headers, timeout=10)
    assert response.status_code == 401
    if path.startswith(("/v1/chat/", "/v1/models")):  # OpenAI's API (models: no anthropic-version sent)
        assert response.json()["error"]["code"] == "invalid_api_key"
    else:
        assert error_of(response)["type"] == "authentication_error"
    assert response.headers["request-id"]
    assert fake.requests == []


def test_the_key_is_taken_as_x_api_key_or_bearer(keyed_proxy: str, fake: FakeOpenAI) -> None:
    fake.queue(Text("one"), Text("two"))
    with anthropic.Anthropic(base_url=keyed_proxy, api_key=SERVER_KEY, max_retries=0) as sdk:
        assert sdk.messages.create(model=MODEL, max_tokens=8, messages=user("Hi")).content[0].text == "one"  # type: ignore[union-attr]
    with anthropic.Anthropic(base_url=keyed_proxy, auth_token=SERVER_KEY, max_retries=0) as sdk:
        assert sdk.messages.create(model=MODEL, max_tokens=8, messages=user("Hi")).content[0].text == "two"  # type: ignore[union-attr]


def test_probes_answer_without_the_key(keyed_proxy: str) -> None:
    assert httpx.get(f"{keyed_proxy}/health").status_code == 200
    assert httpx.head(f"{keyed_proxy}/").status_code == 200


# --- secrets in upstream errors ------------------------------------------------------------------


ECHOED = {"error": {"message": f"bad request; received headers: Authorization: Bearer {UPSTREAM_KEY} "
                               f"x-api-key={UPSTREAM_KEY}", "type": "invalid_request_error"}}


@pytest.mark.parametrize("status", [400, 401, 500])
def test_an_upstream_error_that_echoes_the_key_is_redacted(http: httpx.Client, fake: FakeOpenAI, status: int,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    fake.queue(Error(status, body=ECHOED))
    with caplog.at_level(logging.DEBUG):
        response = http.post("/v1/messages", json={"model": MODEL, "max_tokens": 8, "messages": user("Hi")})
    assert response.status_code == status
    assert UPSTREAM_KEY not in response.text
    assert "[redacted]" in error_of(response)["message"]
    assert all(UPSTREAM_KEY not in record.getMessage() for record in caplog.records)


def test_an_in_stream_error_that_echoes_the_key_is_redacted(http: httpx.Client, fake: FakeOpenAI) -> None:
    fake.queue(Text(chunks=["Hel", "lo"], mid_stream_error=Error(500, f"upstream saw key {UPSTREAM_KEY}")))
    with http.stream("POST", "/v1/messages", json=STREAM_BODY) as response:
        text = response.read().decode()
    assert "event: error" in text
    assert UPSTREAM_KEY not in text


# --- model names ---------------------------------------------------------------------------------


class PathRecorder:
    """An upstream that records each request's raw path and answers a Gemini-shaped 404."""

    def __init__(self) -> None:
        self.raw_paths: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.raw_paths.append(scope["raw_path"])
        body = orjson.dumps({"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}})
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def gemini_paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PathRecorder, str]]:
    recorder = PathRecorder()
    with serve_app(recorder) as upstream_url:
        config = tmp_path_factory.mktemp("gemini-url") / "ccproxy.yaml"
        config.write_text(f"providers:\n  gemini: {{base_url: '{upstream_url}/v1beta', api_key: g-key-12345678}}\n"
                          "routes:\n  default: gemini/gemini-2.5-pro\n", encoding="utf-8")
        with serve_proxy(Path(config)) as url:
            yield recorder, url


@pytest.mark.parametrize("model", ["x#frag", "x?alt=json&key=1", "a/b", "tunedModels/x y", "модель"])
def test_a_model_name_is_one_url_path_segment(gemini_paths: tuple[PathRecorder, str], model: str) -> None:
    recorder, url = gemini_paths
    recorder.raw_paths.clear()
    response = httpx.post(f"{url}/v1/messages", timeout=10,
                          json={"model": f"gemini/{model}", "max_tokens": 8, "messages": user("Hi")})
    assert response.status_code == 404, response.text
    [raw_path] = recorder.raw_paths
    segment = raw_path.removeprefix(b"/v1beta/models/").split(b":")[0]
    assert b"/" not in segment and b"#" not in segment and b"?" not in segment
    assert httpx.URL(f"http://h/{segment.decode()}").path == f"/{model}"


@pytest.mark.parametrize("model", ["..", "../../v1/files", "x/../y", ".", "a\r\nx-evil: 1", "a\x00b", "a\tb"])
def test_dot_segments_and_control_characters_are_refused(gemini_paths: tuple[PathRecorder, str], model: str) -> None:
    recorder, url = gemini_paths
    recorder.raw_paths.clear()
    for stream in (False, True):
        response = httpx.post(f"{url}/v1/messages", timeout=10, json={
            "model": f"gemini/{model}", "max_tokens": 8, "stream": stream, "messages": user("Hi")})
        assert response.status_code == 400
        assert error_of(response)["type"] == "invalid_request_error"
        assert "model" in error_of(response)["message"]
    assert recorder.raw_paths == []


def test_a_non_latin1_model_gets_an_encodable_route_header(http: httpx.Client, fake: FakeOpenAI) -> None:
    fake.queue(Text(chunks=["ok"]))
    with http.stream("POST", "/v1/messages", json={**STREAM_BODY, "model": "openai/модель"}) as response:
        assert response.status_code == 200
        assert response.headers["x-ccproxy-route"] == "openai/%D0%BC%D0%BE%D0%B4%D0%B5%D0%BB%D1%8C; reason=explicit"
        assert b"message_stop" in response.read()


# --- the upstream response has one owner ---------------------------------------------------------


def test_a_failure_after_the_upstream_started_closes_it(http: httpx.Client, fake: FakeOpenAI,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything failing between the upstream's answer and the first byte to the client (here: building
    the response) still closes the upstream stream, so a pool never fills with abandoned streams."""

    def broken(answer: Any) -> Any:
        raise RuntimeError("the response could not be built")

    monkeypatch.setattr(_app, "_send", broken)
    for _ in range(3):
        fake.queue(Text(chunks=[f"w{i} " for i in range(100)], delay_between_chunks=0.05))
        response = http.post("/v1/messages", json=STREAM_BODY)
        assert response.status_code == 500
        assert error_of(response) == {"type": "api_error", "message": "internal error"}
        upstream = fake.last
        assert wait_until(lambda upstream=upstream: upstream.disconnected), "the upstream stream was left open"


# --- Anthropic's range checks --------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "message"), [
    ("max_tokens", 0, "max_tokens: range: 1.."),
    ("max_tokens", -5, "max_tokens: range: 1.."),
    ("temperature", 123, "temperature: range: 0..1"),
    ("temperature", -0.1, "temperature: range: 0..1"),
    ("top_p", 1.5, "top_p: range: 0..1"),
    ("top_k", -1, "top_k: range: 0.."),
])
def test_anthropic_range_checks(http: httpx.Client, fake: FakeOpenAI, field: str, value: float,
                                message: str) -> None:
    body = {"model": MODEL, "max_tokens": 8, "messages": user("Hi"), field: value}
    response = http.post("/v1/messages", json=body)
    assert response.status_code == 400
    assert error_of(response) == {"type": "invalid_request_error", "message": message}
    assert fake.requests == []


def test_values_at_the_edges_of_the_ranges_pass(http: httpx.Client, fake: FakeOpenAI) -> None:
    fake.queue(Text("ok"))
    body = {"model": MODEL, "max_tokens": 1, "temperature": 1, "top_p": 0, "messages": user("Hi")}
    assert http.post("/v1/messages", json=body).status_code == 200


# --- work that grows with the input --------------------------------------------------------------


def test_health_answers_while_a_huge_body_is_counted(proxy_url: str) -> None:
    """15 MB of text without spaces in two messages: the count is bounded and off the loop."""
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "z" * 7_500_000},
                                                      {"role": "user", "content": "q" * 7_500_000}]})
    with httpx.Client(base_url=proxy_url, timeout=60) as client, \
            concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        counting = pool.submit(client.post, "/v1/messages/count_tokens", content=body,
                               headers={"content-type": "application/json"})
        slowest = 0.0
        while not counting.done():
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            slowest = max(slowest, time.monotonic() - started)
        assert counting.result().status_code == 200
    assert counting.result().json()["input_tokens"] > 5_000_000
    assert slowest < 0.5
