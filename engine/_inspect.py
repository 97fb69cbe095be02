"""``translate`` and ``route``: what the rules and the router do to a request, shown without sending it.

Both drive the objects `serve` drives: `translate` the provider's bound `Endpoint` (`prepare`, then
`message`/`events`/`error` for a recorded answer), `route` the `Router`. Nothing here opens a socket.

A request file is an Anthropic ``/v1/messages`` body, or a recorded client request
(``{"path", "headers", "body"}``, the format of tests/fixtures/claude-code): then its headers are
the client headers the rules see.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ._compiler import CompiledRules
from ._config import DEFAULT_CONFIG_YAML, RouteTarget, Settings
from ._endpoint import Endpoint, UpstreamCall, bind_endpoints
from ._errors import EngineError, RequestError
from ._router import Route, Router
from ._sse import encode_events
from ._tokens import TokenCounter
from ._types import JSONObject
from ._upstream import DEFAULT_HEADERS, request_headers
from ._validation import MESSAGES_RANGES, RequestValidator
from ._yaml import Interpolation, interpolate, parse_yaml

__all__ = ["ClientRequest", "describe_call", "error_text", "missing_variables", "prepare_call", "read_request",
           "route_request", "translate_answer"]

#: Headers whose values are credentials: shown as their scheme (if any) and ``***``.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key"})
MASK = "***"
_SSE_START = re.compile(rb"\A\s*(?:data|event|id|retry|:)")


@dataclass(slots=True)
class ClientRequest:
    """A request as a client would have sent it: the body and the (lower-cased) headers."""

    body: JSONObject
    headers: dict[str, str] = field(default_factory=dict)


def read_request(path: Path) -> ClientRequest:
    """The request in `path`, checked as ``POST /v1/messages`` would check it; raises `RequestError`
    (what the server would answer), or `OSError` when the file cannot be read."""
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"{path}: not valid JSON: {exc}") from None
    headers: dict[str, str] = {}
    if isinstance(data, dict) and "messages" not in data and isinstance(data.get("body"), dict):
        raw_headers = data.get("headers")
        if isinstance(raw_headers, dict):
            headers = {str(k).lower(): str(v) for k, v in raw_headers.items()}
        data = data["body"]
    RequestValidator("anthropic.messages.schema.json", MESSAGES_RANGES).check(data)
    return ClientRequest(data, headers)


def missing_variables(config: Path | None, env: Mapping[str, str]) -> list[str]:
    """The ``${VAR}`` references (without a default) in the config's values that `env` leaves unset
    (comments are not values; a config that does not parse has none: `prepare` reports it)."""
    text = DEFAULT_CONFIG_YAML if config is None else config.read_text(encoding="utf-8")
    found = Interpolation()
    interpolate(parse_yaml(text, str(config)).data, {}, env, found)
    return list(dict.fromkeys(name for _, name in found.missing))


def _mask(value: str, secrets: list[str]) -> str:
    for secret in secrets:
        value = value.replace(secret, MASK)
    return value


def _mask_header(name: str, value: str, secrets: list[str]) -> str:
    if name.lower() in SECRET_HEADERS:
        scheme, _, rest = value.partition(" ")
        return f"{scheme} {MASK}" if rest else MASK
    return _mask(value, secrets)


def describe_call(endpoint: Endpoint, call: UpstreamCall) -> str:
    """The upstream request as text: method and URL, headers (credentials masked), the body as JSON."""
    secrets = [s for s in (endpoint.provider_vars.get("api_key"), endpoint.settings.api_key)
               if isinstance(s, str) and len(s) >= 4]
    request = call.request
    own = request_headers(request)
    lowered = {name.lower() for name in own}
    headers = {**{k: v for k, v in DEFAULT_HEADERS.items() if k not in lowered}, **own,
               "content-length": str(len(request.body))}
    lines = [f"{request.method} {_mask(request.url, secrets)}"]
    lines += [f"{name}: {_mask_header(name, value, secrets)}" for name, value in headers.items()]
    try:
        body = orjson.dumps(orjson.loads(request.body), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        body = request.body.decode(errors="replace")
    return "\n".join([*lines, "", _mask(body, secrets)])


def prepare_call(settings: Settings, rules: Mapping[str, CompiledRules], target: RouteTarget,
                 request: ClientRequest, env: Mapping[str, str]) -> tuple[Endpoint, UpstreamCall]:
    """The provider's endpoint, bound as `serve` binds it, and its call for `request`."""
    endpoints = bind_endpoints(settings, rules, env)
    endpoint = endpoints.get(target.provider)
    if endpoint is None:
        known = ", ".join(endpoints) or "none"
        raise RequestError(f"provider '{target.provider}' is not configured (configured: {known})")
    return endpoint, endpoint.prepare(request.body, model=target.model, client_headers=request.headers)


def translate_answer(endpoint: Endpoint, call: UpstreamCall, raw: bytes, *, status: int = 200,
                     input_tokens: int = 0) -> str:
    """A recorded upstream answer as the client would get it: the Anthropic message (JSON), the
    Anthropic events (SSE) for a recorded stream, or the error envelope for a non-2xx `status`."""
    if status >= 300:
        raise endpoint.error(status, raw)
    if _SSE_START.match(raw):
        translator = endpoint.events(call, input_tokens)
        events = translator.start() + translator.feed_bytes(raw) + translator.finish()
        return encode_events(events).decode()
    return orjson.dumps(endpoint.message(call, raw), option=orjson.OPT_INDENT_2).decode()


def route_request(settings: Settings, request: ClientRequest, tokens: TokenCounter | None = None) -> Route:
    """The route `serve` would take for `request` (counting tokens only when a route needs them)."""
    counter = tokens or TokenCounter()

    async def count() -> int:
        return counter.count_request(request.body)

    return asyncio.run(Router(settings).route(request.body, count))


def error_text(exc: EngineError) -> str:
    """An engine error as the Anthropic envelope a client would receive, with its status."""
    return f"HTTP {exc.status}\n" + orjson.dumps(exc.envelope("req_translate"), option=orjson.OPT_INDENT_2).decode()

