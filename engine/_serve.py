"""The serving model: how the proxy's processes run, who owns the socket, how signals arrive.

One worker is one process: the ASGI server (granian's embedded server) runs inside the process that
checked the config and built the app, on that process's own event loop (uvloop when installed).
There is no parent that imports and builds the app a second time, so start-up work and memory are
paid once.

* **Socket.** Before anything listens, `ensure_port_free` binds the address without
  ``SO_REUSEPORT``: a port another server holds (granian's own sockets included, which share a port
  silently with each other) fails here with a clear message, instead of two servers splitting the
  traffic. Each worker then listens with ``SO_REUSEPORT``, and the kernel spreads connections.
* **Workers.** ``--workers N`` (N > 1): the process builds the app, then forks N workers that
  inherit it (copy-on-write, nothing is built twice) and stays as their supervisor. Nothing in the
  app has started a thread or a loop before the fork: pools, the tokenizer and the loop start in each
  worker's lifespan.
* **Signals.** A worker stops gracefully on SIGTERM or SIGINT (its server stops accepting, requests in
  flight finish, then the lifespan closes the upstream pools). Streams get ``server.shutdown_grace``
  seconds (`_shutdown.begin_shutdown`); one still open then ends with an ``error`` event. The
  supervisor forwards SIGTERM, SIGINT and SIGHUP to every worker; when a worker exits on its own,
  the supervisor stops the others and exits with its status, so a process manager (systemd,
  Kubernetes) restarts the whole service.
* **Reload.** SIGHUP calls the `on_reload` hook on each worker's loop (`_reload.Reloader`: re-read
  the config and rules, swap the app's pipeline); without a hook, SIGHUP keeps its default action.
* **Metrics.** With several workers, ``_cli`` calls `_metrics.use_multiprocess_dir` before the app is
  built, so every worker writes its numbers where ``/metrics`` in any of them sums them; the
  supervisor marks each dead worker (`_metrics.worker_exited`) and removes the directory at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

from ._metrics import remove_multiprocess_dir, worker_exited
from ._shutdown import begin_shutdown

__all__ = ["PortInUseError", "ensure_port_free", "serve"]

logger = logging.getLogger("ccproxy_engine")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class PortInUseError(OSError):
    """The address `serve` was asked to listen on is taken (or cannot be bound at all)."""


def ensure_port_free(host: str, port: int) -> None:
    """Raise `PortInUseError` unless `host:port` can be bound by a socket that does not share its port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT socket is not a server
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = "another process is listening there" if exc.errno == 98 else (exc.strerror or str(exc))
            raise PortInUseError(exc.errno, f"cannot listen on {host}:{port}: {reason}") from None


def serve(app: Any, *, host: str, port: int, workers: int = 1, log_level: str = "warning",
          on_reload: Callable[[], None] | None = None) -> int:
    """Serve the ASGI `app` until a stop signal; returns the exit status. The caller has checked the
    address with `ensure_port_free` (before building the app, so a busy port fails fast).
    `on_reload` runs on the worker's event loop at each SIGHUP."""
    if on_reload is not None:  # a SIGHUP before a worker's loop installs the hook must not kill it
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if workers <= 1:
        return _run_worker(app, host, port, log_level, on_reload)
    return _supervise(lambda: _run_worker(app, host, port, log_level, on_reload), workers)


def _run_worker(app: Any, host: str, port: int, log_level: str,
                on_reload: Callable[[], None] | None = None) -> int:
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.server.embed import Server

    server = Server(app, address=host, port=port, interface=Interfaces.ASGI, websockets=False,
                    log_level=LogLevels(log_level), log_access=False)
    logging.getLogger("_granian").addFilter(_quiet_embedded_notice)

    def stop() -> None:
        begin_shutdown()  # the streams' grace period starts as the server stops accepting
        server.stop()  # type: ignore[no-untyped-call]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, stop)
        if on_reload is not None:
            loop.add_signal_handler(signal.SIGHUP, on_reload)
        await server.serve()

    _run_loop(main)
    return 0


def _quiet_embedded_notice(record: logging.LogRecord) -> bool:
    """granian warns that its embedded server is experimental at every start; the choice is made and
    written down (docs/architecture.md), so users are not told at every launch."""
    return "experimental" not in record.getMessage()


def _run_loop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(main())
        return
    uvloop.run(main())


def _supervise(run_worker: Callable[[], int], workers: int) -> int:
    try:
        return _supervise_workers(run_worker, workers)
    finally:
        remove_multiprocess_dir()


def _supervise_workers(run_worker: Callable[[], int], workers: int) -> int:
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker: serve, then leave without running the parent's clean-up
            status = 1
            try:
                status = run_worker()
            finally:
                os._exit(status)
        children.append(pid)

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            _kill(child, signum)

    for signum in _FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    status = 0
    while children:
        pid, code = os.wait()
        if pid not in children:
            continue
        children.remove(pid)
        worker_exited(pid)
        exit_code = os.waitstatus_to_exitcode(code)
        if exit_code != 0 and status == 0:
            status = exit_code if exit_code > 0 else 1
            logger.error("worker %d exited with status %d; stopping the others", pid, exit_code)
            forward(signal.SIGTERM, None)
    return status


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
