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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ._config import RouteTarget, Settings
from ._endpoint import Endpoint, UpstreamCall
from ._errors import (
    EngineError,
    NotFoundError,
    RequestError,
    UpstreamConnectError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    error_envelope,
)
from ._records import RequestRecords, observe
from ._router import Router
from ._sse import encode_events
from ._tokens import TokenCounter
from ._translate import StreamTranslator
from ._types import JSONObject
from ._upstream import UpstreamClient, UpstreamResponse

__all__ = ["KEEPALIVE_SECONDS", "Answer", "Incoming", "Proxy", "check_model_name"]

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


class Proxy:
    """The pipeline's shared parts, built once per app: endpoints, router, upstream pools, token counter."""

    def __init__(self, settings: Settings, endpoints: Mapping[str, Endpoint], *,
                 upstream: UpstreamClient | None = None, tokens: TokenCounter | None = None,
                 records: RequestRecords | None = None) -> None:
        self.settings = settings
        self.records = records if records is not None else RequestRecords()
        self.endpoints = dict(endpoints)
        self.router = Router(settings)
        self.upstream = upstream or UpstreamClient()
        self.tokens = tokens or TokenCounter()

    def endpoint(self, target: RouteTarget) -> Endpoint:
        """The endpoint serving `target`'s provider."""
        endpoint = self.endpoints.get(target.provider)
        if endpoint is None:
            raise NotFoundError(f"provider '{target.provider}' is not configured")
        return endpoint

    async def messages(self, body: JSONObject, raw: bytes, headers: Mapping[str, str], *,
                       request_id: str) -> Answer:
        """Answer one checked ``/v1/messages`` request: route it, then try its targets in order. Its
        record (`RequestRecords`, the dashboard's) follows it to the end of the answer."""
        observer = self.records.open(request_id, body)
        try:
            return observer.watch(await self._messages(body, raw, headers, request_id))
        except BaseException as exc:
            observer.failed(exc)
            raise

    async def _messages(self, body: JSONObject, raw: bytes, headers: Mapping[str, str], request_id: str) -> Answer:
        route = await self.router.route(body, _memo(lambda: self.count_tokens(body, len(raw))))
        incoming = Incoming(route.body, raw if route.body is body else None,
                            {name.lower(): value for name, value in headers.items()})
        targets = route.targets
        for index, target in enumerate(targets):
            answer_headers = {"request-id": request_id, "x-ccproxy-route": route.header(target)}
            observe().routed(route.reason, target.provider, target.model)
            try:
                check_model_name(target.model)
                return await self._forward(incoming, target, answer_headers, route.tokens, len(raw))
            except EngineError as exc:
                exc.headers.setdefault("x-ccproxy-route", answer_headers["x-ccproxy-route"])
                if index + 1 == len(targets) or not _falls_back(exc):
                    raise
                logger.warning("%s failed before answering (%s); trying %s", target, exc.message,
                               targets[index + 1])
        raise AssertionError("a route has at least one target")  # pragma: no cover

    async def count_tokens(self, body: Mapping[str, Any], size: int) -> int:
        """Token count of a request of `size` bytes. Small bodies are counted inline (a thread hop costs
        more than they do); larger ones in a thread, so the loop stays free. The counter bounds its
        own work per request (`TokenCounter`), so a huge body cannot hold a thread for long either."""
        if size < INLINE_COUNT_BYTES:
            return self.tokens.count_request(body)
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

    async def _forward(self, incoming: Incoming, target: RouteTarget, headers: dict[str, str],
                       tokens: int | None, size: int) -> Answer:
        """Send the request to `target` and answer with its reply (or raise its mapped error)."""
        endpoint = self.endpoint(target)
        call = endpoint.prepare(incoming.body, model=target.model, client_headers=incoming.headers,
                                raw=incoming.raw)
        observe().prepared(call.request.body)
        if endpoint.is_passthrough:
            return await self._pass_through(endpoint, call, headers)
        if not call.stream:
            response = await self._send(endpoint, call)
            raw = await _read_and_close(response)
            return Answer(headers, content=orjson.dumps(endpoint.message(call, raw)))
        # unless routing already counted, the input-token estimate for message_start is counted while
        # the upstream thinks
        estimate = None if tokens is not None else asyncio.ensure_future(self.count_tokens(incoming.body, size))
        try:
            response = await self._send(endpoint, call)
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
        events = _translate_stream(response, endpoint.events(call, tokens or 0))
        return Answer({**headers, "cache-control": "no-cache"}, media_type="text/event-stream", stream=events,
                      upstream=response)

    async def _pass_through(self, endpoint: Endpoint, call: UpstreamCall, headers: dict[str, str]) -> Answer:
        """An Anthropic-speaking upstream: its answer goes to the client byte for byte."""
        response = await self._send(endpoint, call)
        media_type = response.headers.get("content-type", "application/json")
        if not call.stream:
            content = await _read_and_close(response)
            return Answer(headers, status=response.status, media_type=media_type, content=content)
        return Answer({**headers, "cache-control": "no-cache"}, media_type=media_type, stream=_relay(response),
                      upstream=response)

    async def _send(self, endpoint: Endpoint, call: UpstreamCall) -> UpstreamResponse:
        """Send and wait for the status: a non-2xx answer is read, closed and raised as its mapped error."""
        response = await self.upstream.send(call.request)
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


def _falls_back(exc: EngineError) -> bool:
    """Whether the next target of a route may try: the provider is down, slow or busy, never when the
    request itself is wrong (a 4xx other than 429 would fail the same way everywhere)."""
    if isinstance(exc, UpstreamConnectError | UpstreamTimeoutError):
        return True
    return isinstance(exc, UpstreamStatusError) and (exc.upstream_status == 429 or exc.upstream_status >= 500)


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


async def _relay(response: UpstreamResponse) -> AsyncGenerator[bytes, None]:
    """Upstream bytes as they arrive; a failure mid-stream appends an Anthropic ``error`` event (the blank
    lines first end any record the upstream left half-written)."""
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except EngineError as exc:
        logger.warning("stream failed: %s", exc.message)
        yield b"\n\n" + encode_events([("error", error_envelope(exc.error_type, exc.message))])
    finally:
        await response.aclose()


async def _translate_stream(response: UpstreamResponse,
                            translator: StreamTranslator) -> AsyncGenerator[bytes, None]:
    """Upstream SSE bytes → Anthropic SSE bytes. Closes the upstream however the stream ends
    (finished, failed, or the client went away)."""
    try:
        yield encode_events(translator.start())
        async for chunk in _with_keepalive(response.aiter_bytes()):
            events = translator.ping() if chunk is None else translator.feed_bytes(chunk)
            if events:
                yield encode_events(events)
            if translator.is_done:
                return
        yield encode_events(translator.finish())
    except Exception as exc:  # an upstream failure mid-stream (cut, timeout) or our own bug
        yield encode_events(translator.fail(exc))
    finally:
        await response.aclose()


async def _with_keepalive(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes | None]:
    """Yield the upstream's chunks, and None whenever it has been silent for KEEPALIVE_SECONDS.

    One reader task per stream moves chunks into a one-slot queue; waiting on the queue is what gets
    the time limit, so a chunk costs a put and a get instead of a task of its own (about 7 µs a chunk
    with a task per read, more than translating it). Cancelling the wait never loses a chunk.
    """
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=1)
    reader = asyncio.ensure_future(_pump(chunks, queue))
    try:
        while True:
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


async def _pump(chunks: AsyncIterator[bytes], queue: asyncio.Queue[bytes | BaseException | None]) -> None:
    """Move the upstream's chunks into `queue`, then None at the end, or the exception that ended it."""
    try:
        async for chunk in chunks:
            await queue.put(chunk)
    except Exception as exc:  # handed to the consumer, which raises it where the stream is translated
        await queue.put(exc)
        return
    await queue.put(None)
