"""The pieces behind metrics, logs and the shutdown deadline, one at a time: the passthrough's usage
scanner on arbitrarily split bytes, the label bounds, the request-id log prefix, and a `Drain`
ending an open stream at its deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from fakes.anthropic_upstream import AnthropicStream

from ccproxy_engine._metrics import Metrics
from ccproxy_engine._observe import REQUEST_ID, RequestIdFilter, Trace
from ccproxy_engine._proxy import _UsageScanner, _with_keepalive
from ccproxy_engine._shutdown import Drain, ShuttingDownError

# the text holds '"usage"' too: JSON escapes its quotes, so only the real usage lines are decoded
STREAM = b"".join(AnthropicStream.text('a "usage" of words', chunks=['a "usage" ', "of words"]).records)


@pytest.mark.parametrize("size", [1, 2, 7, 64, len(STREAM)])
def test_the_usage_scanner_reads_usage_however_the_bytes_are_split(size: int) -> None:
    trace = Trace("req_1")
    scanner = _UsageScanner(trace)
    for start in range(0, len(STREAM), size):
        scanner.feed(STREAM[start:start + size])
    assert (trace.tokens_in, trace.tokens_out) == (25, 42)  # message_start's input, message_delta's output


def test_usage_ignores_what_is_not_a_count() -> None:
    trace = Trace("req_1")
    trace.usage({"input_tokens": True, "output_tokens": "7"})
    trace.usage(None)
    assert (trace.tokens_in, trace.tokens_out) == (None, None)


def test_labels_are_bounded_to_configured_names() -> None:
    metrics = Metrics(["openai"], ["gpt-4.1"])
    assert metrics.provider_label("openai") == "openai" and metrics.provider_label("nope") == "other"
    assert metrics.model_label("gpt-4.1") == "gpt-4.1" and metrics.model_label("gpt-4.1-evil") == "other"
    assert metrics.model_label("") == ""  # no target was tried


def test_log_lines_about_a_request_start_with_its_id() -> None:
    record = logging.LogRecord("ccproxy_engine", logging.WARNING, __file__, 1, "upstream %s failed", ("x",), None)
    token = REQUEST_ID.set("req_abc")
    try:
        assert RequestIdFilter().filter(record)
        assert RequestIdFilter().filter(record)  # a second filter leaves it alone
    finally:
        REQUEST_ID.reset(token)
    assert record.getMessage() == "[req_abc] upstream x failed"
    outside = logging.LogRecord("ccproxy_engine", logging.WARNING, __file__, 1, "no request", (), None)
    RequestIdFilter().filter(outside)
    assert outside.getMessage() == "no request"


async def slow_chunks() -> AsyncIterator[bytes]:
    yield b"first"
    await asyncio.sleep(30)
    yield b"never"


async def test_a_drain_ends_an_open_stream_at_its_deadline() -> None:
    drain = Drain(grace=0.05)
    seen: list[bytes | None] = []
    stream = _with_keepalive(slow_chunks(), drain)
    seen.append(await anext(stream))
    assert drain.open_streams == 1
    drain.begin()
    with pytest.raises(ShuttingDownError) as caught:
        seen.append(await anext(stream))
    assert seen == [b"first"] and caught.value.error_type == "overloaded_error"
    await stream.aclose()
    assert drain.open_streams == 0


async def test_a_stream_opened_after_the_deadline_ends_at_once() -> None:
    drain = Drain(grace=0)
    drain.expire()
    stream = _with_keepalive(slow_chunks(), drain)
    with pytest.raises(ShuttingDownError):
        await anext(stream)
