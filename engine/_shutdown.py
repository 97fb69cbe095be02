"""The shutdown deadline for streams in flight (``server.shutdown_grace``).

On SIGTERM the server stops accepting and waits for the responses in flight. A stream can last for
minutes, so each app keeps a `Drain`: `begin_shutdown` (called by the serving model's signal hook,
`_serve`) starts every registered drain's grace period, and when it runs out each stream still open is
stopped: its reader is cancelled and the stream ends with an Anthropic ``error`` event
(``overloaded_error``, "the server is shutting down"), so the server can exit. Streams that end
within the grace period are untouched; whole (non-streamed) answers are bounded by the providers'
``timeout.total`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib

from ._errors import EngineError

__all__ = ["Drain", "ShuttingDownError", "StreamStop", "begin_shutdown"]


class ShuttingDownError(EngineError):
    """What a stream still open at the end of the grace period ends with."""

    status = 529

    def __init__(self) -> None:
        super().__init__("the server is shutting down; the stream was ended (retry the request)",
                         error_type="overloaded_error")


class StreamStop:
    """One open stream's handle: `stop` wakes its reader loop (see `_proxy._with_keepalive`)."""

    __slots__ = ("queue", "reader", "stopped")

    def __init__(self, queue: asyncio.Queue[bytes | BaseException | None], reader: asyncio.Future[None]) -> None:
        self.queue = queue
        self.reader = reader
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True
        self.reader.cancel()
        with contextlib.suppress(asyncio.QueueFull):  # a full queue: the loop sees `stopped` next
            self.queue.put_nowait(ShuttingDownError())


class Drain:
    """An app's open streams and its shutdown deadline."""

    __slots__ = ("_streams", "_timer", "expired", "grace")

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.expired = False
        self._streams: set[StreamStop] = set()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def add(self, stream: StreamStop) -> None:
        if self.expired:
            stream.stop()
        self._streams.add(stream)

    def discard(self, stream: StreamStop) -> None:
        self._streams.discard(stream)

    def begin(self) -> None:
        """Start the grace period (once); call on the app's event loop."""
        if self._timer is None and not self.expired:
            self._timer = asyncio.get_running_loop().call_later(self.grace, self.expire)

    def expire(self) -> None:
        """The grace period is over: stop every stream still open, and any that opens later."""
        self.expired = True
        for stream in list(self._streams):
            stream.stop()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


_DRAINS: set[Drain] = set()


def register(drain: Drain) -> None:
    _DRAINS.add(drain)


def unregister(drain: Drain) -> None:
    drain.close()
    _DRAINS.discard(drain)


def begin_shutdown() -> None:
    """The process is stopping: start the grace period of every app it serves (from the signal hook)."""
    for drain in list(_DRAINS):
        drain.begin()
