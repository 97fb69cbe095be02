"""What the dashboard and the status line show: one `RequestRecord` per request, kept in a bounded ring.

The pipeline (`_proxy.Proxy`) reports a request's life through a small observer interface, at four
points: routed (a target is tried), prepared (the upstream call is built), the answer (usage, first
token, end) and a failure. `RequestRecords.open` starts a record and makes its `Observer` the current
one for the request's task (`observe` finds it, so the pipeline's inner steps need no new argument);
`Observer.watch` follows the answer to its end, reading the Anthropic events that go to the client.

The ring is bounded in entries and in bytes (a record's size is counted from its strings and its
captured bodies), oldest out first, in-flight records included. Aggregates that outlive the ring
(per-provider rates and latencies per minute for the last 15 minutes, per-route counts and per-model
token totals since start) are kept beside it, so a busy server still charts what it did.

Each worker process keeps its own records: the dashboard says which worker (pid) it shows.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import re
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncGenerator, Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson

from ._config import DashboardSettings
from ._errors import EngineError
from ._redact import redact
from ._sse import SSEDecoder

__all__ = ["Observer", "RequestRecord", "RequestRecords", "TokenTotals", "observe",
           "session_of"]

#: Minutes of per-provider history the summary charts.
WINDOW_MINUTES = 15
#: Latencies kept per provider and minute for the percentiles (a reservoir would be fairer; the first
#: ones of a busy minute are a fair sample of it for a dashboard).
LATENCY_SAMPLES = 512
#: What a record costs in the byte bound before its strings are counted.
RECORD_OVERHEAD = 400

_SESSION_IN_USER_ID = re.compile(r"_session_([0-9A-Za-z-]{8,64})$")
_TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


@dataclass(slots=True)
class RequestRecord:
    """One request as the dashboard shows it; fields stay None until known."""

    id: str
    started: float
    """Wall-clock time (epoch seconds)."""
    client_model: str
    stream: bool
    session: str | None
    reason: str | None = None
    provider: str | None = None
    model: str | None = None
    attempts: int = 0
    state: str = "in_flight"
    """in_flight, ok or error."""
    status: int | None = None
    ttft_ms: float | None = None
    total_ms: float | None = None
    usage: dict[str, int] = field(default_factory=dict)
    error_type: str | None = None
    error_message: str | None = None
    upstream_request: str | None = None
    answer: str | None = None
    size: int = RECORD_OVERHEAD

    def as_json(self, *, detail: bool = False) -> dict[str, Any]:
        """The record as the API sends it; the captured bodies only with `detail`."""
        out = {name: getattr(self, name) for name in _PUBLIC_FIELDS}
        out["captured"] = self.upstream_request is not None or self.answer is not None
        if detail:
            out["upstream_request"] = self.upstream_request
            out["answer"] = self.answer
        return out


_PUBLIC_FIELDS = ("id", "started", "client_model", "stream", "session", "reason", "provider", "model",
                  "attempts", "state", "status", "ttft_ms", "total_ms", "usage", "error_type", "error_message")


class _Answer(Protocol):
    """What `Observer.watch` needs of `_proxy.Answer`."""

    status: int
    content: bytes
    stream: AsyncGenerator[bytes, None] | None


_A = TypeVar("_A", bound=_Answer)


class _Decoded(Protocol):
    """What `Observer.watch_values` needs of `_proxy.Decoded`."""

    message: dict[str, Any] | None
    events: AsyncGenerator[list[tuple[str, dict[str, Any]]], None] | None


_D = TypeVar("_D", bound=_Decoded)
_T = TypeVar("_T")


@dataclass(slots=True)
class _Minute:
    """One provider's requests that ended in one minute."""

    count: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass(slots=True)
class TokenTotals:
    """Tokens one provider/model used since start."""

    requests: int = 0
    usage: Counter[str] = field(default_factory=Counter)


class RequestRecords:
    """The ring of recent records and the aggregates; one per app (so one per worker process)."""

    def __init__(self, settings: DashboardSettings | None = None) -> None:
        self.settings = settings or DashboardSettings()
        self.started = time.time()
        self._ring: OrderedDict[str, RequestRecord] = OrderedDict()
        self._bytes = 0
        self._minutes: dict[str, deque[tuple[int, _Minute]]] = {}
        self.routes: Counter[str] = Counter()
        self.tokens: dict[tuple[str, str], TokenTotals] = {}

    # -- the pipeline's side -----------------------------------------------------------------------

    def open(self, request_id: str, body: Mapping[str, Any]) -> Observer:
        """Start the record of one request, and make its observer the current one (`observe`)."""
        record = RequestRecord(id=request_id, started=time.time(), client_model=str(body.get("model")),
                               stream=bool(body.get("stream")), session=session_of(body))
        key = request_id
        while key in self._ring:  # a client may resend an id; both requests are shown
            key += "+"
        self._ring[key] = record
        self._bytes += record.size
        self._trim()
        observer = Observer(self, record)
        _CURRENT.set(observer)
        return observer

    def _grow(self, record: RequestRecord, added: int) -> None:
        record.size += added
        if record is self._ring.get(record.id):
            self._bytes += added
            self._trim()

    def _trim(self) -> None:
        while self._ring and (len(self._ring) > self.settings.max_records or self._bytes > self.settings.max_bytes):
            _, oldest = self._ring.popitem(last=False)
            self._bytes -= oldest.size

    def _ended(self, record: RequestRecord) -> None:
        """Fold an ended request into the aggregates."""
        if record.reason is not None:
            self.routes[record.reason] += 1
        if record.provider is None:
            return
        minute = int(record.started // 60)
        history = self._minutes.setdefault(record.provider, deque())
        if not history or history[-1][0] != minute:
            history.append((minute, _Minute()))
        while history and history[0][0] <= minute - WINDOW_MINUTES:
            history.popleft()
        bucket = history[-1][1]
        bucket.count += 1
        bucket.errors += record.state == "error"
        if record.total_ms is not None and len(bucket.latencies) < LATENCY_SAMPLES:
            bucket.latencies.append(record.total_ms)
        totals = self.tokens.setdefault((record.provider, record.model or "?"), TokenTotals())
        totals.requests += 1
        totals.usage.update(record.usage)

    # -- the readers' side -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def pid(self) -> int:
        """The worker's pid, asked each time: `serve --workers N` builds the app (and these records)
        once, then forks the workers, each of which then keeps its own."""
        return os.getpid()

    @property
    def bytes(self) -> int:
        return self._bytes

    def recent(self, *, limit: int = 200, session: str | None = None) -> list[RequestRecord]:
        """The newest records first, in-flight ones included; only `session`'s when given."""
        found: list[RequestRecord] = []
        for record in reversed(self._ring.values()):
            if session is None or record.session == session:
                found.append(record)
                if len(found) >= limit:
                    break
        return found

    def get(self, request_id: str) -> RequestRecord | None:
        return self._ring.get(request_id)

    def in_flight(self) -> int:
        return sum(record.state == "in_flight" for record in self._ring.values())

    def provider_minutes(self, now: float | None = None) -> dict[str, list[dict[str, Any]]]:
        """Per provider, one entry per minute of the last `WINDOW_MINUTES` (oldest first): requests,
        errors and latency percentiles (None for a minute without requests)."""
        current = int((now or time.time()) // 60)
        out: dict[str, list[dict[str, Any]]] = {}
        for provider, history in self._minutes.items():
            by_minute = dict(history)
            rows = []
            for minute in range(current - WINDOW_MINUTES + 1, current + 1):
                bucket = by_minute.get(minute, _Minute())
                rows.append({"minute": minute * 60, "requests": bucket.count, "errors": bucket.errors,
                             **_percentiles(bucket.latencies)})
            out[provider] = rows
        return out


class Observer:
    """One request's record, as the pipeline updates it. Every method is cheap and never raises into
    the pipeline's way: a record is a view of the request, not part of answering it."""

    __slots__ = ("_records", "_start", "record")

    def __init__(self, records: RequestRecords | None, record: RequestRecord) -> None:
        self._records = records
        self.record = record
        self._start = time.perf_counter()

    def _elapsed_ms(self) -> float:
        return round((time.perf_counter() - self._start) * 1000, 1)

    def routed(self, reason: str, provider: str, model: str) -> None:
        """A target of the route is about to be tried (again for each fallback)."""
        record = self.record
        record.reason, record.provider, record.model = reason, provider, model
        record.attempts += 1

    def prepared(self, body: bytes | None) -> None:
        """The upstream call is built: with capture on, its body (keys masked) is kept."""
        if self._records is not None and self._records.settings.capture and body is not None:
            self._capture("upstream_request", body)

    def _capture(self, name: str, data: bytes) -> None:
        assert self._records is not None
        limit = max(1024, self._records.settings.max_bytes // 16)
        text = redact(data[:limit].decode("utf-8", "replace"))
        if len(data) > limit:
            text += f"\n… ({len(data) - limit} more bytes not kept)"
        old = getattr(self.record, name)
        setattr(self.record, name, text)
        self._records._grow(self.record, len(text) - len(old or ""))

    def first_token(self) -> None:
        if self.record.ttft_ms is None:
            self.record.ttft_ms = self._elapsed_ms()

    def usage(self, usage: Mapping[str, Any]) -> None:
        """Anthropic usage as it becomes known (message_start, then message_delta): later values win."""
        for key in _TOKEN_KEYS:
            value = usage.get(key)
            if isinstance(value, int):
                self.record.usage[key] = value

    def finished(self, status: int = 200) -> None:
        record = self.record
        if record.state != "in_flight":
            return
        record.state, record.status, record.total_ms = "ok", status, self._elapsed_ms()
        if self._records is not None:
            self._records._ended(record)

    def failed(self, exc: BaseException | None = None, *, error_type: str | None = None,
               message: str | None = None, status: int | None = None) -> None:
        """The request failed (an `EngineError`, an error event in the stream, or the client left)."""
        record = self.record
        if record.state != "in_flight":
            return
        if isinstance(exc, EngineError):
            error_type, message, status = exc.error_type, exc.message, exc.status
        elif exc is not None and _is_cancel(exc):
            error_type, message, status = "client_closed", "the client went away", 499
        elif exc is not None:
            error_type, message = "api_error", f"{type(exc).__name__}: {exc}"
        record.state, record.status, record.total_ms = "error", status or 500, self._elapsed_ms()
        record.error_type = error_type or "api_error"
        record.error_message = redact(message or "")[:2000]
        if self._records is not None:
            self._records._grow(record, len(record.error_message))
            self._records._ended(record)

    def watch(self, answer: _A) -> _A:
        """Follow an `Answer` to its end: a whole body is read now, a stream as it is sent."""
        if answer.stream is not None:
            answer.stream = _Followed(self, self._follow(answer.stream))
            return answer
        self._whole(answer.content, answer.status)
        return answer

    def watch_values(self, decoded: _D) -> _D:
        """`watch` for an answer handed over as Anthropic values (`Proxy.decoded`, for clients of
        another API): the message now, or the event batches as they are rendered."""
        if decoded.events is not None:
            decoded.events = _Followed(self, self._follow_values(decoded.events))
        elif decoded.message is not None:
            if isinstance(decoded.message.get("usage"), dict):
                self.usage(decoded.message["usage"])
            self.finished()
        return decoded

    async def _follow_values(self, batches: AsyncGenerator[list[tuple[str, dict[str, Any]]], None],
                             ) -> AsyncGenerator[list[tuple[str, dict[str, Any]]], None]:
        try:
            async for batch in batches:
                for name, payload in batch:
                    self._payload(name, payload)
                yield batch
        except BaseException as exc:
            self.failed(exc)
            raise
        finally:
            await batches.aclose()
            self.finished()

    def _whole(self, content: bytes, status: int) -> None:
        try:
            message = orjson.loads(content)
        except orjson.JSONDecodeError:
            message = None
        if isinstance(message, dict) and isinstance(message.get("usage"), dict):
            self.usage(message["usage"])
        if self._records is not None and self._records.settings.capture:
            self._capture("answer", content)
        self.finished(status)

    async def _follow(self, stream: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        scanner = _EventScanner(self)
        kept = bytearray()
        keep = self._records.settings.max_bytes // 16 if self._records and self._records.settings.capture else 0
        try:
            async for chunk in stream:
                scanner.feed(chunk)
                if len(kept) < keep:
                    kept += chunk
                yield chunk
        except BaseException as exc:
            self.failed(exc)
            raise
        finally:
            await stream.aclose()
            if keep:
                self._capture("answer", bytes(kept))
            self.finished()

    def _event(self, name: str | None, data: str) -> None:
        """One Anthropic event on its way to the client, as SSE."""
        if name in {"content_block_delta", "content_block_start"}:
            self.first_token()
        elif name == "message_stop":
            self.finished()
        elif name in {"message_start", "message_delta", "error"}:
            try:
                payload = orjson.loads(data)
            except orjson.JSONDecodeError:
                return
            if isinstance(payload, dict):
                self._payload(name, payload)

    def _payload(self, name: str | None, payload: Mapping[str, Any]) -> None:
        """One Anthropic event, decoded. ``message_stop`` ends the record: a reader that stops there and
        closes the stream has not cut it."""
        if name in {"content_block_delta", "content_block_start"}:
            self.first_token()
        elif name == "message_stop":
            self.finished()
        elif name == "error":
            error = payload.get("error") or {}
            self.failed(error_type=str(error.get("type") or "api_error"), message=str(error.get("message")),
                        status=200)
        elif name in {"message_start", "message_delta"}:
            usage = (payload.get("message") or {}).get("usage") if name == "message_start" else payload.get("usage")
            if isinstance(usage, dict):
                self.usage(usage)


class _EventScanner:
    """Finds the few events a record needs in the Anthropic SSE bytes going to the client, without
    decoding the rest: a stream is mostly ``content_block_delta`` events, and decoding each one again
    would cost more than translating it. Only complete events (up to the last blank line) whose bytes
    name a wanted event are decoded; the rest of a read waits for the next one."""

    __slots__ = ("_observer", "_pending")

    #: An event left unfinished longer than this is not waited for (it holds no usage worth the memory).
    MAX_PENDING = 256 * 1024

    def __init__(self, observer: Observer) -> None:
        self._observer = observer
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        if not self._pending and chunk.endswith(b"\n\n"):
            complete = chunk  # a translated stream's reads are whole events
        else:
            data = self._pending + chunk
            end = data.rfind(b"\n\n")
            if end < 0:
                self._pending = data if len(data) <= self.MAX_PENDING else b""
                return
            self._pending = data[end + 2:]
            complete = data[:end + 2]
        wanted = b"message_" in complete or b"event: error" in complete or (
            self._observer.record.ttft_ms is None and b"content_block" in complete)
        if wanted:
            for event in SSEDecoder().feed(complete):
                self._observer._event(event.event, event.data)


class _Followed(AsyncGenerator[_T, None]):
    """A following generator (`Observer._follow`, `_follow_values`) as the answer's stream, which also
    ends the record when the stream is closed before it started (the client left before the response
    began): a generator that never ran has no ``finally`` to do it."""

    __slots__ = ("_follow", "_observer", "_started")

    def __init__(self, observer: Observer, follow: AsyncGenerator[_T, None]) -> None:
        self._observer = observer
        self._follow = follow
        self._started = False

    def __anext__(self) -> Awaitable[_T]:  # type: ignore[override]  # no coroutine frame of its own a chunk
        self._started = True
        return self._follow.__anext__()

    def asend(self, value: None) -> Awaitable[_T]:  # type: ignore[override]
        self._started = True
        return self._follow.asend(value)

    def athrow(self, typ: Any, val: Any = None, tb: Any = None) -> Awaitable[_T]:  # type: ignore[override]
        return self._follow.athrow(typ, val, tb)

    async def aclose(self) -> None:
        if not self._started:
            self._observer.failed(error_type="client_closed", message="the client went away before the answer",
                                  status=499)
        await self._follow.aclose()


_DETACHED = RequestRecord(id="", started=0.0, client_model="", stream=False, session=None)
_CURRENT: contextvars.ContextVar[Observer | None] = contextvars.ContextVar("ccproxy_observer", default=None)


def observe() -> Observer:
    """The current request's observer; outside a recorded request, one that keeps nothing."""
    return _CURRENT.get() or Observer(None, _DETACHED)


def session_of(body: Mapping[str, Any]) -> str | None:
    """Claude Code's session id, from ``metadata.user_id``: ``user_<hash>_account_<uuid>_session_<uuid>``
    (up to 2.0), or a JSON string with ``session_id`` (2.1 and later)."""
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if not isinstance(user_id, str):
        return None
    if user_id.startswith("{"):
        try:
            found = orjson.loads(user_id).get("session_id")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return found if isinstance(found, str) and 0 < len(found) <= 64 else None
    match = _SESSION_IN_USER_ID.search(user_id)
    return match.group(1) if match else None


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    ordered = sorted(values)
    return {f"p{q}": ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))] for q in (50, 95, 99)}


def _is_cancel(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.CancelledError | GeneratorExit)

