"""Fault injection through a served proxy: retries, circuit breakers, timeouts, disconnects, capability
fallback, and the metrics and logs that tell an operator what happened.

Each test serves its own proxy (fresh breakers and metrics) in front of scripted fakes; retry and
breaker timings are tiny, so nothing here waits long. ``/metrics`` is read with prometheus-client's
own parser, and its numbers are checked against the requests each test sent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from e2e.support import serve_proxy, user
from fakes import Error, FakeOpenAI, Text
from fakes.anthropic_upstream import AnthropicStream, FakeAnthropic
from fakes.openai_upstream import Usage
from fakes.server import serve_app
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

SERVER_KEY = "ccpx-resilience-key-0123456789"
FAST_RETRY = "retry: {attempts: 3, backoff: 0.01, max_backoff: 0.02, max_retry_after: 1}"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Upstreams:
    def __init__(self, primary: FakeOpenAI, backup: FakeOpenAI, anthropic_fake: FakeAnthropic,
                 urls: tuple[str, str, str]) -> None:
        self.primary, self.backup, self.anthropic = primary, backup, anthropic_fake
        self.primary_url, self.backup_url, self.anthropic_url = urls


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    primary, backup, anthropic_fake = FakeOpenAI(), FakeOpenAI(), FakeAnthropic()
    with serve_app(primary) as p, serve_app(backup) as b, serve_app(anthropic_fake) as a:
        yield Upstreams(primary, backup, anthropic_fake, (p, b, a))


@pytest.fixture
def fakes(upstreams: Upstreams) -> Upstreams:
    upstreams.primary.reset()
    upstreams.backup.reset()
    upstreams.anthropic.reset()
    return upstreams


ProxyFactory = Callable[..., AbstractContextManager[str]]


@pytest.fixture
def proxy(fakes: Upstreams, tmp_path: Path) -> ProxyFactory:
    """`proxy(server=..., default=..., primary=...)`: a served proxy whose config has the given server
    keys, default route (primary, then backup, by default) and primary provider settings."""

    def build(server: str = FAST_RETRY, default: str = "[primary/gpt-4.1, backup/gpt-4.1-mini]",
              primary: str = "", extra_routes: str = "", extra_providers: str = "") -> AbstractContextManager[str]:
        config = tmp_path / "ccproxy.yaml"
        config.write_text(
            f"server: {{api_key: {SERVER_KEY}, {server}}}\n"
            "providers:\n"
            f"  primary: {{rules: openai, base_url: '{fakes.primary_url}/v1', api_key: k1{primary}}}\n"
            f"  backup: {{rules: openai, base_url: '{fakes.backup_url}/v1', api_key: k2}}\n"
            f"  dead: {{rules: openai, base_url: 'http://127.0.0.1:9/v1', api_key: k3}}\n"
            f"  deepseek: {{base_url: '{fakes.primary_url}/v1', api_key: k4}}\n"
            f"  claude: {{rules: anthropic, base_url: '{fakes.anthropic_url}', api_key: k5}}\n"
            f"{extra_providers}"
            "routes:\n"
            f"  default: {default}\n"
            f"{extra_routes}",
            encoding="utf-8",
        )
        return serve_proxy(config)

    return build


def client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=SERVER_KEY, max_retries=0, timeout=20)


def ask(url: str, stream: bool = False, **params: Any) -> str:
    params.setdefault("model", "claude-sonnet-x")
    params.setdefault("max_tokens", 50)
    params.setdefault("messages", user("hi"))
    with client(url) as sdk:
        if not stream:
            block = sdk.messages.create(**params).content[0]
            return block.text if block.type == "text" else ""
        with sdk.messages.stream(**params) as events:
            return events.get_final_text()


def streamed(url: str) -> AbstractContextManager[httpx.Response]:
    """A raw streamed request, for what the SDK hides (the bytes of an ``error`` event, hanging up)."""
    return httpx.stream("POST", f"{url}/v1/messages", headers={"x-api-key": SERVER_KEY}, timeout=10,
                        json={"model": "claude-x", "max_tokens": 50, "stream": True,
                              "messages": [{"role": "user", "content": "hi"}]})


def metrics(url: str) -> Samples:
    """Every sample of ``/metrics``, parsed by prometheus-client, keyed by name and labels."""
    response = httpx.get(f"{url}/metrics", headers={"x-api-key": SERVER_KEY})
    assert response.status_code == 200, response.text
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# --- retries ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_429_with_retry_after_is_retried_once_then_served(proxy: ProxyFactory, fakes: Upstreams,
                                                             stream: bool) -> None:
    fakes.primary.queue(Error(429, "slow down", retry_after=0.05), Text("second try"))
    with proxy() as url:
        started = time.monotonic()
        assert ask(url, stream=stream) == "second try"
        assert time.monotonic() - started >= 0.05  # Retry-After was waited for
        samples = metrics(url)
    assert len(fakes.primary.requests) == 2 and not fakes.backup.requests
    assert value(samples, "ccproxy_retries_total", provider="primary", model="gpt-4.1") == 1
    assert value(samples, "ccproxy_requests_total", provider="primary", model="gpt-4.1", route="default",
                 status="200") == 1


def test_a_quota_429_is_not_retried(proxy: ProxyFactory, fakes: Upstreams) -> None:
    fakes.primary.queue(Error(429, "You exceeded your current quota", type="insufficient_quota",
                              code="insufficient_quota"))
    with proxy(default="primary/gpt-4.1") as url, pytest.raises(anthropic.APIStatusError) as caught:
        ask(url)
    assert caught.value.status_code == 402 and caught.value.body["error"]["type"] == "billing_error"
    assert len(fakes.primary.requests) == 1


def test_a_quota_429_still_falls_back_to_the_next_target(proxy: ProxyFactory, fakes: Upstreams) -> None:
    fakes.primary.queue(Error(429, "quota", code="insufficient_quota"))
    fakes.backup.queue(Text("backup's quota is fine"))
    with proxy() as url:
        assert ask(url) == "backup's quota is fine"
    assert len(fakes.primary.requests) == 1


def test_a_retry_after_past_the_cap_is_not_waited_for(proxy: ProxyFactory, fakes: Upstreams) -> None:
    fakes.primary.queue(Error(429, "come back in an hour", retry_after=3600))
    fakes.backup.queue(Text("served now"))
    with proxy() as url:
        assert ask(url) == "served now"
    assert len(fakes.primary.requests) == 1


def test_retries_are_spent_then_the_next_target_serves(proxy: ProxyFactory, fakes: Upstreams) -> None:
    fakes.primary.queue(Error(500, "one"), Error(502, "two"), Error(503, "three"))
    fakes.backup.queue(Text("after three tries"))
    with proxy() as url:
        assert ask(url) == "after three tries"
        samples = metrics(url)
    assert len(fakes.primary.requests) == 3
    assert value(samples, "ccproxy_retries_total", provider="primary", model="gpt-4.1") == 2
    assert value(samples, "ccproxy_fallbacks_total", provider="primary", model="gpt-4.1") == 1


def test_a_refused_connection_is_retried_then_falls_back(proxy: ProxyFactory, fakes: Upstreams) -> None:
    fakes.backup.queue(Text("alive"))
    with proxy(default="[dead/gpt-4.1, backup/gpt-4.1-mini]") as url:
        assert ask(url) == "alive"
        samples = metrics(url)
    assert value(samples, "ccproxy_retries_total", provider="dead", model="gpt-4.1") == 2


def test_nothing_is_retried_after_the_first_byte(proxy: ProxyFactory, fakes: Upstreams) -> None:
    fakes.primary.queue(Text("partial answer", chunks=["partial ", "answer"], cut_after=2, abort=True))
    with proxy() as url, pytest.raises(anthropic.APIError):
        ask(url, stream=True)
    assert len(fakes.primary.requests) == 1 and not fakes.backup.requests


# --- timeouts --------------------------------------------------------------------------------------


@pytest.fixture
def unaccepting_port() -> Iterator[int]:
    """A port whose accept queue is full: the kernel drops new SYNs, so connecting hangs (a real
    connect timeout, on loopback)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port: int = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for sock in (*fillers, server):
        sock.close()


def test_a_connect_timeout_falls_back_without_a_retry(proxy: ProxyFactory, fakes: Upstreams,
                                                      unaccepting_port: int) -> None:
    fakes.backup.queue(Text("reachable"))
    stuck = (f"  stuck: {{rules: openai, base_url: 'http://127.0.0.1:{unaccepting_port}/v1', api_key: k6, "
             "timeout: {connect: 0.2}}\n")
    with proxy(default="[stuck/gpt-4.1, backup/gpt-4.1-mini]", extra_providers=stuck) as url:
        assert ask(url) == "reachable"
        samples = metrics(url)
    assert value(samples, "ccproxy_retries_total", provider="stuck", model="gpt-4.1") == 0
    assert value(samples, "ccproxy_fallbacks_total", provider="stuck", model="gpt-4.1") == 1


def test_a_first_byte_timeout_falls_back_without_a_retry(proxy: ProxyFactory, fakes: Upstreams) -> None:
    fakes.primary.queue(Text("too late", first_byte_delay=1.0))
    fakes.backup.queue(Text("in time"))
    with proxy(primary=", timeout: {first_byte: 0.2}") as url:
        assert ask(url) == "in time"
    assert len(fakes.primary.requests) == 1


def test_an_idle_timeout_mid_stream_ends_it_with_an_error_event(proxy: ProxyFactory, fakes: Upstreams) -> None:
    fakes.primary.queue(Text("a b c", chunks=["a ", "b ", "c"], delay_between_chunks=1.0))
    with proxy(primary=", timeout: {read: 0.2}") as url, streamed(url) as response:
        body = response.read().decode()
    assert "event: error" in body and "timeout_error" in body
    assert len(fakes.primary.requests) == 1 and not fakes.backup.requests


def test_a_total_timeout_of_a_whole_answer_falls_back(proxy: ProxyFactory, fakes: Upstreams) -> None:
    fakes.primary.queue(Text("slow whole answer", first_byte_delay=0.6))
    fakes.backup.queue(Text("quick"))
    with proxy(primary=", timeout: {total: 0.2}") as url:
        assert ask(url) == "quick"


# --- circuit breaker -------------------------------------------------------------------------------


def test_a_5xx_storm_opens_the_breaker_the_fallback_serves_and_half_open_recovers(
        proxy: ProxyFactory, fakes: Upstreams) -> None:
    fakes.primary.default = Error(500, "storm")
    fakes.backup.default = Text("backup")
    # open_seconds leaves a loaded machine time for the requests made while the breaker is open
    server = "retry: {attempts: 1}, circuit_breaker: {failures: 2, open_seconds: 2}"
    with proxy(server=server) as url:
        assert [ask(url) for _ in range(2)] == ["backup", "backup"]
        assert len(fakes.primary.requests) == 2
        assert value(metrics(url), "ccproxy_circuit_breaker_state", provider="primary", model="gpt-4.1") == 1
        assert ask(url) == "backup"
        assert len(fakes.primary.requests) == 2  # open: straight to the backup
        time.sleep(2.05)
        fakes.primary.default = Text("primary is back")
        assert ask(url) == "primary is back"  # half-open: one trial, which succeeds
        assert ask(url) == "primary is back"
        samples = metrics(url)
    assert value(samples, "ccproxy_circuit_breaker_state", provider="primary", model="gpt-4.1") == 0
    assert value(samples, "ccproxy_requests_total", provider="backup", model="gpt-4.1-mini", route="default",
                 status="200") == 3


def test_a_failed_half_open_trial_opens_the_breaker_again(proxy: ProxyFactory, fakes: Upstreams) -> None:
    fakes.primary.default = Error(503, "still down")
    fakes.backup.default = Text("backup")
    with proxy(server="retry: {attempts: 1}, circuit_breaker: {failures: 1, open_seconds: 0.2}") as url:
        ask(url)
        time.sleep(0.25)
        assert ask(url) == "backup"  # the trial fails; the backup serves
        state = value(metrics(url), "ccproxy_circuit_breaker_state", provider="primary", model="gpt-4.1")
    assert state == 1  # open again (it stays so until a request asks after open_seconds)
    assert len(fakes.primary.requests) == 2


def test_an_open_breaker_with_no_next_target_answers_529(proxy: ProxyFactory, fakes: Upstreams) -> None:
    fakes.primary.default = Error(500, "down")
    with proxy(server="retry: {attempts: 1}, circuit_breaker: {failures: 1, open_seconds: 30}",
               default="primary/gpt-4.1") as url:
        with pytest.raises(anthropic.InternalServerError):
            ask(url)
        with pytest.raises(anthropic.APIStatusError) as caught:
            ask(url)
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"
    assert "circuit breaker is open" in caught.value.body["error"]["message"]
    assert len(fakes.primary.requests) == 1


def test_a_request_error_does_not_count_against_the_breaker(proxy: ProxyFactory, fakes: Upstreams) -> None:
    fakes.primary.default = Error(400, "bad request")
    with proxy(server="circuit_breaker: {failures: 1}", default="primary/gpt-4.1") as url:
        for _ in range(3):
            with pytest.raises(anthropic.BadRequestError):
                ask(url)
    assert len(fakes.primary.requests) == 3


# --- client disconnect -----------------------------------------------------------------------------


def test_a_client_that_hangs_up_closes_the_upstream_connection(proxy: ProxyFactory, fakes: Upstreams) -> None:
    fakes.primary.queue(Text("x" * 40, chunks=["x"] * 40, delay_between_chunks=0.1))
    with proxy() as url:
        with streamed(url) as response:
            next(response.iter_raw())  # the stream started; now the client goes away
        deadline = time.monotonic() + 5
        while not fakes.primary.last.disconnected and time.monotonic() < deadline:
            time.sleep(0.02)
    assert fakes.primary.last.disconnected


# --- capability fallback ---------------------------------------------------------------------------

STRUCTURED = {"model": "claude-x", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}],
              "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}


def post(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/messages", json=body, headers={"x-api-key": SERVER_KEY}, timeout=10)


def test_a_refusal_by_the_rules_is_the_clients_error_by_default(proxy: ProxyFactory, fakes: Upstreams) -> None:
    with proxy(default="[deepseek/deepseek-chat, backup/gpt-4.1-mini]") as url:
        response = post(url, STRUCTURED)
    assert response.status_code == 400 and "not supported by deepseek" in response.json()["error"]["message"]
    assert not fakes.primary.requests and not fakes.backup.requests


def test_a_refusal_by_the_rules_falls_through_when_configured(proxy: ProxyFactory, fakes: Upstreams) -> None:
    fakes.backup.queue(Text('{"ok": true}'))
    with proxy(server=f"{FAST_RETRY}, fallback_on_unsupported: true",
               default="[deepseek/deepseek-chat, backup/gpt-4.1-mini]") as url:
        response = post(url, STRUCTURED)
    assert response.status_code == 200, response.text
    assert response.headers["x-ccproxy-route"] == "backup/gpt-4.1-mini; reason=default"
    assert not fakes.primary.requests and len(fakes.backup.requests) == 1


# --- metrics ---------------------------------------------------------------------------------------


def test_metrics_count_requests_latency_ttfb_and_tokens(proxy: ProxyFactory, fakes: Upstreams) -> None:
    fakes.primary.queue(Text("one", usage=Usage(prompt=100, completion=7)),
                        Text("two", usage=Usage(prompt=50, completion=3)),
                        Error(400, "bad"))
    fakes.anthropic.queue(AnthropicStream.text("relayed", chunks=["rel", "ayed"]))
    extra = "  models:\n    claude-relay: claude/claude-sonnet-4-5\n"
    with proxy(extra_routes=extra) as url:
        ask(url)
        ask(url, stream=True)
        with pytest.raises(anthropic.BadRequestError):
            ask(url)
        assert ask(url, stream=True, model="claude-relay") == "relayed"
        samples = metrics(url)
    primary = {"provider": "primary", "model": "gpt-4.1"}
    assert value(samples, "ccproxy_requests_total", **primary, route="default", status="200") == 2
    assert value(samples, "ccproxy_requests_total", **primary, route="default", status="400") == 1
    assert value(samples, "ccproxy_tokens_total", **primary, direction="in") == 150
    assert value(samples, "ccproxy_tokens_total", **primary, direction="out") == 10
    relay = {"provider": "claude", "model": "claude-sonnet-4-5"}
    assert value(samples, "ccproxy_requests_total", **relay, route="model", status="200") == 1
    assert value(samples, "ccproxy_tokens_total", **relay, direction="in") == 25  # message_start
    assert value(samples, "ccproxy_tokens_total", **relay, direction="out") == 42  # message_delta
    assert value(samples, "ccproxy_request_duration_seconds_count", provider="primary", route="default") == 3
    assert value(samples, "ccproxy_upstream_ttfb_seconds_count", **primary) == 3
    assert value(samples, "ccproxy_request_duration_seconds_sum", provider="primary", route="default") > 0


def test_unknown_model_names_are_grouped_as_other(proxy: ProxyFactory, fakes: Upstreams) -> None:
    fakes.primary.default = Text("ok")
    with proxy() as url:
        for model in ("primary/made-up-1", "primary/made-up-2"):
            ask(url, model=model)
        samples = metrics(url)
    assert value(samples, "ccproxy_requests_total", provider="primary", model="other", route="explicit",
                 status="200") == 2
    assert not [key for key in samples if ("model", "made-up-1") in key[1]]


def test_metrics_need_the_server_key(proxy: ProxyFactory) -> None:
    with proxy() as url:
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"x-api-key": "wrong"}).status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {SERVER_KEY}"}).status_code == 200


# --- request ids in logs ---------------------------------------------------------------------------


def test_the_request_id_is_in_every_log_line_and_the_access_log(
        proxy: ProxyFactory, fakes: Upstreams, caplog: pytest.LogCaptureFixture) -> None:
    fakes.primary.queue(Error(503, "down"), Error(503, "down"), Error(503, "down"))
    fakes.backup.queue(Text("fine", usage=Usage(prompt=9, completion=2)))
    caplog.set_level(logging.INFO, logger="ccproxy_engine")
    with proxy(server=f"{FAST_RETRY}, access_log: true") as url:
        response = httpx.post(f"{url}/v1/messages", headers={"x-api-key": SERVER_KEY, "request-id": "trace-me-42"},
                              json={"model": "claude-x", "max_tokens": 50,
                                    "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200 and response.headers["request-id"] == "trace-me-42"
    ours = [r for r in caplog.records if r.name == "ccproxy_engine"]
    assert ours and all(r.getMessage().startswith("[trace-me-42] ") for r in ours), [r.getMessage() for r in ours]
    assert any("retry" in r.getMessage() for r in ours) and any("trying backup" in r.getMessage() for r in ours)
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "ccproxy_engine.access"]
    assert access == [{"request_id": "trace-me-42", "status": 200, "provider": "backup", "model": "gpt-4.1-mini",
                       "route": "default", "stream": False, "retries": 2, "fallbacks": 1, "input_tokens": 9,
                       "output_tokens": 2, "duration_ms": access[0]["duration_ms"]}]


def test_no_access_log_unless_asked(proxy: ProxyFactory, fakes: Upstreams, caplog: pytest.LogCaptureFixture) -> None:
    fakes.primary.queue(Text("quiet"))
    caplog.set_level(logging.INFO, logger="ccproxy_engine")
    with proxy() as url:
        ask(url)
    assert not [r for r in caplog.records if r.name == "ccproxy_engine.access"]
