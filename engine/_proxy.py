"""The proxy pipeline: route → endpoint → upstream client → fallbacks → answer.

`Proxy.messages` takes a checked Anthropic request and returns an `Answer` (a whole body, or a byte
stream of Anthropic events) that the HTTP layer only has to send. Nothing here knows the HTTP
framework: errors are raised as `EngineError`s, which the app renders in the client's envelope.

Order of one request: the router picks the targets (`Route`); for each target in turn, its
`Endpoint` prepares the upstream call, `UpstreamClient` sends it with ``stream=True`` and the status
is awaited before anything reaches the client. A failure that the next target might not have
(connect errors, timeouts, 429, 5xx) moves on to it; anything else, or the last target's failure,
is raised. Once an answer has started, it is the client's: a failure inside a stream ends it with
an ``error`` event, never with a retry or a fake ``end_turn``.

Resilience (`_resilience`): before a target is tried its circuit breaker is asked (an open one passes
the request to the next target, or answers 529 ``overloaded_error`` when there is none); a failed try
is retried per `RetryPolicy` before the next target, and only before the first byte. With
``server.fallback_on_unsupported``, a target whose rules refuse the request (a capability its model
lacks) passes it on too. Each request's `Trace` collects what the metrics and the access log need;
open streams are registered with the app's `Drain`, which ends them at the shutdown deadline.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

import orjson

from ._config import RouteTarget, Settings
from ._endpoint import Endpoint, UpstreamCall
from ._errors import EngineError, NotFoundError, RequestError, UpstreamStatusError, error_envelope
from ._metrics import Metrics, known_models
from ._observe import Trace
from ._records import RequestRecords, observe
from ._resilience import Breakers, CircuitOpenError, RetryPolicy, TargetRefusedError, is_upstream_failure
from ._router import Router
from ._shutdown import Drain, ShuttingDownError, StreamStop
from ._sse import encode_events
from ._tokens import TokenCounter
from ._translate import StreamTranslator
from ._types import JSONObject, SSEEvent
from ._upstream import UpstreamClient, UpstreamResponse

__all__ = ["KEEPALIVE_SECONDS", "Adapter", "Answer", "Decoded", "Exchange", "Incoming", "Proxy", "check_model_name"]

logger = logging.getLogger("ccproxy_engine")

#: Send a ping when the upstream has been silent this long (long hidden reasoning).
KEEPALIVE_SECONDS = 15.0
#: Bodies at least this large are counted off the event loop (a first count of a long conversation
#: takes milliseconds; later turns hit the counter's cache).
INLINE_COUNT_BYTES = 16 * 1024


@dataclass(slots=True)
class Incoming:
    """The client's request as the pipeline needs it."""

    body: JSONObject
    raw: bytes | None
    """The bytes as received, while `body` still says exactly what they say (None once routing changed it)."""
    headers: dict[str, str]
    """The client's headers, names lower-cased."""


@dataclass(slots=True)
class Answer:
    """What the HTTP layer sends: `content`, or the byte `stream` when there is one.

    A streamed answer owns the upstream response it reads. The stream closes it however it ends; if
    the stream never starts (the client is gone, or sending the status line failed), whoever sent the
    answer calls `aclose` — the app does so for every answer once the response is over, so an
    upstream connection is never left open."""

    headers: dict[str, str]
    status: int = 200
    media_type: str = "application/json"
    content: bytes = b""
    stream: AsyncGenerator[bytes, None] | None = field(default=None, repr=False)
    upstream: UpstreamResponse | None = field(default=None, repr=False)

    async def aclose(self) -> None:
        """Free the upstream response; safe to call more than once, and after the stream finished."""
        if self.stream is not None:
            await self.stream.aclose()
        if self.upstream is not None and not self.upstream.is_closed:
            await self.upstream.aclose()


@dataclass(slots=True)
class Decoded:
    """An answer as Anthropic values, for clients of another API: the `message`, or the `events` (batches
    of Anthropic stream events, pings included, an ``error`` event ending a failed stream).

    Like `Answer`, a streamed one owns its upstream response: the events close it however they end,
    and `aclose` frees it when they never started."""

    headers: dict[str, str]
    message: JSONObject | None = None
    events: AsyncGenerator[list[SSEEvent], None] | None = field(default=None, repr=False)
    upstream: UpstreamResponse | None = field(default=None, repr=False)

    async def aclose(self) -> None:
        if self.events is not None:
            await self.events.aclose()
        if self.upstream is not None and not self.upstream.is_closed:
            await self.upstream.aclose()


@dataclass(slots=True)
class Exchange:
    """One target's attempt at a request: what making its answer needs."""

    endpoint: Endpoint
    call: UpstreamCall
    incoming: Incoming
    headers: dict[str, str]
    """The answer's headers: request id and route."""
    tokens: int | None
    """The input-token count, when routing already counted it."""
    size: int
    """The client's body size in bytes (how the token count is scheduled)."""
    trace: Trace
    """What the metrics and the access log learn about the request."""


Adapter: TypeAlias = Callable[[JSONObject, Endpoint, str], JSONObject]
"""Completes a request body for one target (endpoint, model); returns the body itself when it has nothing to add."""

_T = TypeVar("_T")


class Proxy:
    """The pipeline's shared parts, built once per app: endpoints, router, upstream pools, token counter."""

    def __init__(self, settings: Settings, endpoints: Mapping[str, Endpoint], *,
                 upstream: UpstreamClient | None = None, tokens: TokenCounter | None = None,
                 metrics: Metrics | None = None, drain: Drain | None = None,
                 records: RequestRecords | None = None) -> None:
        self.settings = settings
        self.records = records if records is not None else RequestRecords()
        self.endpoints = dict(endpoints)
        self.router = Router(settings)
        self.upstream = upstream or UpstreamClient()
        self.tokens = tokens or TokenCounter()
        self.metrics = metrics if metrics is not None else Metrics(settings.providers, configured_models(settings))
        self.drain = drain if drain is not None else Drain(settings.shutdown_grace)
        resilience = settings.resilience
        self.retry = RetryPolicy(resilience.retry)
        self.breakers = Breakers(resilience.breaker, on_change=self.metrics.breaker_state)

    def endpoint(self, target: RouteTarget) -> Endpoint:
        """The endpoint serving `target`'s provider."""
        endpoint = self.endpoints.get(target.provider)
        if endpoint is None:
            raise NotFoundError(f"provider '{target.provider}' is not configured")
        return endpoint

    async def messages(self, body: JSONObject, raw: bytes, headers: Mapping[str, str], *,
                       request_id: str, trace: Trace | None = None) -> Answer:
        """Answer one checked ``/v1/messages`` request with Anthropic bytes: route it, then try its
        targets in order. A passthrough target's answer is relayed byte for byte. Its record
        (`RequestRecords`, the dashboard's) follows it to the end of the answer."""
        observer = self.records.open(request_id, body)
        try:
            return observer.watch(await self._routed(Incoming(body, raw, _lower(headers)), len(raw),
                                                     trace or Trace(request_id), self._as_bytes))
        except BaseException as exc:
            observer.failed(exc)
            raise

    async def decoded(self, body: JSONObject, size: int, headers: Mapping[str, str], *, request_id: str,
                      adapt: Adapter | None = None, trace: Trace | None = None) -> Decoded:
        """Answer one Anthropic request (built by an inbound translation from `size` client bytes) with
        Anthropic values instead of bytes: a message, or a stream of event batches, whatever the
        target (a passthrough's answer is decoded too). Same routing, fallbacks and upstream
        ownership as `messages`; `adapt` completes the body for each target before it is prepared."""
        observer = self.records.open(request_id, body)
        try:
            return observer.watch_values(await self._routed(Incoming(body, None, _lower(headers)), size,
                                                            trace or Trace(request_id), self._as_values, adapt))
        except BaseException as exc:
            observer.failed(exc)
            raise

    async def _routed(self, incoming: Incoming, size: int, trace: Trace,
                      finish: Callable[[Exchange], Awaitable[_T]], adapt: Adapter | None = None) -> _T:
        """Route `incoming`, then try its targets in order: `finish` opens the upstream (`_open`) and
        makes the answer; a failure the next target might not have (`_falls_back`) moves on to it."""
        body = incoming.body
        trace.stream = bool(body.get("stream"))
        route = await self.router.route(body, _memo(lambda: self.count_tokens(body, size)))
        trace.route = route.reason
        if route.body is not body:
            incoming = Incoming(route.body, None, incoming.headers)
        targets = route.targets
        for index, target in enumerate(targets):
            answer_headers = {"request-id": trace.request_id, "x-ccproxy-route": route.header(target)}
            trace.provider, trace.model = target.provider, target.model
            observe().routed(route.reason, target.provider, target.model)
            try:
                check_model_name(target.model)
                exchange = self._exchange(incoming, target, adapt, answer_headers, route.tokens, size, trace)
                return await self._try(target, trace, functools.partial(finish, exchange))
            except EngineError as exc:
                exc.headers.setdefault("x-ccproxy-route", answer_headers["x-ccproxy-route"])
                if index + 1 == len(targets) or not self._falls_back(exc):
                    raise
                trace.fallbacks += 1
                self.metrics.fell_back(target.provider, target.model)
                logger.warning("%s failed before answering (%s); trying %s", target, exc.message,
                               targets[index + 1])
        raise AssertionError("a route has at least one target")  # pragma: no cover

    def _exchange(self, incoming: Incoming, target: RouteTarget, adapt: Adapter | None,
                  headers: dict[str, str], tokens: int | None, size: int, trace: Trace) -> Exchange:
        """`incoming` prepared for `target` (a refusal by its rules is a `TargetRefusedError`)."""
        endpoint = self.endpoint(target)
        sent = incoming
        if adapt is not None:
            adapted = adapt(incoming.body, endpoint, target.model)
            sent = incoming if adapted is incoming.body else Incoming(adapted, None, incoming.headers)
        try:
            call = endpoint.prepare(sent.body, model=target.model, client_headers=sent.headers, raw=sent.raw)
        except RequestError as exc:  # the target's rules refuse it (a capability its model lacks)
            raise TargetRefusedError(exc) from exc
        observe().prepared(call.request.body)
        return Exchange(endpoint, call, sent, headers, tokens, size, trace)

    async def _try(self, target: RouteTarget, trace: Trace, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """`attempt` behind `target`'s circuit breaker, retried per the retry policy."""
        provider, model = target.provider, target.model
        if not self.breakers.allow(provider, model):
            raise CircuitOpenError(provider, model)
        tries = 0
        while True:
            tries += 1
            try:
                answer = await attempt()
            except EngineError as exc:
                failed = is_upstream_failure(exc)
                # an upstream that answered "your request is wrong" is up; anything else says nothing
                self.breakers.record(provider, model, False if failed else
                                     True if isinstance(exc, UpstreamStatusError) else None)
                delay = self.retry.delay(exc, tries) if failed else None
                if delay is None:
                    raise
                logger.info("%s failed (%s); retry %d in %.2f s", target, exc.message, tries, delay)
                await asyncio.sleep(delay)
                if not self.breakers.allow(provider, model):  # opened meanwhile (by this request or others)
                    raise
                trace.retries += 1
                self.metrics.retried(provider, model)
                continue
            except BaseException:
                self.breakers.record(provider, model, None)
                raise
            self.breakers.record(provider, model, True)
            return answer

    def _falls_back(self, exc: EngineError) -> bool:
        """Whether the next target of a route may try: the provider is down, slow or busy (or its
        breaker is open), never when the request itself is wrong (a 4xx other than 429 would fail the
        same way everywhere), unless the user let a target's refusal fall through."""
        if isinstance(exc, TargetRefusedError):
            return self.settings.resilience.fallback_on_unsupported
        return isinstance(exc, CircuitOpenError) or is_upstream_failure(exc)

    async def count_tokens(self, body: Mapping[str, Any], size: int) -> int:
        """Token count of a request of `size` bytes. Small bodies are counted inline (a thread hop costs
        more than they do); larger ones in a thread, so the loop stays free. The counter bounds its
        own work per request (`TokenCounter`), so a huge body cannot hold a thread for long either."""
        if size < INLINE_COUNT_BYTES and self.tokens.is_loaded:
            return self.tokens.count_request(body)
        counted = self.tokens.count_request_inline(body)  # a repeated turn: only its new text to encode
        if counted is not None:
            return counted
        return await asyncio.to_thread(self.tokens.count_request, body)

    def model_ids(self) -> list[str]:
        """Client-facing model ids: Anthropic names the config maps, then every provider/model it names."""
        routes = self.settings.routes
        ids = [pattern for pattern in routes.models if not any(ch in pattern for ch in "*?[")]
        targets = [*routes.default, *(t for listed in routes.models.values() for t in listed)]
        ids.extend(f"{target.provider}/{target.model}" for target in targets)
        for name, provider in self.settings.providers.items():
            ids.extend(f"{name}/{model}" for model in provider.models)
        return list(dict.fromkeys(ids))

    async def _as_bytes(self, exchange: Exchange) -> Answer:
        """The answer an Anthropic client gets: relayed bytes from a passthrough, else translated."""
        endpoint, call, headers = exchange.endpoint, exchange.call, exchange.headers
        if endpoint.is_passthrough:
            response, _ = await self._open(exchange, count=False)
            media_type = response.headers.get("content-type", "application/json")
            if not call.stream:
                content = await _read_and_close(response)
                exchange.trace.usage(_json_field(content, "usage"))
                return Answer(headers, status=response.status, media_type=media_type, content=content)
            return Answer({**headers, "cache-control": "no-cache"}, media_type=media_type,
                          stream=_relay(response, exchange.trace, self.drain), upstream=response)
        if not call.stream:
            return Answer(headers, content=orjson.dumps(await self._message(exchange)))
        response, tokens = await self._open(exchange, count=True)
        events = _encoded(_event_batches(response, endpoint.events(call, tokens), exchange.trace, self.drain))
        return Answer({**headers, "cache-control": "no-cache"}, media_type="text/event-stream", stream=events,
                      upstream=response)

    async def _as_values(self, exchange: Exchange) -> Decoded:
        """The answer as Anthropic values, for a client of another API (the inbound layer renders it)."""
        if not exchange.call.stream:
            return Decoded(exchange.headers, message=await self._message(exchange))
        response, tokens = await self._open(exchange, count=True)
        batches = _event_batches(response, exchange.endpoint.events(exchange.call, tokens), exchange.trace,
                                 self.drain)
        return Decoded(exchange.headers, events=batches, upstream=response)

    async def _message(self, exchange: Exchange) -> JSONObject:
        """A whole answer, read and translated to the Anthropic message."""
        response, _ = await self._open(exchange, count=False)
        message = exchange.endpoint.message(exchange.call, await _read_and_close(response))
        exchange.trace.usage(message.get("usage"))
        return message

    async def _open(self, exchange: Exchange, *, count: bool) -> tuple[UpstreamResponse, int]:
        """Send the call and wait for a 2xx status (else raise its mapped error). With `count`, the
        input-token estimate a stream's ``message_start`` needs is counted while the upstream thinks
        (unless routing already counted); it comes back with the response (0 without `count`)."""
        tokens = exchange.tokens
        estimate = None
        if count and tokens is None:
            estimate = asyncio.ensure_future(self.count_tokens(exchange.incoming.body, exchange.size))
        try:
            response = await self._send(exchange.endpoint, exchange.call)
        except BaseException:
            if estimate is not None:
                estimate.cancel()
            raise
        if estimate is not None:
            try:
                tokens = await estimate
            except BaseException:
                await response.aclose()
                raise
        return response, tokens or 0

    async def _send(self, endpoint: Endpoint, call: UpstreamCall) -> UpstreamResponse:
        """Send and wait for the status: a non-2xx answer is read, closed and raised as its mapped error."""
        started = time.perf_counter()
        response = await self.upstream.send(call.request)
        self.metrics.upstream_ttfb(endpoint.name, call.model, time.perf_counter() - started)
        if response.status < 300:
            return response
        raw = await _read_and_close(response)
        raise endpoint.error(response.status, raw, response.headers.get("retry-after"))


def check_model_name(model: str) -> None:
    """Refuse a model name that could not be a model: a control character, or a ``.``/``..`` path
    segment (escaping keeps every other character from steering an upstream URL, not these)."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in model):
        raise RequestError("model: control characters are not allowed in a model name")
    if any(segment in {".", ".."} for segment in model.split("/")):
        raise RequestError(f"model: '{model}' is not a valid model name ('.' and '..' segments are not allowed)")


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def configured_models(settings: Settings) -> set[str]:
    """Every model the config names: the metrics' ``model`` label takes these, others are "other"."""
    routes = settings.routes
    targets = [*routes.default, *routes.background, *routes.think, *routes.long_context, *routes.web_search,
               *routes.image, *(t for listed in routes.models.values() for t in listed)]
    return known_models(targets, (m for p in settings.providers.values() for m in p.models))


def _json_field(content: bytes, key: str) -> Any:
    """`key` of a JSON object body; None when the body is not one."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return data.get(key) if isinstance(data, dict) else None


def _memo(factory: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[int]]:
    """A token count computed at most once, however many parts of a request ask for it."""
    task: asyncio.Future[int] | None = None

    def get() -> Awaitable[int]:
        nonlocal task
        if task is None:
            task = asyncio.ensure_future(factory())
        return task

    return get


async def _read_and_close(response: UpstreamResponse) -> bytes:
    try:
        return await response.read()
    finally:
        await response.aclose()


async def _relay(response: UpstreamResponse, trace: Trace | None = None,
                 drain: Drain | None = None) -> AsyncGenerator[bytes, None]:
    """Upstream bytes as they arrive; a failure mid-stream (or the shutdown deadline) appends an Anthropic
    ``error`` event (the blank lines first end any record the upstream left half-written)."""
    usage = _UsageScanner(trace) if trace is not None else None
    try:
        async for chunk in _with_keepalive(response.aiter_bytes(), drain):
            if chunk is not None:
                if usage is not None:
                    usage.feed(chunk)
                yield chunk
    except EngineError as exc:
        logger.warning("stream failed: %s", exc.message)
        yield b"\n\n" + encode_events([("error", error_envelope(exc.error_type, exc.message))])
    finally:
        await response.aclose()


async def _event_batches(response: UpstreamResponse, translator: StreamTranslator, trace: Trace | None = None,
                         drain: Drain | None = None) -> AsyncGenerator[list[SSEEvent], None]:
    """Upstream SSE bytes → batches of Anthropic events (a ``ping`` during upstream silence). Closes the
    upstream however the stream ends (finished, failed, the shutdown deadline, or the client went
    away); a failure ends it with the translator's ``error`` event."""
    try:
        yield _noting_usage(trace, translator.start())
        async for chunk in _with_keepalive(response.aiter_bytes(), drain):
            events = translator.ping() if chunk is None else translator.feed_bytes(chunk)
            if events:
                yield _noting_usage(trace, events)
            if translator.is_done:
                return
        yield _noting_usage(trace, translator.finish())
    except Exception as exc:  # an upstream failure mid-stream (cut, timeout), the deadline, or our own bug
        yield translator.fail(exc)
    finally:
        await response.aclose()


async def _encoded(batches: AsyncGenerator[list[SSEEvent], None]) -> AsyncGenerator[bytes, None]:
    """Event batches as Anthropic SSE bytes, one write per batch."""
    try:
        async for events in batches:
            yield encode_events(events)
    finally:
        await batches.aclose()


def _noting_usage(trace: Trace | None, events: list[SSEEvent]) -> list[SSEEvent]:
    """`events`, after the trace took the usage of a ``message_start`` or ``message_delta`` among them."""
    if trace is not None:
        for name, payload in events:
            if name == "message_delta":
                trace.usage(payload.get("usage"))
            elif name == "message_start":
                message = payload.get("message")
                trace.usage(message.get("usage") if isinstance(message, dict) else None)
    return events


class _UsageScanner:
    """Token usage of a relayed Anthropic stream, read without parsing it: only complete ``data:``
    lines that contain ``"usage"`` (message_start, message_delta) are decoded."""

    __slots__ = ("_tail", "_trace")

    def __init__(self, trace: Trace) -> None:
        self._trace = trace
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        end = chunk.rfind(b"\n")
        if end < 0:
            if len(self._tail) < _MAX_USAGE_LINE:
                self._tail += chunk
            return
        text, self._tail = self._tail + chunk[:end], chunk[end + 1:][:_MAX_USAGE_LINE]
        if b'"usage"' not in text:
            return
        for line in text.split(b"\n"):
            if line.startswith(b"data:") and b'"usage"' in line:
                payload = _json_line(line[5:])
                if payload.get("type") == "message_start":
                    message = payload.get("message")
                    self._trace.usage(message.get("usage") if isinstance(message, dict) else None)
                elif payload.get("type") == "message_delta":
                    self._trace.usage(payload.get("usage"))


#: A relayed line longer than this is not scanned for usage (usage lines are short; text can be long).
_MAX_USAGE_LINE = 64 * 1024


def _json_line(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


async def _with_keepalive(chunks: AsyncIterator[bytes], drain: Drain | None = None) -> AsyncIterator[bytes | None]:
    """Yield the upstream's chunks, and None whenever it has been silent for KEEPALIVE_SECONDS.

    One reader task per stream moves chunks into a one-slot queue; waiting on the queue is what gets
    the time limit, so a chunk costs a put and a get instead of a task of its own (about 7 µs a chunk
    with a task per read, more than translating it). Cancelling the wait never loses a chunk. The
    stream is registered with `drain`, whose deadline stops the reader and puts a `ShuttingDownError`
    in the queue (raised here, where the stream ends with an ``error`` event).
    """
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=1)
    reader = asyncio.ensure_future(_pump(chunks, queue))
    stop = StreamStop(queue, reader)
    if drain is not None:
        drain.add(stop)
    try:
        while True:
            if stop.stopped:
                raise ShuttingDownError()
            if queue.empty():
                try:
                    async with asyncio.timeout(KEEPALIVE_SECONDS):
                        item = await queue.get()
                except TimeoutError:
                    yield None
                    continue
            else:
                item = queue.get_nowait()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        reader.cancel()
        if drain is not None:
            drain.discard(stop)


async def _pump(chunks: AsyncIterator[bytes], queue: asyncio.Queue[bytes | BaseException | None]) -> None:
    """Move the upstream's chunks into `queue`, then None at the end, or the exception that ended it."""
    try:
        async for chunk in chunks:
            await queue.put(chunk)
    except Exception as exc:  # handed to the consumer, which raises it where the stream is translated
        await queue.put(exc)
        return
    await queue.put(None)
