"""The dashboard's request records (engine/_records.py): the ring's bounds, what a record learns from
the answer's Anthropic events, the session id of Claude Code's requests, and the cost estimate."""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ccproxy_engine._config import DashboardSettings
from ccproxy_engine._dashboard import price_cost
from ccproxy_engine._errors import UpstreamStatusError
from ccproxy_engine._records import RequestRecords, observe, session_of
from ccproxy_engine._redact import MASK, remember
from ccproxy_engine._sse import encode_events

FIXTURES = Path(__file__).parent / "fixtures" / "claude-code"
SECRET = "sk-records-secret-0123456789abcdef"


@dataclass
class _Answer:
    stream: AsyncGenerator[bytes, None] | None = None
    content: bytes = b""
    status: int = 200


def _body(session: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {"model": "claude-x", "stream": True, "messages": []}
    if session:
        body["metadata"] = {"user_id": f"user_{'a' * 64}_account__session_{session}"}
    return body


async def _events(*events: tuple[str, dict[str, object]]) -> AsyncGenerator[bytes, None]:
    for event in events:
        yield encode_events([event])


async def _drain(answer: _Answer) -> None:
    assert answer.stream is not None
    async for _ in answer.stream:
        pass


@pytest.mark.parametrize(("fixture", "session"), [
    ("2.0.77-edit-config/001.json", "f4e49895-f620-4431-9b19-35316769a5ac"),
    ("2.1.197-write-hello/001.json", "40eadc06-447d-48e1-b824-f46cfc72c037"),
])
def test_session_id_of_real_claude_code_requests(fixture: str, session: str) -> None:
    body = json.loads((FIXTURES / fixture).read_text(encoding="utf-8"))["body"]
    assert session_of(body) == session


@pytest.mark.parametrize("metadata", [None, {}, {"user_id": 3}, {"user_id": "plain"}, {"user_id": "{not json"},
                                      {"user_id": '{"session_id": 5}'}, {"user_id": "[1]"}])
def test_no_session_id(metadata: object) -> None:
    assert session_of({"metadata": metadata}) is None


def test_ring_is_bounded_in_entries_newest_first() -> None:
    records = RequestRecords(DashboardSettings(max_records=3))
    for i in range(5):
        records.open(f"r{i}", _body()).finished()
    assert [r.id for r in records.recent()] == ["r4", "r3", "r2"]
    assert records.get("r1") is None


def test_ring_is_bounded_in_bytes_captures_included() -> None:
    records = RequestRecords(DashboardSettings(capture=True, max_records=100, max_bytes=65536))
    for i in range(20):
        observer = records.open(f"r{i}", _body())
        observer.prepared(b"x" * 10_000)
    assert records.bytes <= 65536
    assert 0 < len(records) < 20
    kept = records.recent()[0]
    assert kept.id == "r19" and kept.upstream_request is not None
    assert len(kept.upstream_request) <= 65536 // 16 + 100  # one capture is cut at a sixteenth


def test_in_flight_requests_are_listed_and_a_stream_fills_its_record() -> None:
    records = RequestRecords()
    observer = records.open("s1", _body(session="11111111-2222"))
    observer.routed("default", "openai", "gpt-4.1")
    assert records.recent(session="11111111-2222")[0].state == "in_flight"
    assert records.in_flight() == 1
    answer = observer.watch(_Answer(stream=_events(
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 40, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 17, "cache_read_input_tokens": 30}}),
        ("message_stop", {"type": "message_stop"}),
    )))
    asyncio.run(_drain(answer))
    record = records.get("s1")
    assert record is not None
    assert (record.state, record.status) == ("ok", 200)
    assert record.usage == {"input_tokens": 40, "output_tokens": 17, "cache_read_input_tokens": 30}
    assert record.ttft_ms is not None and record.total_ms is not None
    assert records.routes["default"] == 1
    assert records.tokens[("openai", "gpt-4.1")].usage["output_tokens"] == 17
    minutes = records.provider_minutes()["openai"]
    assert len(minutes) == 15 and minutes[-1]["requests"] == 1 and minutes[-1]["p50"] == record.total_ms


def test_events_split_anywhere_are_still_read() -> None:
    """A passthrough relays the upstream's reads as they come: events cut mid-line, several per read."""
    whole = b"".join(encode_events([event]) for event in (
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 7, "output_tokens": 1}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "hi"}}),
        ("message_delta", {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 3}}),
    ))

    async def pieces() -> AsyncGenerator[bytes, None]:
        for start in range(0, len(whole), 5):
            yield whole[start:start + 5]

    records = RequestRecords()
    answer = records.open("p1", _body()).watch(_Answer(stream=pieces()))
    asyncio.run(_drain(answer))
    record = records.recent()[0]
    assert record.usage == {"input_tokens": 7, "output_tokens": 3}
    assert record.ttft_ms is not None


def test_an_error_event_fails_the_record_with_keys_masked() -> None:
    remember(SECRET)
    records = RequestRecords()
    observer = records.open("e1", _body())
    answer = observer.watch(_Answer(stream=_events(
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": f"busy, key {SECRET}"}}))))
    asyncio.run(_drain(answer))
    record = records.recent()[0]
    assert (record.state, record.error_type) == ("error", "overloaded_error")
    assert record.error_message == f"busy, key {MASK}"


def test_a_failure_before_the_answer() -> None:
    records = RequestRecords()
    observer = records.open("f1", _body())
    observer.routed("default", "openai", "gpt-4.1")
    observer.failed(UpstreamStatusError("openai", "down", status=503, error_type="api_error"))
    record = records.recent()[0]
    assert (record.state, record.status, record.error_message) == ("error", 503, "[openai] down")
    assert records.provider_minutes()["openai"][-1]["errors"] == 1


def test_a_client_that_leaves_mid_stream() -> None:
    records = RequestRecords()
    observer = records.open("c1", _body())
    answer = observer.watch(_Answer(stream=_events(("ping", {"type": "ping"}), ("ping", {"type": "ping"}))))

    async def leave() -> None:
        assert answer.stream is not None
        await answer.stream.__anext__()
        await answer.stream.aclose()

    asyncio.run(leave())
    assert records.recent()[0].error_type == "client_closed"


def test_a_stream_closed_before_it_started() -> None:
    records = RequestRecords()
    observer = records.open("u1", _body())
    answer = observer.watch(_Answer(stream=_events(("ping", {"type": "ping"}))))
    assert answer.stream is not None
    asyncio.run(answer.stream.aclose())
    record = records.recent()[0]
    assert (record.state, record.error_type, record.status) == ("error", "client_closed", 499)


_Batch = list[tuple[str, dict[str, object]]]


@dataclass
class _Decoded:
    message: dict[str, object] | None = None
    events: AsyncGenerator[_Batch, None] | None = None


async def _batches(*batches: _Batch) -> AsyncGenerator[_Batch, None]:
    for batch in batches:
        yield batch


def test_answers_as_values_for_other_apis() -> None:
    """`Proxy.decoded` (OpenAI clients): events as values; a reader that stops at message_stop is done."""
    records = RequestRecords()
    usage = {"input_tokens": 3, "output_tokens": 4}
    whole = records.open("v1", _body()).watch_values(_Decoded(message={"usage": usage}))
    assert whole.message is not None and records.get("v1").state == "ok"  # type: ignore[union-attr]
    decoded = records.open("v2", _body()).watch_values(_Decoded(events=_batches(
        [("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 9}}})],
        [("content_block_start", {"type": "content_block_start"})],
        [("message_delta", {"type": "message_delta", "usage": {"output_tokens": 2}}), ("message_stop", {})],
        [("ping", {})])))

    async def read_to_stop() -> None:
        assert decoded.events is not None
        for _ in range(3):
            await decoded.events.__anext__()
        await decoded.events.aclose()

    asyncio.run(read_to_stop())
    record = records.get("v2")
    assert record is not None and (record.state, record.usage) == ("ok", {"input_tokens": 9, "output_tokens": 2})
    unread = records.open("v3", _body()).watch_values(_Decoded(events=_batches([("ping", {})])))
    assert unread.events is not None
    asyncio.run(unread.events.aclose())
    assert records.get("v3").error_type == "client_closed"  # type: ignore[union-attr]


def test_a_whole_answer_and_its_capture() -> None:
    records = RequestRecords(DashboardSettings(capture=True))
    observer = records.open("w1", {"model": "m"})
    body = json.dumps({"content": [{"type": "text", "text": f"key {SECRET}"}],
                       "usage": {"input_tokens": 5, "output_tokens": 2}}).encode()
    remember(SECRET)
    observer.watch(_Answer(content=body))
    record = records.recent()[0]
    assert record.usage == {"input_tokens": 5, "output_tokens": 2} and record.state == "ok"
    assert record.answer is not None and SECRET not in record.answer and MASK in record.answer


def test_observe_outside_a_request_keeps_nothing() -> None:
    def outside() -> None:
        observe().routed("default", "p", "m")
        observe().prepared(b"body")

    contextvars.Context().run(outside)


def test_price_cost() -> None:
    price = {"input": 0.27, "output": 1.10, "cache_read": 0.07}
    usage = {"input_tokens": 1_000_000, "output_tokens": 500_000, "cache_read_input_tokens": 2_000_000,
             "cache_creation_input_tokens": 1_000_000}
    assert price_cost(price, usage) == pytest.approx(0.27 + 0.55 + 0.14 + 0.27)
    assert price_cost(None, usage) is None
    assert price_cost(price, {}) is None
