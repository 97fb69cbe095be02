"""The background server: ``start``, ``stop``, ``status`` and ``reload``, and the files they share.

One background server per config. Its files live in the user's state directory
(``$XDG_STATE_HOME/ccproxy-engine``, else ``~/.local/state/ccproxy-engine``), named after the
config (``default`` for the embedded one, else the file's stem and a hash of its absolute path):

* ``NAME.lock``: the server holds an exclusive `flock` on it for as long as it runs (its workers
  inherit it). This, not the PID file, says whether a server is running: a lock dies with its
  process, so a PID file left by a crash or a reboot is recognised as stale and replaced.
* ``NAME.pid``: the server's (supervisor's) process id, the target of ``stop`` and ``reload``.
* ``NAME.json``: what ``status`` shows: address, config, providers, routes, start time, and the
  outcome of the last reload (the server rewrites it after each one).
* ``NAME.log``: the server's output (``start`` runs it with ``--log-level info``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ._config import Settings

__all__ = ["AlreadyRunningError", "Instance", "connect_host", "state_dir", "wait_until_answering"]

STATE_DIR_NAME = "ccproxy-engine"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
RELOAD_TIMEOUT = 30.0
_POLL = 0.1


class AlreadyRunningError(RuntimeError):
    """Another server holds this config's lock."""


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where background servers keep their files (XDG base directory spec)."""
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "state")
    return Path(base) / STATE_DIR_NAME


def connect_host(host: str) -> str:
    """The address a local client dials for a server listening on `host` (a wildcard means loopback)."""
    if host in {"", "0.0.0.0"}:
        return "127.0.0.1"
    if host in {"::", "[::]"}:
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass(frozen=True, slots=True)
class Instance:
    """The files of the background server for one config."""

    directory: Path
    name: str
    config: Path | None

    @classmethod
    def for_config(cls, config: str | Path | None, env: Mapping[str, str] | None = None) -> Instance:
        if config is None:
            return cls(state_dir(env), "default", None)
        path = Path(config).resolve()
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
        return cls(state_dir(env), f"{path.stem}-{digest}", path)

    @property
    def pid_file(self) -> Path:
        return self.directory / f"{self.name}.pid"

    @property
    def lock_file(self) -> Path:
        return self.directory / f"{self.name}.lock"

    @property
    def info_file(self) -> Path:
        return self.directory / f"{self.name}.json"

    @property
    def log_file(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def label(self) -> str:
        return str(self.config) if self.config else "the embedded default config"

    # --- the server's side ---------------------------------------------------------------------

    def claim(self) -> IO[bytes]:
        """Take the lock and write the PID file; the returned file must stay open while serving.
        Raises `AlreadyRunningError` when another live server holds the lock."""
        self.directory.mkdir(parents=True, exist_ok=True)
        handle = self.lock_file.open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AlreadyRunningError(f"a server is already running for {self.label} "
                                      f"(pid {self.pid() or 'unknown'})") from None
        _write_atomic(self.pid_file, f"{os.getpid()}\n")
        return handle

    def write_info(self, settings: Settings, *, host: str, port: int, started: float,
                   last_reload: Mapping[str, Any] | None = None) -> None:
        """Record what `status` shows (called at start and after every reload)."""
        routes = settings.routes
        named = {"default": routes.default, "background": routes.background, "think": routes.think,
                 "long_context": routes.long_context, "web_search": routes.web_search, "image": routes.image,
                 **{f"models[{pattern}]": targets for pattern, targets in routes.models.items()}}
        info = {
            "host": host, "port": port, "config": settings.source, "started": started,
            "providers": list(settings.providers),
            "routes": {name: [str(t) for t in targets] for name, targets in named.items() if targets},
            "custom_router": routes.custom.function if routes.custom else None,
            "last_reload": dict(last_reload) if last_reload else None,
        }
        _write_atomic(self.info_file, json.dumps(info, indent=1) + "\n")

    def release(self) -> None:
        """Remove the PID and info files (the server is stopping; the lock goes with the process)."""
        for path in (self.pid_file, self.info_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # --- the commands' side --------------------------------------------------------------------

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        """Whether a live server holds the lock (a PID file alone proves nothing)."""
        if not self.lock_file.exists():
            return False
        with self.lock_file.open("ab") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False

    def url(self, settings: Settings) -> str:
        """The running server's address (from its status file; `settings`' while it has none)."""
        info = self.info()
        return url_of(str(info.get("host", settings.host)), int(info.get("port", settings.port)))

    def info(self) -> dict[str, Any]:
        try:
            data = json.loads(self.info_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def clear_stale(self) -> bool:
        """Remove files left by a server that is gone; True if there were any."""
        stale = not self.is_running() and (self.pid_file.exists() or self.info_file.exists())
        if stale:
            self.release()
        return stale

    def spawn(self, argv: Iterable[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Run ``ccproxy-engine serve`` with `argv` detached (own session), output to the log file."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start\n".encode())
            log.flush()
            return subprocess.Popen([sys.executable, "-m", "ccproxy_engine", "serve", *argv],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=dict(env if env is not None else os.environ))

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """SIGTERM the server and wait for its lock to go; SIGKILL its process group after `timeout`.
        Returns False if it had to be killed."""
        pid = self.pid()
        if pid is not None:
            _signal(pid, signal.SIGTERM)
        if _wait(lambda: not self.is_running(), timeout):
            self.release()
            return True
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        _wait(lambda: not self.is_running(), 5.0)
        self.release()
        return False

    def reload(self, timeout: float = RELOAD_TIMEOUT) -> Mapping[str, Any] | None:
        """SIGHUP the server and wait for it to record the reload's outcome (None: no answer in time)."""
        before = self.info().get("last_reload")
        pid = self.pid()
        if pid is None:
            return None
        _signal(pid, signal.SIGHUP)
        outcome: dict[str, Any] = {}

        def recorded() -> bool:
            last = self.info().get("last_reload")
            if last and last != before:
                outcome.update(last)
                return True
            return False

        return outcome if _wait(recorded, timeout) else None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def wait_until_answering(url: str, process: subprocess.Popen[bytes] | None = None,
                         timeout: float = START_TIMEOUT) -> bool:
    """Poll ``GET url/health`` until it answers 200; False if `process` exits or `timeout` passes."""

    def answers() -> bool:
        if process is not None and process.poll() is not None:
            raise ChildProcessError
        return get_health(url, 1.0) is not None

    try:
        return _wait(answers, timeout)
    except ChildProcessError:
        return False


def _wait(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL)
    return True


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


# --- the commands ------------------------------------------------------------------------------


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def url_of(host: str, port: int) -> str:
    return f"http://{connect_host(host)}:{port}"


def start(instance: Instance, settings: Settings, serve_args: Iterable[str] = ()) -> int:
    """Start the background server for `instance` unless it runs; wait until it answers."""
    if instance.is_running():
        _say(f"ccproxy-engine is already running for {instance.label} (pid {instance.pid()}) on "
             f"{instance.url(settings)}")
        return 0
    url = url_of(settings.host, settings.port)
    if instance.clear_stale():
        _say(f"ccproxy-engine: removed a stale PID file ({instance.pid_file})")
    config = [] if instance.config is None else ["--config", str(instance.config)]
    process = instance.spawn([*config, "--background", *serve_args])
    if not wait_until_answering(url, process):
        if process.poll() is None:
            process.terminate()
        _say(f"ccproxy-engine: the server did not start; its log ({instance.log_file}) ends with:\n"
             f"{instance.log_tail()}")
        return 1
    _say(f"ccproxy-engine started on {url} (pid {process.pid}; log: {instance.log_file})")
    return 0


def stop(instance: Instance) -> int:
    if not instance.is_running():
        stale = instance.clear_stale()
        _say(f"ccproxy-engine is not running for {instance.label}" + (" (removed a stale PID file)" if stale else ""))
        return 0
    pid = instance.pid()
    graceful = instance.stop()
    _say(f"ccproxy-engine stopped (pid {pid})" if graceful else
         f"ccproxy-engine did not stop within {STOP_TIMEOUT:.0f} s and was killed (pid {pid})")
    return 0


#: Lines `status` prints after its own, from the running server's ``GET /health`` answer: every
#: field beyond ``status`` and ``providers`` (counters a server module adds there show up here).
HEALTH_SHOWN_ELSEWHERE = frozenset({"status", "providers"})


def status(instance: Instance) -> int:
    """Print what the running server serves; exit 3 (LSB "not running") when none runs."""
    if not instance.is_running():
        stale = " (a stale PID file is left; `start` replaces it)" if instance.pid_file.exists() else ""
        print(f"ccproxy-engine: not running for {instance.label}{stale}")
        return 3
    info = instance.info()
    url = url_of(str(info.get("host", "127.0.0.1")), int(info.get("port", 0)))
    uptime = _duration(time.time() - float(info.get("started", time.time())))
    lines = [f"ccproxy-engine: running (pid {instance.pid()}, up {uptime})",
             f"address:   {url}", f"config:    {info.get('config')}",
             f"providers: {', '.join(info.get('providers', [])) or 'none'}", "routes:"]
    lines += [f"  {name}: {', '.join(targets)}" for name, targets in info.get("routes", {}).items()]
    if info.get("custom_router"):
        lines.append(f"  custom: {info['custom_router']}")
    lines += _health_lines(url)
    if last := info.get("last_reload"):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last.get("at", 0)))
        lines.append(f"last reload: {when}: {last.get('message')}")
        lines += [f"  {line}" for line in [*last.get("notes", []), *last.get("diagnostics", [])]]
    lines.append(f"log:       {instance.log_file}")
    print("\n".join(lines))
    return 0


#: Talks to our own server: an HTTP(S)_PROXY in the environment must not be used for it.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get_health(url: str, timeout: float) -> Any:
    """The JSON of ``GET url/health`` when it answers 200, else None. (urllib: the CLI's only HTTP call
    needs no client stack, and httpx stays the upstream client's.)"""
    try:
        with _LOCAL.open(f"{url}/health", timeout=timeout) as response:
            return json.loads(response.read()) if response.status == 200 else None
    except (OSError, ValueError):
        return None


def _health_lines(url: str) -> list[str]:
    health = get_health(url, 2.0)
    if health is None:
        return ["health:    no answer from GET /health"]
    extra = {k: v for k, v in health.items() if k not in HEALTH_SHOWN_ELSEWHERE} if isinstance(health, dict) else {}
    return [f"health:    {health.get('status') if isinstance(health, dict) else health}",
            *(f"{name}: {json.dumps(value)}" for name, value in extra.items())]


def reload(instance: Instance) -> int:
    if not instance.is_running():
        _say(f"ccproxy-engine is not running for {instance.label}; `start` it first")
        return 1
    outcome = instance.reload()
    if outcome is None:
        _say(f"ccproxy-engine: sent SIGHUP, but the server recorded no reload within {RELOAD_TIMEOUT:.0f} s; "
             f"see {instance.log_file}")
        return 1
    _say(str(outcome.get("message")))
    for line in [*outcome.get("notes", []), *outcome.get("diagnostics", [])]:
        _say(f"  {line}")
    return 0 if outcome.get("ok") else 1


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value][:2]
    return "".join(shown) or "0s"
