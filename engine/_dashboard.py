"""The dashboard: ``GET /ui`` (a static page) and the data behind it, ``/ui/api/*``.

The page and its assets (engine/ui/, shipped in the wheel) are open, like ``HEAD /``: they hold no
data, and the page must load to ask for the key. The data needs the server key when one is set, as
a header or as the ``ccproxy_key`` cookie the page sets (`_app._authenticator`). Every answer carries
a Content-Security-Policy that allows only this origin's own script and style, and no inline script:
model output and upstream errors reach the page as JSON strings, which it shows as text only.

Costs are computed here, when asked, from the ``price`` rows of the rules' capability tables, so a
record keeps tokens only. A provider's circuit-breaker state is the worst of its models' breakers
(`Proxy.breakers`); before any of its models was tried the summary says None and the page "n/a".
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

import orjson
from litestar import Request, Response, Router, get
from litestar.params import FromPath

from ._errors import NotFoundError, RequestError
from ._proxy import Proxy
from ._records import RequestRecord
from ._resilience import BreakerState

__all__ = ["ASSETS", "CSP", "dashboard_router", "price_cost"]

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
#: The page's files (engine/ui/) and their media types; nothing else is served from there.
ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}
_HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
            "cache-control": "no-store"}
MAX_LIMIT = 1000


def _asset(name: str) -> bytes:
    return resources.files("ccproxy_engine").joinpath("ui", name).read_bytes()


def _proxy(request: Request[Any, Any, Any]) -> Proxy:
    proxy: Proxy = request.app.state.ccproxy.proxy
    return proxy


def _json(content: Any) -> Response[bytes]:
    return Response(orjson.dumps(content), media_type="application/json", headers=_HEADERS)


def price_cost(price: Mapping[str, Any] | None, usage: Mapping[str, int]) -> float | None:
    """USD for `usage` at `price` (USD per million tokens); None when the model has no price or nothing
    was counted (a request that failed before its answer)."""
    if not price or not usage:
        return None
    base = float(price["input"])
    total = (usage.get("input_tokens", 0) * base
             + usage.get("output_tokens", 0) * float(price["output"])
             + usage.get("cache_read_input_tokens", 0) * float(price.get("cache_read", base))
             + usage.get("cache_creation_input_tokens", 0) * float(price.get("cache_write", base)))
    return round(total / 1_000_000, 8)


def _price(proxy: Proxy, provider: str | None, model: str | None) -> Mapping[str, Any] | None:
    endpoint = proxy.endpoints.get(provider or "")
    if endpoint is None or model is None:
        return None
    price = endpoint.rules.capabilities(model).get("price")
    return price if isinstance(price, Mapping) else None


def _record_json(proxy: Proxy, record: RequestRecord, *, detail: bool = False) -> dict[str, Any]:
    out = record.as_json(detail=detail)
    out["cost"] = price_cost(_price(proxy, record.provider, record.model), record.usage)
    return out


def _breaker_state(proxy: Proxy, provider: str) -> str | None:
    """The provider's circuit-breaker state: the worst of its models' breakers (open, then half-open,
    then closed), "off" when breakers are disabled, None before any of its models was tried."""
    breakers = proxy.breakers
    if not breakers.enabled:
        return "off"
    states = [breaker.state for (name, _), breaker in breakers._breakers.items() if name == provider]
    for state in (BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED):
        if state in states:
            return state.name.lower().replace("_", "-")
    return None


@get("/", media_type="text/html")
async def page() -> Response[bytes]:
    return Response(_asset("index.html"), media_type="text/html", headers=_HEADERS)


@get("/assets/{name:str}")
async def asset(name: FromPath[str]) -> Response[bytes]:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFoundError(f"/ui/assets/{name}: not found")
    return Response(_asset(name), media_type=media_type, headers=_HEADERS)


@get("/api/requests")
async def requests(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Recent requests, newest first, in-flight ones included; ``session`` keeps one Claude Code
    session's, ``limit`` says how many (default 200)."""
    proxy = _proxy(request)
    params = request.query_params
    try:
        limit = max(1, min(int(params.get("limit", 200)), MAX_LIMIT))
    except ValueError:
        raise RequestError("limit: must be an integer") from None
    found = proxy.records.recent(limit=limit, session=params.get("session") or None)
    return _json({"worker": proxy.records.pid, "requests": [_record_json(proxy, r) for r in found]})


@get("/api/requests/{request_id:str}")
async def request_detail(request: Request[Any, Any, Any], request_id: FromPath[str]) -> Response[bytes]:
    """One request with what was captured of it (``server.dashboard.capture``)."""
    proxy = _proxy(request)
    record = proxy.records.get(request_id)
    if record is None:
        raise NotFoundError(f"request '{request_id}' is not (or no longer) kept by worker {proxy.records.pid}")
    return _json(_record_json(proxy, record, detail=True))


@get("/api/summary")
async def summary(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Per provider: the last 15 minutes by minute and the breaker; per route: requests since start;
    per model: tokens and estimated cost since start."""
    proxy = _proxy(request)
    records = proxy.records
    minutes = records.provider_minutes()
    providers = {name: {"minutes": minutes.get(name, []), "breaker": _breaker_state(proxy, name)}
                 for name in sorted({*proxy.settings.providers, *minutes})}
    models = [{"provider": provider, "model": model, "requests": totals.requests, "usage": dict(totals.usage),
               "cost": price_cost(_price(proxy, provider, model), totals.usage)}
              for (provider, model), totals in sorted(records.tokens.items())]
    return _json({"worker": records.pid, "started": records.started, "kept": len(records),
                  "kept_bytes": records.bytes, "in_flight": records.in_flight(),
                  "capture": records.settings.capture, "providers": providers,
                  "routes": dict(records.routes.most_common()), "models": models})


def dashboard_router() -> Router:
    """The ``/ui`` routes, registered by `create_app`."""
    return Router(path="/ui", route_handlers=[page, asset, requests, request_detail, summary])
