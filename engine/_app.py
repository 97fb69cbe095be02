"""The HTTP app: Anthropic Messages API handlers in front of the proxy pipeline (`_proxy.Proxy`).

`create_app` only assembles; it reads no files and no environment, so ``serve`` and the tests build
the same app from different inputs. A handler reads and checks the request (`RequestValidator`),
asks the pipeline, and sends its `Answer`; every error, whoever raised it, is rendered by one
handler as the Anthropic envelope with the matching status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from litestar import Litestar, Request, Response, get, head, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.response import Stream

from ._compiler import CompiledRules
from ._config import Settings
from ._endpoint import bind_endpoints
from ._errors import (
    EngineError,
    NotFoundError,
    RequestError,
    UpstreamError,
    error_envelope,
    error_type_for_status,
)
from ._functions import new_id
from ._proxy import Answer, Proxy
from ._tokens import TokenCounter
from ._upstream import UpstreamClient
from ._validation import MESSAGES_RANGES, RequestValidator

__all__ = ["create_app"]

logger = logging.getLogger("ccproxy_engine")


@dataclass(slots=True)
class _State:
    """What the handlers share, built once per app."""

    proxy: Proxy
    messages_schema: RequestValidator
    count_schema: RequestValidator


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
    return _send(await state.proxy.messages(body, raw, request.headers))


@post("/v1/messages/count_tokens", status_code=200)
async def count_tokens(request: Request[Any, Any, Any]) -> Response[bytes]:
    state = _state(request)
    body = _parse(await request.body())
    state.count_schema.check(body)
    return _json_response({"input_tokens": await state.proxy.count_tokens(body)})


def _model_info(model_id: str) -> dict[str, Any]:
    return {"type": "model", "id": model_id, "display_name": model_id, "created_at": "2025-01-01T00:00:00Z"}


@get("/v1/models")
async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
    ids = _state(request).proxy.model_ids()
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
    if model_id not in _state(request).proxy.model_ids():
        raise NotFoundError(f"model '{model_id}' is not configured")
    return _json_response(_model_info(model_id))


@get("/health")
async def health(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _json_response({"status": "ok", "providers": sorted(_state(request).proxy.settings.providers)})


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


def create_app(settings: Settings, rules: Mapping[str, CompiledRules], *,
               upstream: UpstreamClient | None = None, tokens: TokenCounter | None = None,
               max_body_bytes: int = 32 * 1024 * 1024) -> Litestar:
    """The ASGI app for `settings` and compiled `rules` (`_cli.prepare` builds both from files)."""
    proxy = Proxy(settings, bind_endpoints(settings, rules), upstream=upstream, tokens=tokens)
    state = _State(proxy, RequestValidator("anthropic.messages.schema.json", MESSAGES_RANGES),
                   RequestValidator("anthropic.count_tokens.schema.json"))

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        started = time.perf_counter()
        await proxy.upstream.open()
        warm = asyncio.ensure_future(asyncio.to_thread(proxy.tokens.warm_up))
        logger.debug("upstream pools open in %.1f ms", (time.perf_counter() - started) * 1000)
        try:
            yield
        finally:
            warm.cancel()
            await proxy.upstream.aclose()

    return Litestar(
        route_handlers=[create_message, count_tokens, list_models, get_model, health, head_root],
        state=State({"ccproxy": state}),
        lifespan=[lifespan],
        exception_handlers={Exception: _error_response},
        openapi_config=None,
        request_max_body_size=max_body_bytes,
        logging_config=None,
        debug=False,
    )
