"""Serve any ASGI app on 127.0.0.1 over a real socket, in a background thread.

The app runs on its own event loop in its own thread, so a server started once (say in a
module-scoped fixture) outlives the per-test event loops of pytest-asyncio, and a test's client
talks to it over real TCP: real chunked transfer, real delays, real connection drops.

    with serve_app(FakeOpenAI()) as base_url:          # "http://127.0.0.1:54321"
        ...
    async with aserve_app(app) as base_url:            # same, without blocking the test's loop
        ...
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeAlias

import uvicorn

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send", "aserve_app", "serve_app"]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

STARTUP_TIMEOUT = 10.0
# Streams still open at shutdown get this long before uvicorn cancels them.
GRACEFUL_SHUTDOWN = 1.0


class _ServerThread:
    """One uvicorn server on a socket bound up front, so the port is known before start-up."""

    def __init__(self, app: ASGIApp, host: str) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        port = self._socket.getsockname()[1]
        self.base_url = f"http://{host}:{port}"
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="asyncio",
            ws="none",
            lifespan="auto",
            log_config=None,  # leave the test run's logging alone; errors still reach the root logger
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=f"asgi-server-{port}",
            daemon=True,
        )

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._socket.close()
                raise RuntimeError(f"ASGI server for {self.base_url} exited during start-up (see the log)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"ASGI server for {self.base_url} did not start within {timeout} s")
            time.sleep(0.002)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=GRACEFUL_SHUTDOWN + 5)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=5)
        self._socket.close()


@contextmanager
def serve_app(app: ASGIApp, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `app` on a free port for the duration of the block; yields the base URL (no path)."""
    server = _ServerThread(app, host)
    server.start()
    try:
        yield server.base_url
    finally:
        server.stop()


@asynccontextmanager
async def aserve_app(app: ASGIApp, *, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """`serve_app` for async code: waits for start-up and shutdown in a worker thread."""
    server = _ServerThread(app, host)
    await asyncio.to_thread(server.start)
    try:
        yield server.base_url
    finally:
        await asyncio.to_thread(server.stop)
