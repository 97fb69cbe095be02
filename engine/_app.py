"""The HTTP app: Anthropic Messages API in front, providers behind.

`create_app` only assembles; it reads no files and no environment, so ``serve`` and the tests build
the same app from different inputs. One request, in order: parse and check the body
(`RequestValidator`), pick the route (`Router`), run the provider's compiled request chain, send
upstream with ``stream=True`` (so the status is known before any byte goes to the client), then
either assemble one message (`MessageBuilder`) or translate the stream (`StreamMachine`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import fastjsonschema
import jsonschema
import orjson
from jinja2 import Undefined
from litestar import Litestar, Request, Response, get, head, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.response import Stream

from ._compiler import CompiledProvider
from ._config import ProviderSettings, RouteTarget, Settings
from ._errors import (
    EngineError,
    NotFoundError,
    RequestError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    error_envelope,
    error_type_for_status,
)
from ._functions import new_id
from ._loader import load_schema
from ._router import Route, Router
from ._sse import encode_events
from ._stream import MessageBuilder, StreamMachine
from ._tokens import TokenCounter
from ._translate import StreamTranslator, replace_model, translate_message
from ._upstream import UpstreamClient, UpstreamRequest, UpstreamResponse

logger = logging.getLogger("ccproxy_engine")

#: Send a ping when the upstream has been silent this long (long hidden reasoning).
KEEPALIVE_SECONDS = 15.0
#: Requests with tools or at least this many messages are counted off the event loop (a first count
#: of a long conversation takes milliseconds; later turns hit the counter's cache).
INLINE_COUNT_MESSAGES = 4


class RequestValidator:
    """Checks request bodies against `schemas/`: fast compiled check first, a precise message on failure."""

    def __init__(self, schema_name: str) -> None:
        schema = load_schema(schema_name)
        self._fast = fastjsonschema.compile(schema)
        self._precise = jsonschema.Draft202012Validator(schema)

    def check(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise RequestError("request body must be a JSON object")
        try:
            self._fast(body)
        except fastjsonschema.JsonSchemaValueException:
            error = jsonschema.exceptions.best_match(self._precise.iter_errors(body))
            if error is None:  # the two validators disagree; trust the precise one
                return
            where = ".".join(str(part) for part in error.absolute_path) or "body"
            raise RequestError(f"{where}: {error.message}") from None


@dataclass(slots=True)
class Engine:
    """Everything the handlers share, built once per app."""

    settings: Settings
    providers: Mapping[str, CompiledProvider]
    router: Router
    upstream: UpstreamClient
    tokens: TokenCounter
    messages_schema: RequestValidator
    count_schema: RequestValidator

    scopes: dict[str, dict[str, Any]]
    """Per configured provider: what its templates see as `provider` (config merged over rule defaults)."""

    def target(self, target: RouteTarget) -> tuple[ProviderSettings, CompiledProvider, dict[str, Any]]:
        settings = self.settings.providers.get(target.provider)
        provider = self.providers.get(settings.rules) if settings else None
        if settings is None or provider is None:
            raise NotFoundError(f"provider '{target.provider}' is not configured")
        return settings, provider, self.scopes[target.provider]


def provider_scope(settings: ProviderSettings, provider: CompiledProvider,
                   env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The `provider` variable of a provider's templates: config values, else the rule's defaults."""
    base_url = settings.base_url or provider.default("base_url", env) or ""
    return {
        "name": settings.name,
        "base_url": base_url.rstrip("/"),
        "api_key": settings.api_key or provider.default("api_key", env),
        "headers": {**(provider.default("headers", env) or {}), **settings.headers},
    }


def _engine(request: Request[Any, Any, Any]) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def _json_body(request: Request[Any, Any, Any]) -> Any:
    return _parse(await request.body())


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None


@dataclass(slots=True)
class Incoming:
    """The client's request as the forwarding code needs it."""

    body: dict[str, Any]
    raw: bytes | None
    """The bytes as received, while `body` still says exactly what they say (None once routing changed it)."""
    headers: dict[str, str]
    """The client's headers, names lower-cased."""


def _json_response(content: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response[bytes]:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json",
                    headers=dict(headers or {}))


# --- handlers ----------------------------------------------------------------------------------


@post("/v1/messages", status_code=200)
async def create_message(request: Request[Any, Any, Any]) -> Response[Any]:
    engine = _engine(request)
    raw = await request.body()
    body = _parse(raw)
    engine.messages_schema.check(body)
    route = await engine.router.route(body, _memo(lambda: _count(engine.tokens, body)))
    incoming = Incoming(route.body, raw if route.body is body else None,
                        {name.lower(): value for name, value in request.headers.items()})
    targets = route.targets
    for index, target in enumerate(targets):
        headers = {"request-id": new_id("req_"), "x-ccproxy-route": route.header(target)}
        try:
            return await _forward(engine, incoming, target, headers, route.tokens)
        except EngineError as exc:
            exc.headers.setdefault("x-ccproxy-route", headers["x-ccproxy-route"])
            if index + 1 == len(targets) or not _falls_back(exc):
                raise
            logger.warning("%s failed before answering (%s); trying %s", target, exc.message, targets[index + 1])
    raise AssertionError("a route has at least one target")  # pragma: no cover


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


async def _forward(engine: Engine, incoming: Incoming, target: RouteTarget, headers: dict[str, str],
                   tokens: int | None) -> Response[Any]:
    """Send the request to `target` and answer with its translated reply (or raise its mapped error)."""
    settings, provider, scope = engine.target(target)
    body = incoming.body
    is_streaming = bool(body.get("stream"))
    prepared = provider.build_request(body, model=target.model, provider=scope, stream=is_streaming,
                                      client_headers=incoming.headers)
    if provider.passthrough:
        payload = replace_model(incoming.raw if incoming.raw is not None else orjson.dumps(body), target.model)
    else:
        payload = orjson.dumps(prepared.body, default=_undefined_as_null)
    upstream_request = UpstreamRequest(
        provider=target.provider, method=provider.method, url=prepared.url, headers=prepared.headers,
        body=payload, stream=is_streaming, timeouts=settings.timeouts,
    )
    if provider.passthrough:
        return await _pass_through(engine, upstream_request, provider, target, headers)
    client_model = str(body.get("model"))
    if not is_streaming:
        response = await _send(engine, upstream_request, provider, target.provider)
        return await _whole_message(response, provider, target, client_model, prepared.tool_names, headers)
    # unless routing already counted, the input-token estimate for message_start is counted while the
    # upstream thinks
    estimate = None if tokens is not None else asyncio.ensure_future(_count(engine.tokens, body))
    try:
        response = await _send(engine, upstream_request, provider, target.provider)
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
    machine = StreamMachine(
        provider=target.provider, message_id=new_id("msg_"), model=client_model,
        tool_names=prepared.tool_names, sign=provider.signer(target.model, name=target.provider),
        input_tokens=tokens or 0,
    )
    events = _translate_stream(response, StreamTranslator(provider, machine, name=target.provider))
    return Stream(events, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})


async def _pass_through(engine: Engine, upstream_request: UpstreamRequest, provider: CompiledProvider,
                        target: RouteTarget, headers: dict[str, str]) -> Response[Any]:
    """An Anthropic-speaking upstream: its answer goes to the client byte for byte."""
    response = await _send(engine, upstream_request, provider, target.provider)
    media_type = response.headers.get("content-type", "application/json")
    if not upstream_request.stream:
        try:
            content = await response.read()
        finally:
            await response.aclose()
        return Response(content, status_code=response.status, media_type=media_type, headers=headers)
    return Stream(_relay(response), media_type=media_type, headers={**headers, "cache-control": "no-cache"})


async def _relay(response: UpstreamResponse) -> AsyncIterator[bytes]:
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


def _undefined_as_null(value: Any) -> None:
    """A Jinja undefined inside a list or dict a template built (``[a.missing]``) encodes as null."""
    if isinstance(value, Undefined):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


async def _send(engine: Engine, upstream_request: UpstreamRequest, provider: CompiledProvider,
                name: str) -> UpstreamResponse:
    """Send and wait for the status: a non-2xx answer is read, closed and raised as its mapped error."""
    response = await engine.upstream.send(upstream_request)
    if response.status < 300:
        return response
    try:
        raw = await response.read()
    finally:
        await response.aclose()
    raise provider.map_error(response.status, raw, response.headers.get("retry-after"), name=name)


async def _whole_message(response: UpstreamResponse, provider: CompiledProvider, target: RouteTarget,
                         client_model: str, tool_names: dict[str, str],
                         headers: dict[str, str]) -> Response[bytes]:
    try:
        raw = await response.read()
    finally:
        await response.aclose()
    builder = MessageBuilder(provider=target.provider, message_id=new_id("msg_"), model=client_model,
                             tool_names=tool_names, sign=provider.signer(target.model, name=target.provider))
    return _json_response(translate_message(provider, raw, builder, name=target.provider), headers=headers)


async def _translate_stream(response: UpstreamResponse, translator: StreamTranslator) -> AsyncIterator[bytes]:
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


async def _count(tokens: TokenCounter, body: Mapping[str, Any]) -> int:
    """Token count of a request; large bodies are counted in a thread so the loop stays free."""
    if len(body.get("messages") or ()) < INLINE_COUNT_MESSAGES and not body.get("tools"):
        return tokens.count_request(body)
    return await asyncio.to_thread(tokens.count_request, body)


@post("/v1/messages/count_tokens", status_code=200)
async def count_tokens(request: Request[Any, Any, Any]) -> Response[bytes]:
    engine = _engine(request)
    body = await _json_body(request)
    engine.count_schema.check(body)
    return _json_response({"input_tokens": await _count(engine.tokens, body)})


def _model_ids(engine: Engine) -> list[str]:
    """Client-facing model ids: Anthropic names the config maps, then every provider/model it names."""
    ids: list[str] = []
    routes = engine.settings.routes
    ids.extend(pattern for pattern in routes.models if not any(ch in pattern for ch in "*?["))
    targets = [*routes.default, *(t for listed in routes.models.values() for t in listed)]
    ids.extend(f"{target.provider}/{target.model}" for target in targets)
    for name, provider in engine.settings.providers.items():
        ids.extend(f"{name}/{model}" for model in provider.models)
    return list(dict.fromkeys(ids))


def _model_info(model_id: str) -> dict[str, Any]:
    return {"type": "model", "id": model_id, "display_name": model_id, "created_at": "2025-01-01T00:00:00Z"}


@get("/v1/models")
async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
    ids = _model_ids(_engine(request))
    params = request.query_params
    try:
        limit = max(1, min(int(params.get("limit", 20)), 1000))
    except ValueError:
        raise RequestError("limit: must be an integer") from None
    if after := params.get("after_id"):
        ids = ids[ids.index(after) + 1:] if after in ids else []
    if before := params.get("before_id"):
        ids = ids[:ids.index(before)] if before in ids else []
    page = ids[:limit]
    return _json_response({"data": [_model_info(i) for i in page], "has_more": len(ids) > limit,
                           "first_id": page[0] if page else None, "last_id": page[-1] if page else None})


@get("/v1/models/{model_id:path}")
async def get_model(request: Request[Any, Any, Any], model_id: FromPath[str]) -> Response[bytes]:
    model_id = model_id.lstrip("/")
    if model_id not in _model_ids(_engine(request)):
        raise NotFoundError(f"model '{model_id}' is not configured")
    return _json_response(_model_info(model_id))


@get("/health")
async def health(request: Request[Any, Any, Any]) -> Response[bytes]:
    engine = _engine(request)
    return _json_response({"status": "ok", "providers": sorted(engine.settings.providers)})


@head("/", media_type="text/plain")
async def head_root() -> None:
    """Claude Code probes the base URL with HEAD / before it starts."""


# --- errors ------------------------------------------------------------------------------------


def _error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Every error a client sees, as the Anthropic envelope with the matching status."""
    request_id = new_id("req_")
    if isinstance(exc, EngineError):
        if isinstance(exc, UpstreamError):
            logger.warning("%s", exc.message)
        headers = {"request-id": request_id, **exc.headers}
        return _json_response(exc.envelope(request_id), exc.status, headers)
    if isinstance(exc, HTTPException):
        status = exc.status_code
        message = _http_message(status, request, exc)
        return _json_response(error_envelope(error_type_for_status(status), message, request_id), status,
                              {"request-id": request_id})
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return _json_response(error_envelope("api_error", "internal error", request_id), 500,
                          {"request-id": request_id})


def _http_message(status: int, request: Request[Any, Any, Any], exc: HTTPException) -> str:
    if status == 404:
        return f"{request.method} {request.url.path}: not found"
    if status == 405:
        return f"{request.method} is not allowed on {request.url.path}"
    if status == 413:
        return "request body is too large"
    return str(exc.detail)


# --- assembly ----------------------------------------------------------------------------------


def create_app(settings: Settings, providers: Mapping[str, CompiledProvider], *,
               upstream: UpstreamClient | None = None, tokens: TokenCounter | None = None,
               max_body_bytes: int = 32 * 1024 * 1024) -> Litestar:
    """The ASGI app for `settings` and compiled `providers` (see `load_engine` for building both)."""
    scopes = {name: provider_scope(item, providers[item.rules])
              for name, item in settings.providers.items() if item.rules in providers}
    engine = Engine(
        settings=settings, providers=providers, router=Router(settings), scopes=scopes,
        upstream=upstream or UpstreamClient(), tokens=tokens or TokenCounter(),
        messages_schema=RequestValidator("anthropic.messages.schema.json"),
        count_schema=RequestValidator("anthropic.count_tokens.schema.json"),
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        started = time.perf_counter()
        await engine.upstream.open()
        warm = asyncio.ensure_future(asyncio.to_thread(engine.tokens.warm_up))
        logger.debug("upstream pools open in %.1f ms", (time.perf_counter() - started) * 1000)
        try:
            yield
        finally:
            warm.cancel()
            await engine.upstream.aclose()

    return Litestar(
        route_handlers=[create_message, count_tokens, list_models, get_model, health, head_root],
        state=State({"engine": engine}),
        lifespan=[lifespan],
        exception_handlers={Exception: _error_response},
        openapi_config=None,
        request_max_body_size=max_body_bytes,
        logging_config=None,
        debug=False,
    )


__all__ = ["Engine", "Route", "create_app"]
