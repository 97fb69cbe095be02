"""Helpers of the end-to-end suite (imported as `e2e.support`; the fixtures are in conftest.py).

`read_events` parses an Anthropic SSE body with the `anthropic` SDK's own decoder and validates each
event against the SDK's `RawMessageStreamEvent`; `accumulate` folds events into a message with the
SDK's accumulator, as `client.messages.stream(...).get_final_message()` would. Use them where the
SDK's client cannot send the request (Claude Code's bodies) or would hide the wire (pings).

Where the SDK can send it, `ask` is one request, whole or streamed, and `stream_events` keeps the
events a streamed one yields. `Recorded` and `replay` post the real Claude Code requests of
tests/fixtures/claude-code as the CLI sent them; `each_claude_code_request` runs a test per request.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import anthropic
import httpx
import pydantic
import pytest
from anthropic._streaming import SSEDecoder
from anthropic.lib.streaming import ParsedMessageStreamEvent
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, MessageParam, RawMessageStreamEvent
from fakes import serve_app

from ccproxy_engine import create_app
from ccproxy_engine._cli import prepare

UPSTREAM_KEY = "sk-e2e-upstream"
CLIENT_KEY = "sk-ant-e2e-client"
MODEL = "claude-e2e"
"""Any Anthropic model name routes to `routes.default`; this one is on no SDK deprecation list."""
ROUTE_HEADER = "openai/gpt-4.1; reason=default"
NO_RETRIES = "retry: {attempts: 1}, circuit_breaker: {failures: 0}"
"""Server keys of suites whose tests script one reply per request and share a proxy (no retry takes a
second reply, no breaker opens across tests); test_e2e_resilience.py covers both."""
WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CLAUDE_CODE_FIXTURES = Path(__file__).parent.parent / "fixtures" / "claude-code"
CLAUDE_CODE_REQUESTS = sorted(CLAUDE_CODE_FIXTURES.glob("*/[0-9][0-9][0-9].json"))
#: Hop-by-hop or length headers that belonged to the original connection.
DROPPED_HEADERS = {"host", "content-length", "connection", "accept-encoding"}
each_claude_code_request = pytest.mark.parametrize(
    "path", CLAUDE_CODE_REQUESTS, ids=[f"{p.parent.name}/{p.stem}" for p in CLAUDE_CODE_REQUESTS])

Event = tuple[str, dict[str, Any]]
"""One SSE event as (event name, JSON payload)."""
StreamEvent: TypeAlias = "ParsedMessageStreamEvent[Any]"
"""One event as the SDK's `client.messages.stream(...)` yields it."""

_EVENT: pydantic.TypeAdapter[RawMessageStreamEvent] = pydantic.TypeAdapter(RawMessageStreamEvent)


def write_config(directory: Path, fake_url: str, server: str = "") -> Path:
    """A config whose only provider is `openai`, pointed at the fake, routing everything to gpt-4.1.
    No retries and no breakers: each test scripts one reply per request, and many tests share a proxy
    (test_e2e_resilience.py covers both). `server` adds keys to the ``server`` mapping."""
    path = directory / "ccproxy.yaml"
    path.write_text(
        f"server: {{{NO_RETRIES}{', ' + server if server else ''}}}\n"
        "providers:\n"
        f"  openai: {{base_url: '{fake_url}/v1', api_key: {UPSTREAM_KEY}}}\n"
        "routes:\n"
        "  default: [openai/gpt-4.1]\n",
        encoding="utf-8",
    )
    return path


@contextlib.contextmanager
def serve_proxy(config: Path, **options: Any) -> Iterator[str]:
    """The app `serve` builds (same `prepare` + `create_app`), served on uvicorn; yields its base URL.
    `options` go to `create_app` (e.g. `max_body_bytes`)."""
    settings, providers = prepare(config, [])
    with serve_app(create_app(settings, providers, **options)) as url:
        yield url


def user(text: str) -> list[MessageParam]:
    return [{"role": "user", "content": text}]


def ask(client: anthropic.Anthropic, streamed: bool, **params: Any) -> Message:
    """One request, as a whole message or through the SDK's stream accumulator (the same scenario
    must come out the same both ways); `model`, `max_tokens` and `messages` have defaults."""
    params.setdefault("model", MODEL)
    params.setdefault("max_tokens", 256)
    params.setdefault("messages", user("Hello"))
    if not streamed:
        message: Message = client.messages.create(**params)
        return message
    with client.messages.stream(**params) as stream:
        return stream.get_final_message()


def stream_events(client: anthropic.Anthropic, **params: Any) -> tuple[list[StreamEvent], Message]:
    """A streamed request's events as the SDK yields them, and the message it accumulates: for
    tests about how the answer arrives, not only what it says."""
    with client.messages.stream(**params) as sdk_stream:
        events = list(sdk_stream)
        return events, sdk_stream.get_final_message()


def text_deltas(events: Iterable[StreamEvent]) -> list[str]:
    return [event.delta.text for event in events
            if event.type == "content_block_delta" and event.delta.type == "text_delta"]


def block_starts(events: Iterable[StreamEvent]) -> list[tuple[int, str]]:
    """(index, type) of each content block as it starts: the order the client sees them in."""
    return [(event.index, event.content_block.type) for event in events if event.type == "content_block_start"]


@dataclass(frozen=True)
class Recorded:
    """A request the real Claude Code CLI sent, as recorded (tests/fixtures/claude-code), less the
    headers of its original connection."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @classmethod
    def load(cls, file: Path) -> Recorded:
        fixture = json.loads(file.read_text(encoding="utf-8"))
        headers = {k: v for k, v in fixture["headers"].items() if k.lower() not in DROPPED_HEADERS}
        return cls(fixture["path"], headers, fixture["body"])


def replay(http: httpx.Client, recorded: Recorded) -> tuple[httpx.Response, list[Event]]:
    """Post `recorded` byte for byte (headers and `?beta=true` included); the answer must be a 200
    (else the failure shows its body), and its events are read as the SDK decodes them."""
    content = json.dumps(recorded.body).encode()
    with http.stream("POST", recorded.path, content=content, headers=recorded.headers) as response:
        raw = response.read() if response.status_code != 200 else b""
        assert response.status_code == 200, raw.decode(errors="replace")
        return response, read_events(response.iter_bytes())


class StreamFailed(Exception):
    """The stream carried an `error` event (where the SDK's stream raises); `payload` is its data."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(payload)
        self.payload = payload


def read_events(chunks: Iterable[bytes]) -> list[Event]:
    """Every event of an Anthropic SSE body, pings and errors included, as the SDK decodes them.

    Each payload is checked: its `type` equals the event name, an `error` has the envelope's
    `type` and `message`, and every other event but `ping` validates as `RawMessageStreamEvent`.
    """
    events = []
    for sse in SSEDecoder().iter_bytes(iter(chunks)):
        assert sse.event is not None, f"record without an event name: {sse.data!r}"
        payload = sse.json()
        assert payload["type"] == sse.event, f"event {sse.event!r} carries a {payload['type']!r} payload"
        if sse.event == "error":
            assert set(payload["error"]) >= {"type", "message"}, payload
        elif sse.event != "ping":
            _EVENT.validate_python(payload)
        events.append((sse.event, payload))
    return events


def accumulate(events: Iterable[Event]) -> Message:
    """The message the SDK's stream helper builds from `events` (it raises on a bad order);
    `StreamFailed` at an `error` event."""
    snapshot: Any = None
    json_bufs: dict[int, bytes] = {}
    for name, payload in events:
        if name == "error":
            raise StreamFailed(payload)
        if name != "ping":
            event = _EVENT.validate_python(payload)
            snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None, "the stream had no message_start"
    return Message.model_validate(snapshot.model_dump())


def names(events: Iterable[Event]) -> list[str]:
    return [name for name, _ in events]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
