"""Stream lifecycle through a running proxy: a client that leaves, an upstream that goes quiet."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
from e2e.support import MODEL, accumulate, names, read_events, user, wait_until
from fakes import Chunks, FakeOpenAI, Text, chunk

import ccproxy_engine._proxy

pytestmark = pytest.mark.e2e

STREAM_BODY = {"model": MODEL, "max_tokens": 64, "stream": True, "messages": user("Hi")}


def test_client_disconnect_cancels_the_upstream(proxy_url: str, fake: FakeOpenAI) -> None:
    pieces = [f"w{i} " for i in range(100)]
    fake.queue(Text(chunks=pieces, delay_between_chunks=0.05))  # 5 s if nobody stops it
    started = time.monotonic()
    with httpx.Client(base_url=proxy_url, timeout=10) as raw, \
            raw.stream("POST", "/v1/messages", json=STREAM_BODY) as response:
        assert response.status_code == 200
        seen = b""
        for part in response.iter_bytes():
            seen += part
            if b"content_block_delta" in seen:
                break
    upstream = fake.last
    assert wait_until(lambda: upstream.disconnected), "the proxy kept reading a stream nobody wanted"
    assert time.monotonic() - started < 3


def test_silent_upstream_gets_keepalive_pings(http: httpx.Client, fake: FakeOpenAI,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ccproxy_engine._proxy, "KEEPALIVE_SECONDS", 0.1)
    # Three writes 0.35 s apart: headers with the role chunk, the first text, then the rest at once.
    rest = b"".join(b"data: " + orjson.dumps(c) + b"\n\n"
                    for c in [chunk({"content": "long."}), chunk({}, "stop")])
    fake.queue(Chunks([chunk({"role": "assistant", "content": ""}), chunk({"content": "Thought "}),
                       rest + b"data: [DONE]\n\n"], done=False, delay_between_chunks=0.35))
    with http.stream("POST", "/v1/messages", json=STREAM_BODY) as response:
        events = read_events(response.iter_bytes())
    order = names(events)
    first_delta = order.index("content_block_delta")
    assert order[:2] == ["message_start", "ping"]
    assert "ping" in order[2:first_delta], "no ping while the upstream was silent before the first text"
    assert "ping" in order[first_delta:], "no ping while the upstream was silent between chunks"
    message = accumulate(events)
    assert message.content[0].text == "Thought long."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"


def test_fast_upstream_gets_no_extra_pings(http: httpx.Client, fake: FakeOpenAI) -> None:
    fake.queue(Text(chunks=["a", "b", "c"]))
    with http.stream("POST", "/v1/messages", json=STREAM_BODY) as response:
        order = names(read_events(response.iter_bytes()))
    assert order == ["message_start", "ping", "content_block_start", *["content_block_delta"] * 3,
                     "content_block_stop", "message_delta", "message_stop"]
