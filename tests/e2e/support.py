"""Helpers of the end-to-end suite (imported as `e2e.support`; the fixtures are in conftest.py).

`read_events` parses an Anthropic SSE body with the `anthropic` SDK's own decoder and validates each
event against the SDK's `RawMessageStreamEvent`; `accumulate` folds events into a message with the
SDK's accumulator, as `client.messages.stream(...).get_final_message()` would. Use them where the
SDK's client cannot send the request (Claude Code's bodies) or would hide the wire (pings).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pydantic
from anthropic._streaming import SSEDecoder
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

Event = tuple[str, dict[str, Any]]
"""One SSE event as (event name, JSON payload)."""

_EVENT: pydantic.TypeAdapter[RawMessageStreamEvent] = pydantic.TypeAdapter(RawMessageStreamEvent)


def write_config(directory: Path, fake_url: str) -> Path:
    """A config whose only provider is `openai`, pointed at the fake, routing everything to gpt-4.1."""
    path = directory / "ccproxy.yaml"
    path.write_text(
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
