"""The upstream HTTP client: one connection pool per provider, explicit time limits, and the only
place where aiohttp (and httpx) errors are caught and turned into ours.

Requests go out on aiohttp directly: one ``ClientSession`` per provider. httpx on top of aiohttp
(``httpx-aiohttp``) cost 3-4x aiohttp's own CPU per call (docs/performance.md, bench/upstream_transport.py),
mostly in httpx's per-request models, URL parsing and cookie handling, which a proxy does not use.
A caller that passes an httpx ``transport`` (tests use ``httpx.MockTransport``) gets an
``httpx.AsyncClient`` over it instead; both paths answer with the same `UpstreamResponse` and map
failures to the same errors.

Usage, from the app's lifespan and handlers::

    upstream = UpstreamClient(settings.providers)
    await upstream.open()                              # lifespan start-up; nothing opens at import
    async with await upstream.send(request) as response:
        if response.status >= 400:
            body = await response.read()
        else:
            async for chunk in response.aiter_bytes():
                ...
    await upstream.aclose()                            # lifespan shutdown

Every request goes out with ``stream=True``, so the status and headers are known before any body
byte is read, and closing the response is the caller's job (``async with`` or `aclose`). A body
iteration that ends early (error, cancellation, the consumer stopping) also closes it, so a client
that hangs up never leaves an upstream generation running.

Time limits (`Timeouts`): ``connect`` to get a connection, ``first_byte`` until the response headers,
``idle`` for the longest silence inside the body, and ``total`` only for non-streamed calls. httpx's
default of 5 s in every phase would kill a slow first token, so each phase is set explicitly; a
stream has no overall limit and may run for as long as data keeps coming.

Errors, mapped once here and chained ``from`` the original:

- cannot connect, or the peer hung up / answered garbage before or while sending the body:
  `UpstreamConnectError` (the message says when the stream was cut);
- any time limit: `UpstreamTimeoutError`, naming the phase and the limit;
- a body that its Content-Encoding cannot decode: `UpstreamProtocolError`.

Messages name the provider and the host, never a credential: query strings are dropped and the
values of auth headers are masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, cast

import aiohttp
import httpx

from ._config import Timeouts
from ._errors import UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamTimeoutError

__all__ = ["DEFAULT_HEADERS", "POOL_LIMITS", "UpstreamClient", "UpstreamRequest", "UpstreamResponse", "request_headers"]

#: Per provider. A proxy multiplexes many clients onto few hosts, so the pool is larger than httpx's
#: default (100/20), and idle connections are kept 30 s: a new TLS handshake costs more than a socket.
#: (aiohttp caps the total only; it has no separate keep-alive count.)
POOL_LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=100, keepalive_expiry=30.0)
USER_AGENT = "ccproxy-engine"
DEFAULT_TIMEOUTS = Timeouts()

_TRANSPORT_ERRORS = (httpx.HTTPError, httpx.InvalidURL, aiohttp.ClientError)
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key",
                             "x-goog-api-key"})
_URL_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s'\"?#]*)[?#][^\s'\"]*", re.IGNORECASE)
_SECRET_PARAM = re.compile(r"\b((?:api[_-]?)?key|token|secret|sig|signature|access_token)=[^&\s'\"]+",
                           re.IGNORECASE)
_MAX_DETAIL = 300


@dataclass(slots=True, kw_only=True)
class UpstreamRequest:
    """One call to a provider, already shaped by its rules (URL, auth and extra headers included)."""

    provider: str
    method: str = "POST"
    url: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    stream: bool
    timeouts: Timeouts = DEFAULT_TIMEOUTS


#: Headers every upstream request carries unless its rules set them: every provider body is JSON.
DEFAULT_HEADERS = {"user-agent": USER_AGENT, "content-type": "application/json"}


def request_headers(request: UpstreamRequest) -> dict[str, str]:
    """The headers `UpstreamClient.send` passes on top of `DEFAULT_HEADERS` (``translate`` shows both)."""
    headers = request.headers
    if request.stream and not any(key.lower() == "accept-encoding" for key in headers):
        # a compressor between the model and us may hold tokens back until its buffer fills
        headers = {**headers, "accept-encoding": "identity"}
    return headers


class UpstreamClient:
    """Pooled HTTP clients, one per provider; safe to share between tasks once opened.

    `providers` names the pools to create at `open`; a provider first seen in `send` gets its pool
    then. `transport` replaces the aiohttp transport for every provider (tests pass an
    ``httpx.MockTransport``) and is closed with the client. Requests arrive fully shaped by the
    rules (URL, auth and extra headers), so the client adds nothing but a User-Agent.
    """

    def __init__(self, providers: Iterable[str] = (), *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._names = list(providers)
        self._transport = transport
        self._clients: dict[str, httpx.AsyncClient | aiohttp.ClientSession] = {}
        self._is_open = False
        self._ssl_context: ssl.SSLContext | None = None
        self._httpx_timeouts: dict[Timeouts, httpx.Timeout] = {}
        self._aiohttp_timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}

    async def open(self) -> None:
        """Create the pools. Connections themselves open lazily, on first use."""
        if self._is_open:
            return
        self._is_open = True
        for name in self._names:
            self._clients[name] = self._new_client()

    async def aclose(self) -> None:
        """Close every pool (and with it every connection)."""
        clients, self._clients, self._is_open = self._clients, {}, False
        await asyncio.gather(*(client.close() if isinstance(client, aiohttp.ClientSession) else client.aclose()
                               for client in clients.values()), return_exceptions=True)

    async def __aenter__(self) -> UpstreamClient:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send `request` and return once the response headers are in; the body is not read yet.

        Raises `UpstreamConnectError`, `UpstreamTimeoutError` (connect, pool or first byte).
        The caller must close the returned response.
        """
        client = self._client(request.provider)
        timeouts = request.timeouts
        headers = request_headers(request)
        total = None if request.stream else timeouts.total  # streams never get an overall limit
        deadline = None if total is None else asyncio.get_running_loop().time() + total
        wait, phase = timeouts.first_byte, "first_byte"
        if total is not None and total < wait:
            wait, phase = total, "total"
        failure = _Failure(request.provider, request.url, headers, timeouts)
        response: _Body
        try:
            async with asyncio.timeout(wait):
                if isinstance(client, aiohttp.ClientSession):
                    response = _AiohttpBody(await client.request(
                        request.method, request.url, headers=headers, data=request.body,
                        timeout=self._aiohttp_timeout(timeouts), allow_redirects=False))
                else:
                    outgoing = client.build_request(request.method, request.url, headers=headers,
                                                    content=request.body, timeout=self._httpx_timeout(timeouts))
                    response = _HttpxBody(await client.send(outgoing, stream=True))
        except _TRANSPORT_ERRORS as exc:
            raise failure.map(exc, in_body=False) from exc
        except TimeoutError as exc:
            raise failure.timeout(phase) from exc
        # The transport's read limit is max(idle, first_byte); a shorter idle limit is ours to enforce.
        needs_timer = deadline is not None or timeouts.idle < timeouts.first_byte
        return UpstreamResponse(response, failure, deadline, needs_timer)

    def _client(self, provider: str) -> httpx.AsyncClient | aiohttp.ClientSession:
        client = self._clients.get(provider)
        if client is None:
            if not self._is_open:
                raise RuntimeError("UpstreamClient.open() has not been called (or aclose() has)")
            client = self._clients[provider] = self._new_client()
        return client

    def _new_client(self) -> httpx.AsyncClient | aiohttp.ClientSession:
        if self._transport is not None:
            return httpx.AsyncClient(transport=self._transport, headers=DEFAULT_HEADERS,
                                     timeout=self._httpx_timeout(DEFAULT_TIMEOUTS), follow_redirects=False)
        if self._ssl_context is None:  # loading the CA store takes milliseconds: once for all pools
            self._ssl_context = httpx.create_ssl_context()
        connector = aiohttp.TCPConnector(limit=POOL_LIMITS.max_connections or 0,
                                         keepalive_timeout=POOL_LIMITS.keepalive_expiry or 0,
                                         ssl=self._ssl_context)
        # No trust_env: as under httpx with an explicit transport, proxy variables do not apply, and
        # aiohttp would look up ~/.netrc in a worker thread on every request.
        return aiohttp.ClientSession(connector=connector, headers=DEFAULT_HEADERS, trust_env=False,
                                     timeout=self._aiohttp_timeout(DEFAULT_TIMEOUTS),
                                     cookie_jar=aiohttp.DummyCookieJar())  # a proxy keeps no upstream cookies

    def _aiohttp_timeout(self, timeouts: Timeouts) -> aiohttp.ClientTimeout:
        """The same limits as `_httpx_timeout`, in aiohttp's terms (its `connect` covers the pool wait)."""
        cached = self._aiohttp_timeouts.get(timeouts)
        if cached is None:
            cached = self._aiohttp_timeouts[timeouts] = aiohttp.ClientTimeout(
                total=None, connect=timeouts.connect, sock_connect=timeouts.connect,
                sock_read=max(timeouts.idle, timeouts.first_byte))
        return cached

    def _httpx_timeout(self, timeouts: Timeouts) -> httpx.Timeout:
        cached = self._httpx_timeouts.get(timeouts)
        if cached is None:
            cached = self._httpx_timeouts[timeouts] = httpx.Timeout(
                connect=timeouts.connect,
                # the same socket limit covers the wait for headers and the body's silences
                read=max(timeouts.idle, timeouts.first_byte),
                write=timeouts.idle,
                pool=timeouts.connect,  # aiohttp counts pool wait and connecting under one limit
            )
        return cached


class UpstreamResponse:
    """A response whose headers have arrived and whose body has not been read.

    `status` and `headers` are the upstream's (Content-Encoding is already undone by `read` and
    `aiter_bytes`, so do not forward Content-Encoding or Content-Length). Close it with ``async with``
    or `aclose`.
    """

    __slots__ = ("_deadline", "_failure", "_needs_timer", "_response", "headers", "status")

    def __init__(self, response: _Body, failure: _Failure, deadline: float | None,
                 needs_timer: bool) -> None:
        self._response = response
        self._failure = failure
        self._deadline = deadline
        self._needs_timer = needs_timer
        self.status: int = response.status
        self.headers: Mapping[str, str] = response.headers

    @property
    def is_closed(self) -> bool:
        return self._response.is_closed

    async def read(self) -> bytes:
        """The whole body (e.g. of an error answer or a non-streamed reply)."""
        return b"".join([chunk async for chunk in self.aiter_bytes()])

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive: no re-chunking, no buffering, no text decoding.

        Raises `UpstreamTimeoutError` (idle or total) and `UpstreamConnectError` (stream cut).
        """
        chunks = self._response.chunks()
        is_complete = False
        try:
            if self._needs_timer:
                while True:
                    try:
                        async with asyncio.timeout(self._chunk_wait()):
                            chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                    yield chunk
            else:  # the transport enforces the idle limit on every socket read
                async for chunk in chunks:
                    yield chunk
            is_complete = True
        except _TRANSPORT_ERRORS as exc:
            raise self._failure.map(exc, in_body=True) from exc
        except TimeoutError as exc:
            is_total = self._deadline is not None and asyncio.get_running_loop().time() >= self._deadline
            raise self._failure.timeout("total" if is_total else "idle") from exc
        finally:
            if not is_complete:  # error, cancellation or an early stop: free the upstream now
                await chunks.aclose()
                await self.aclose()

    async def aclose(self) -> None:
        """Close the response; an unfinished body closes its connection, which stops the upstream."""
        with contextlib.suppress(*_TRANSPORT_ERRORS):  # closing a broken connection may fail; nothing to free
            await self._response.close()

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def _chunk_wait(self) -> float:
        idle = self._failure.timeouts.idle
        if self._deadline is None:
            return idle
        return min(idle, self._deadline - asyncio.get_running_loop().time())


class _Body(Protocol):
    """What `UpstreamResponse` needs of a response, from aiohttp or from httpx."""

    status: int
    headers: Mapping[str, str]

    @property
    def is_closed(self) -> bool: ...

    def chunks(self) -> AsyncGenerator[bytes, None]: ...

    async def close(self) -> None: ...


class _AiohttpBody:
    """An aiohttp response: its body as it arrives, decoded per Content-Encoding."""

    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    @property
    def is_closed(self) -> bool:
        return self._response.closed

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        async for chunk in self._response.content.iter_any():
            yield chunk

    async def close(self) -> None:
        """A fully read body frees its connection for reuse; anything else closes it (which stops the
        upstream's generation)."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class _HttpxBody:
    """An httpx response (the path taken when a transport was given)."""

    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    @property
    def is_closed(self) -> bool:
        return self._response.is_closed

    def chunks(self) -> AsyncGenerator[bytes, None]:
        return cast(AsyncGenerator[bytes, None], self._response.aiter_bytes())

    async def close(self) -> None:
        await self._response.aclose()


class _Failure:
    """What one request needs to describe its failure; built per request, used only on error paths."""

    __slots__ = ("headers", "provider", "timeouts", "url")

    def __init__(self, provider: str, url: str, headers: Mapping[str, str], timeouts: Timeouts) -> None:
        self.provider, self.url, self.headers, self.timeouts = provider, url, headers, timeouts

    def map(self, exc: BaseException, *, in_body: bool) -> UpstreamError:
        kind, host = _classify(exc), self._host()
        limits = self.timeouts
        if kind == "connect_timeout":
            return UpstreamTimeoutError(self.provider, f"connect timeout: no connection to {host} within "
                                                       f"{limits.connect:g} s")
        if kind == "pool_timeout":
            return UpstreamTimeoutError(self.provider, f"pool timeout: no free connection to {host} within "
                                                       f"{limits.connect:g} s")
        if kind == "write_timeout":
            return UpstreamTimeoutError(self.provider, f"write timeout: {host} accepted no request data for "
                                                       f"{limits.idle:g} s")
        if kind == "read_timeout":
            return self.timeout("idle" if in_body else "first_byte")
        detail = self._detail(exc)
        if kind == "decode":
            return UpstreamProtocolError(self.provider, f"{host} sent an undecodable body ({detail})")
        if kind == "cut":
            if in_body:
                return UpstreamConnectError(self.provider, f"{host} closed the connection mid-response; "
                                                           f"the stream was cut ({detail})")
            return UpstreamConnectError(self.provider, f"{host} closed the connection before answering "
                                                       f"({detail})")
        if kind == "protocol":
            return UpstreamConnectError(self.provider, f"{host} sent an invalid HTTP response ({detail})")
        return UpstreamConnectError(self.provider, f"cannot connect to {host}: {detail}")

    def timeout(self, phase: str) -> UpstreamTimeoutError:
        host, limits = self._host(), self.timeouts
        if phase == "first_byte":
            message = f"first-byte timeout: {host} sent no response headers within {limits.first_byte:g} s"
        elif phase == "total":
            message = f"total timeout: {host} did not finish the response within {limits.total or 0:g} s"
        else:
            message = f"idle timeout: {host} sent nothing for {limits.idle:g} s in the middle of the response"
        return UpstreamTimeoutError(self.provider, message)

    def _host(self) -> str:
        try:
            url = httpx.URL(self.url)
        except httpx.InvalidURL:
            return "the provider"
        return f"{url.host}:{url.port}" if url.port else url.host or "the provider"

    def _detail(self, exc: BaseException) -> str:
        text = str(exc) or (str(exc.__cause__) if exc.__cause__ else "") or type(exc).__name__
        text = _SECRET_PARAM.sub(r"\1=***", _URL_QUERY.sub(r"\1", text))
        for key, value in self.headers.items():
            secret = value.rpartition(" ")[2]  # "Bearer sk-…" → "sk-…"
            if key.lower() in _SECRET_HEADERS and len(secret) >= 8:
                text = text.replace(secret, "***")
        return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def _classify(exc: BaseException) -> str:
    """The failure kind. aiohttp's own errors arrive directly; through httpx-aiohttp (a transport a
    caller may pass) they are mapped coarsely (a refused connection arrives as ``ConnectTimeout``),
    so the aiohttp cause decides whenever there is one."""
    cause = exc if isinstance(exc, aiohttp.ClientError) else exc.__cause__
    if isinstance(cause, aiohttp.ClientError):
        if isinstance(cause, aiohttp.ConnectionTimeoutError):
            return "connect_timeout"
        if isinstance(cause, aiohttp.ServerTimeoutError):
            return "read_timeout"
        if isinstance(cause, aiohttp.ClientConnectorError):
            return "connect"
        if isinstance(cause, aiohttp.ClientResponseError):
            return "protocol"
        if isinstance(cause, aiohttp.ClientPayloadError) and "content-encoding" in str(cause):
            return "decode"
        if isinstance(cause, aiohttp.ClientPayloadError | aiohttp.ClientConnectionError):
            return "cut"
        return "connect"
    if isinstance(exc, httpx.PoolTimeout):
        return "pool_timeout"
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect_timeout"
    if isinstance(exc, httpx.WriteTimeout):
        return "write_timeout"
    if isinstance(exc, httpx.TimeoutException):
        return "read_timeout"
    if isinstance(exc, httpx.DecodingError):
        return "decode"
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.CloseError | httpx.RemoteProtocolError):
        return "cut"
    return "connect"
