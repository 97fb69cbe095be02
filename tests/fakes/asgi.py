"""The ASGI plumbing the fake upstreams share, so each fake's module is only its provider's protocol.

Every fake reads the whole request body before it decides anything (it records the raw bytes and
validates them), answers JSON with one write, and streams a list of pre-encoded writes. The helpers
below do exactly that and nothing provider-specific: content types, error bodies and the exception
a deliberate connection drop raises stay with each fake, because they are what the tests compare.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from typing import Protocol

import orjson

from .server import Receive, Scope, Send


class Exchange(Protocol):
    """The request record a fake keeps, as far as these helpers write to it: the status it was
    answered with, and whether the client went away while the answer streamed."""

    status: int | None
    disconnected: bool


async def lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge start-up and shutdown: `serve_app` runs uvicorn with `lifespan="auto"`, which
    sends them to every app before the first request and after the last."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def is_http_request(scope: Scope, receive: Receive, send: Send) -> bool:
    """Whether a fake should answer `scope`: HTTP requests only. A lifespan scope is acknowledged here
    first, so an app can start `__call__` with `if not await is_http_request(...): return`."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    return bool(scope["type"] == "http")


async def read_body(receive: Receive) -> bytes:
    """The whole request body: fakes record and validate it before they answer."""
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def start_response(send: Send, status: int, content_type: str,
                         headers: Iterable[tuple[str, str]] = ()) -> None:
    """Send the status line and headers (names lower-cased: ASGI servers expect them so)."""
    raw = [(b"content-type", content_type.encode())] + [(k.lower().encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})


async def send_json(send: Send, exchange: Exchange, status: int, body: object, *, content_type: str,
                    headers: Iterable[tuple[str, str]] = ()) -> None:
    """Answer `body` as one JSON write and record the status on `exchange`."""
    exchange.status = status
    await start_response(send, status, content_type, headers)
    await send({"type": "http.response.body", "body": orjson.dumps(body)})


async def send_stream(receive: Receive, send: Send, exchange: Exchange, writes: Iterable[bytes], *,
                      content_type: str, first_byte_delay: float = 0.0, delay_between_chunks: float = 0.0,
                      abort: BaseException | None = None) -> None:
    """Stream `writes` as separate body chunks, the way a provider's server flushes them.

    `first_byte_delay` holds back the headers (a slow model), `delay_between_chunks` spaces the
    writes; a client that goes away stops the stream at the next write, as a real server's would.
    `abort`, when given, is raised after the last write instead of ending the body: the server then
    drops the connection mid-body.
    """
    await asyncio.sleep(first_byte_delay)
    exchange.status = 200
    await start_response(send, 200, content_type, [("cache-control", "no-cache")])
    with watch_disconnect(receive, exchange):
        for i, piece in enumerate(writes):
            if i and delay_between_chunks:
                await asyncio.sleep(delay_between_chunks)
            if exchange.disconnected:
                return
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        if abort is not None:
            raise abort
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@contextlib.contextmanager
def watch_disconnect(receive: Receive, exchange: Exchange) -> Iterator[None]:
    """Set `exchange.disconnected` when the client goes away while the block streams (the body was
    read already, so the next message `receive` gives is the disconnect)."""

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        exchange.disconnected = True

    task = asyncio.ensure_future(watch())
    try:
        yield
    finally:
        task.cancel()
