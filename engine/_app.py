"""The HTTP app: Anthropic Messages, OpenAI Chat Completions and Responses handlers in front of the proxy
pipeline (`_proxy.Proxy`).

`create_app` only assembles; it reads no files and no environment (but the shipped schemas and the
inbound rule file, package data like them), so ``serve`` and the tests build the same app from
different inputs. A handler reads and checks the request (`RequestValidator`; for Chat Completions,
`_chat.ChatInbound`), asks the pipeline, and sends its `Answer`; every error, whoever raised it, is
rendered by one handler in the envelope of the API the client called, with the matching status.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from litestar import Litestar, Request, Response, get, head, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.response import Stream
from litestar.types import ASGIApp, Receive, Scope, Send

from ._chat import ChatInbound, openai_error, render
from ._compiler import CompiledRules
from ._config import Settings
from ._dashboard import dashboard_router
from ._endpoint import bind_endpoints
from ._errors import (
    AuthenticationError,
    EngineError,
    NotFoundError,
    RequestError,
    UpstreamError,
    error_envelope,
    error_type_for_status,
)
from ._functions import new_id
from ._metrics import Metrics
from ._observe import REQUEST_ID, Observer, Trace
from ._proxy import Adapter, Answer, Decoded, Proxy, configured_models
from ._records import RequestRecords
from ._redact import remember
from ._responses import ResponsesInbound
from ._responses import render as render_response
from ._shutdown import Drain, register, unregister
from ._tokens import TokenCounter
from ._types import JSONObject
from ._upstream import UpstreamClient
from ._validation import MESSAGES_RANGES, RequestValidator

__all__ = ["create_app", "replace_proxy"]

logger = logging.getLogger("ccproxy_engine")


@dataclass(slots=True)
class _State:
    """What the handlers share, built once per app."""

    proxy: Proxy
    messages_schema: RequestValidator
    count_schema: RequestValidator
    chat: ChatInbound
    responses: ResponsesInbound


def _state(request: Request[Any, Any, Any]) -> _State:
    state: _State = request.app.state.ccproxy
    return state


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None


def _json_response(content: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response[bytes]:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json",
                    headers=dict(headers or {}))


def _send(answer: Answer) -> Response[Any]:
    if answer.stream is not None:
        return Stream(answer.stream, status_code=answer.status, media_type=answer.media_type,
                      headers=answer.headers)
    return Response(answer.content, status_code=answer.status, media_type=answer.media_type,
                    headers=answer.headers)


# --- handlers ----------------------------------------------------------------------------------


@post("/v1/messages", status_code=200)
async def create_message(request: Request[Any, Any, Any]) -> Response[Any]:
    state = _state(request)
    raw = await request.body()
    body = _parse(raw)
    state.messages_schema.check(body)
    answer = await state.proxy.messages(body, raw, request.headers, request_id=_request_id(request),
                                        trace=_trace(request))
    request.scope[_ANSWER] = answer  # type: ignore[literal-required]
    return _send(answer)


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request[Any, Any, Any]) -> Response[Any]:
    """OpenAI Chat Completions clients: the inbound rules build the Anthropic request, the pipeline
    routes and sends it like any other, `_chat.render` answers in the client's format."""
    return await _inbound(request, _state(request).chat.request, ChatInbound.adapt, render)


@post("/v1/responses", status_code=200)
async def responses(request: Request[Any, Any, Any]) -> Response[Any]:
    """OpenAI Responses clients (Codex): like `chat_completions`, with the Responses inbound rules and
    `_responses.render`. Stateless: a request that needs stored responses is refused."""
    return await _inbound(request, _state(request).responses.request, ResponsesInbound.adapt, render_response)


async def _inbound(request: Request[Any, Any, Any], translate: Callable[[Any, Any], JSONObject], adapt: Adapter,
                   render_answer: Callable[[Decoded, Any], Answer]) -> Response[Any]:
    """A request in another API's format: `translate` builds the Anthropic body, the pipeline answers
    with Anthropic values, `render_answer` puts them back in the client's format."""
    raw = await request.body()
    body = _parse(raw)
    decoded = await _state(request).proxy.decoded(translate(body, request.headers), len(raw), request.headers,
                                                  request_id=_request_id(request), adapt=adapt,
                                                  trace=_trace(request))
    answer = render_answer(decoded, body)
    request.scope[_ANSWER] = answer  # type: ignore[literal-required]
    return _send(answer)


@post("/v1/messages/count_tokens", status_code=200)
async def count_tokens(request: Request[Any, Any, Any]) -> Response[bytes]:
    state = _state(request)
    raw = await request.body()
    body = _parse(raw)
    state.count_schema.check(body)
    return _json_response({"input_tokens": await state.proxy.count_tokens(body, len(raw))})


def _model_info(model_id: str, openai: bool) -> dict[str, Any]:
    if openai:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": model_id.split("/", 1)[0]}
    return {"type": "model", "id": model_id, "display_name": model_id, "created_at": "2025-01-01T00:00:00Z"}


def _is_openai_client(request: Request[Any, Any, Any]) -> bool:
    """An OpenAI-format client: the Chat Completions endpoint, or the models endpoints (which both APIs
    have) without ``anthropic-version``, which every Anthropic client sends. Anything else is Anthropic's."""
    path: str = request.scope["path"]
    if path in _OPENAI_PATHS:
        return True
    return path.startswith("/v1/models") and "anthropic-version" not in request.headers


@get("/v1/models")
async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
    ids = _state(request).proxy.model_ids()
    if _is_openai_client(request):
        return _json_response({"object": "list", "data": [_model_info(i, True) for i in ids]})
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
    return _json_response({"data": [_model_info(i, False) for i in page], "has_more": len(ids) > limit,
                           "first_id": page[0] if page else None, "last_id": page[-1] if page else None})


@get("/v1/models/{model_id:path}")
async def get_model(request: Request[Any, Any, Any], model_id: FromPath[str]) -> Response[bytes]:
    model_id = model_id.lstrip("/")
    if model_id not in _state(request).proxy.model_ids():
        raise NotFoundError(f"model '{model_id}' is not configured")
    return _json_response(_model_info(model_id, _is_openai_client(request)))


@get("/metrics", media_type="text/plain")
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text format (every worker's numbers when there are several); behind the server key."""
    content, content_type = _state(request).proxy.metrics.render()
    return Response(content, media_type=content_type)


@get("/health")
async def health(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _json_response({"status": "ok", "providers": sorted(_state(request).proxy.settings.providers)})


@head("/", media_type="text/plain")
async def head_root() -> None:
    """Claude Code probes the base URL with HEAD / before it starts."""


# --- admission ---------------------------------------------------------------------------------

#: Where a request's id and its answer are kept in the ASGI scope.
_REQUEST_ID = "ccproxy.request_id"
_ANSWER = "ccproxy.answer"
_TRACE = "ccproxy.trace"
#: The endpoints that send a request upstream: each gets a `Trace` (metrics, access log).
_TRACED_PATHS = frozenset({"/v1/messages", "/v1/chat/completions", "/v1/responses"})


def _trace(request: Request[Any, Any, Any]) -> Trace | None:
    trace = request.scope.get(_TRACE)
    return trace if isinstance(trace, Trace) else None
#: What a client-sent request id may look like before it is echoed in a header or written to a log.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
#: Endpoints that answer without the server key: liveness probes, Claude Code's HEAD / probe, and the
#: dashboard's page and assets (no data: the page asks for the key; its data under /ui/api/ needs it).
_OPEN_ENDPOINTS = frozenset({("GET", "/health"), ("HEAD", "/"), ("GET", "/ui")})
_OPEN_PREFIX = "/ui/assets/"
#: The dashboard's data also takes the key from this cookie, which the page sets once it has the key.
_KEY_COOKIE = "ccproxy_key"
#: Endpoints of OpenAI's API: their errors are in OpenAI's envelope whatever the headers say.
_OPENAI_PATHS = frozenset({"/v1/chat/completions", "/v1/responses"})


def _request_id(request: Request[Any, Any, Any]) -> str:
    """The request's id: the client's ``request-id`` (or ``x-request-id``) when it is a plain token,
    else a new one; kept in the scope so that every answer and error about the request carries it."""
    found = request.scope.get(_REQUEST_ID)
    if isinstance(found, str):
        return found
    sent = request.headers.get("request-id") or request.headers.get("x-request-id") or ""
    request_id = sent if _VALID_REQUEST_ID.fullmatch(sent) else new_id("req_")
    request.scope[_REQUEST_ID] = request_id  # type: ignore[literal-required]
    REQUEST_ID.set(request_id)  # every log line about this request names it (`_observe`)
    trace = request.scope.get(_TRACE)
    if isinstance(trace, Trace):
        trace.request_id = request_id
    return request_id


def _authenticator(api_key: str | None) -> Callable[[Request[Any, Any, Any]], Awaitable[None]] | None:
    """The app's before-request hook when a server key is set: the key must come as ``x-api-key`` or
    ``Authorization: Bearer``, compared in constant time."""
    if not api_key:
        return None
    expected = api_key.encode()

    async def authenticate(request: Request[Any, Any, Any]) -> None:
        path = request.scope["path"]
        if (request.method, path) in _OPEN_ENDPOINTS or (request.method == "GET" and path.startswith(_OPEN_PREFIX)):
            return
        headers = request.headers
        bearer = headers.get("authorization", "")
        sent = [headers.get("x-api-key", ""), bearer[7:] if bearer[:7].lower() == "bearer " else ""]
        if path.startswith("/ui/api/"):
            sent.append(request.cookies.get(_KEY_COOKIE, ""))
        # every candidate is compared, so the time taken does not say which one was close
        matches = [hmac.compare_digest(candidate.encode(), expected) for candidate in sent if candidate]
        if not any(matches):
            raise AuthenticationError("invalid x-api-key" if matches else
                                      "x-api-key header is required (or Authorization: Bearer)")

    return authenticate


def _closes_answers(app: ASGIApp) -> ASGIApp:
    """Middleware: once the response is over (sent, failed or abandoned), the answer's upstream
    response is closed, even when its stream never started."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        finally:
            answer = scope.get(_ANSWER)
            if isinstance(answer, Answer):
                await answer.aclose()

    return middleware


def _observes(observer: Observer) -> Callable[[ASGIApp], ASGIApp]:
    """Middleware: each request to a traced endpoint (`_TRACED_PATHS`) gets a `Trace`, finished with the
    status the client got once the response is over (a stream's last byte, an error, or the client gone). Every request
    starts with no request id in the log context, so none is inherited from an earlier one."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            REQUEST_ID.set(None)
            exchange = _Exchange(receive, send)
            if scope["path"] not in _TRACED_PATHS or scope.get("method") != "POST":
                await app(scope, exchange.receive, exchange.send)
                return
            trace = Trace("")
            scope[_TRACE] = trace  # type: ignore[literal-required]
            try:
                await app(scope, exchange.receive, exchange.send)
            finally:
                observer.finish(trace, exchange.status)

        return middleware

    return wrap


class _Exchange:
    """One request's ASGI channels, watched: the status sent, and whether the response is complete.

    A wait on `receive` that the server cancels (granian does, for connections still open when it
    stops) reads as the client's ``http.disconnect``, instead of a CancelledError raised in the app's
    disconnect listener and logged as a crash; a cancellation of the waiting task itself is kept,
    unless the response is already complete (then granian's and the app's own cancellation race, and
    nothing is left to stop)."""

    __slots__ = ("_receive", "_send", "complete", "status")

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive, self._send = receive, send
        self.status = 500  # what the client is left with when no response started
        self.complete = False

    async def receive(self) -> Any:
        try:
            return await self._receive()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self.complete and (task is None or task.cancelling()):
                raise
            return {"type": "http.disconnect"}

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.complete = True
        await self._send(message)


# --- errors ------------------------------------------------------------------------------------


def _error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Every error a client sees, in the envelope of the API it called (`_is_openai_client`) with the
    matching status: Anthropic's, or OpenAI's ``{"error": {message, type, param, code}}``."""
    request_id = _request_id(request)
    headers = {"request-id": request_id}
    if isinstance(exc, EngineError):
        if isinstance(exc, UpstreamError):
            logger.warning("%s", exc.message)
        error_type, message, status = exc.error_type, exc.message, exc.status
        headers.update(exc.headers)
    elif isinstance(exc, HTTPException):
        status = exc.status_code
        error_type, message = error_type_for_status(status), _http_message(status, request, exc)
    else:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        error_type, message, status = "api_error", "internal error", 500
    if _is_openai_client(request):
        status, envelope = openai_error(error_type, message, status)
        return _json_response(envelope, status, headers)
    return _json_response(error_envelope(error_type, message, request_id), status, headers)


def _http_message(status: int, request: Request[Any, Any, Any], exc: HTTPException) -> str:
    if status == 404:
        return f"{request.method} {request.url.path}: not found"
    if status == 405:
        return f"{request.method} is not allowed on {request.url.path}"
    if status == 413:
        return "request body is too large"
    return str(exc.detail)


# --- assembly ----------------------------------------------------------------------------------


def create_app(settings: Settings, rules: Mapping[str, CompiledRules], *,
               upstream: UpstreamClient | None = None, tokens: TokenCounter | None = None,
               max_body_bytes: int = 32 * 1024 * 1024) -> Litestar:
    """The ASGI app for `settings` and compiled `rules` (`_cli.prepare` builds both from files)."""
    metrics = Metrics(settings.providers, configured_models(settings))
    drain = Drain(settings.shutdown_grace)
    proxy = Proxy(settings, bind_endpoints(settings, rules), upstream=upstream, tokens=tokens, metrics=metrics,
                  drain=drain, records=RequestRecords(settings.dashboard))
    observer = Observer(metrics, access_log=settings.access_log)
    state = _State(proxy, RequestValidator("anthropic.messages.schema.json", MESSAGES_RANGES),
                   RequestValidator("anthropic.count_tokens.schema.json"), ChatInbound(), ResponsesInbound())

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        started = time.perf_counter()
        await proxy.upstream.open()
        register(drain)  # SIGTERM starts its grace period (`_shutdown.begin_shutdown`)
        # the tokenizer (about 25 MB) loads on the first count, in a thread: idle memory does not carry it
        logger.debug("upstream pools open in %.1f ms", (time.perf_counter() - started) * 1000)
        try:
            yield
        finally:
            unregister(drain)
            await proxy.upstream.aclose()

    _remember_keys(settings)
    return Litestar(
        route_handlers=[create_message, chat_completions, responses, count_tokens, list_models, get_model,
                        metrics_endpoint, health, head_root, dashboard_router()],
        state=State({"ccproxy": state}),
        lifespan=[lifespan],
        before_request=_authenticator(settings.api_key),
        middleware=[_observes(observer), _closes_answers],
        exception_handlers={Exception: _error_response},
        openapi_config=None,
        request_max_body_size=max_body_bytes,
        logging_config=None,
        debug=False,
    )


def replace_proxy(app: Litestar, settings: Settings, rules: Mapping[str, CompiledRules]) -> Proxy:
    """Serve new requests with a pipeline built from `settings` and `rules` (a reload); returns the old one.

    The swap is one attribute assignment, so every request sees one pipeline or the other: a request
    in flight keeps the `Proxy` it started with until it ends. The new pipeline shares the old one's
    upstream pools and warm token counter, so nothing in flight is cut and nothing needs closing;
    the lifespan closes the shared pools at shutdown. The server key and address are the app's
    own (its authenticator and socket), so they change only with a restart.
    """
    state: _State = app.state.ccproxy
    old = state.proxy
    _remember_keys(settings)
    state.proxy = Proxy(settings, bind_endpoints(settings, rules), upstream=old.upstream, tokens=old.tokens,
                        records=old.records)
    return old


def _remember_keys(settings: Settings) -> None:
    """Every configured credential is redacted from upstream text a client or a log could see."""
    for provider in settings.providers.values():
        remember(provider.api_key)
    remember(settings.api_key)
