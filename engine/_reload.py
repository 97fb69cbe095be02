"""Reload on SIGHUP: re-read the config and rules, and swap the running app's pipeline.

`Reloader` is the `on_reload` hook `_serve.serve` installs on each worker's event loop. It loads and
compiles off the loop (requests keep being served meanwhile), then either swaps the pipeline
(`_app.replace_proxy`: requests in flight finish on the old one) or, when the new files have errors,
keeps the running version and logs every diagnostic. What only a restart can change (the address,
the server key) is reported as such; the rest of the change still applies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from litestar import Litestar

from ._app import replace_proxy
from ._compiler import CompiledRules
from ._config import Settings
from ._daemon import Instance
from ._errors import SetupError

__all__ = ["Reloader"]

logger = logging.getLogger("ccproxy_engine")

Load = Callable[[], tuple[Settings, Mapping[str, CompiledRules]]]


class Reloader:
    """Reloads `app` from `load` (the same function that built it) at each call."""

    def __init__(self, app: Litestar, load: Load, settings: Settings, *, host: str, port: int,
                 instance: Instance | None = None, started: float | None = None) -> None:
        self._app = app
        self._load = load
        self._running = settings
        self._served = settings
        """What the server was started with: only a restart changes its address and key."""
        self._host, self._port = host, port
        self._instance = instance
        self._started = started or time.time()
        self._tasks: set[asyncio.Task[bool]] = set()

    def __call__(self) -> None:
        """The signal handler: start a reload on the running loop."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """One reload; True if the new config now serves."""
        try:
            settings, rules = await asyncio.to_thread(self._load)
        except SetupError as exc:
            lines = [d.format() for d in exc.diagnostics]
            logger.error("reload failed; still serving the previous config:\n%s", "\n".join(lines))
            self._record(self._running, ok=False, message="reload failed; still serving the previous config",
                         diagnostics=lines)
            return False
        notes = self._needs_restart(settings)
        for note in notes:
            logger.warning("%s", note)
        replace_proxy(self._app, settings, rules)
        self._running = settings
        message = f"reloaded {settings.source}: providers {', '.join(settings.providers) or 'none'}"
        logger.info("%s", message)
        self._record(settings, ok=True, message=message, diagnostics=[d.format() for d in settings.warnings],
                     notes=notes)
        return True

    def _needs_restart(self, settings: Settings) -> list[str]:
        old = self._served
        notes = []
        if (settings.host, settings.port) != (old.host, old.port):
            notes.append(f"server.host/port changed to {settings.host}:{settings.port}: restart to listen there "
                         f"(still on {self._host}:{self._port})")
        if (settings.api_key, settings.allow_unauthenticated) != (old.api_key, old.allow_unauthenticated):
            notes.append("server.api_key or server.allow_unauthenticated changed: restart to apply it "
                         "(the running server keeps its key)")
        return notes

    def _record(self, settings: Settings, **outcome: Any) -> None:
        if self._instance is None:
            return
        outcome["at"] = time.time()
        try:
            self._instance.write_info(settings, host=self._host, port=self._port, started=self._started,
                                      last_reload=outcome)
        except OSError as exc:
            logger.warning("could not record the reload in %s: %s", self._instance.info_file, exc)
