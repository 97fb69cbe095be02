"""``ccproxy-engine code``: Claude Code through the proxy, started in the background when needed.

The launcher makes sure the background server for the config runs (`_daemon.start`), or finds a
ccproxy-engine already answering at the config's address (a ``serve`` in another terminal), then
runs ``claude`` from PATH with the environment that points it at the proxy, and exits with its code.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

from ._config import Settings
from ._daemon import Instance, start, url_of, wait_until_answering

__all__ = ["CLAUDE_INSTALL", "claude_environment", "launch", "split_code_args"]

CLAUDE_INSTALL = "npm install -g @anthropic-ai/claude-code"
#: Claude Code's own time limit per request, raised for long reasoning turns (10 minutes).
API_TIMEOUT_MS = "600000"
#: What Claude Code sends as its key when the server has none: any value passes a keyless proxy.
PLACEHOLDER_KEY = "ccproxy-engine"


def split_code_args(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """``[--config FILE] [--] claude args...`` → the config and the arguments for claude. Only a
    leading ``--config`` is ours: everything after the first other argument goes to claude as is."""
    config: str | None = None
    rest = list(argv)
    while rest:
        if rest[0] == "--config" and len(rest) > 1:
            config, rest = rest[1], rest[2:]
        elif rest[0].startswith("--config="):
            config, rest = rest[0].split("=", 1)[1], rest[1:]
        elif rest[0] == "--":
            rest = rest[1:]
            break
        else:
            break
    return config, rest


def claude_environment(base: Mapping[str, str], url: str, api_key: str | None) -> dict[str, str]:
    """`base` with Claude Code pointed at the proxy. ``ANTHROPIC_API_KEY`` is removed: Claude Code
    warns when it and ``ANTHROPIC_AUTH_TOKEN`` are both set, and it must not reach the proxy as a key."""
    env = {k: v for k, v in base.items() if k != "ANTHROPIC_API_KEY"}
    env.update({
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_AUTH_TOKEN": api_key or PLACEHOLDER_KEY,
        "API_TIMEOUT_MS": API_TIMEOUT_MS,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    })
    return env


def launch(config: str | None, settings: Settings, claude_args: Sequence[str]) -> int:
    """Ensure the proxy answers, then run claude; returns claude's exit code."""
    claude = shutil.which("claude")
    if claude is None:
        print(f"ccproxy-engine: Claude Code (`claude`) is not on PATH. Install it with:\n  {CLAUDE_INSTALL}",
              file=sys.stderr)
        return 127
    url = _ensure_server(config, settings)
    if url is None:
        return 1
    env = claude_environment(os.environ, url, settings.api_key)
    # Ctrl-C belongs to claude (it is in the same process group and gets it too)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = subprocess.call([claude, *claude_args], env=env)
    finally:
        signal.signal(signal.SIGINT, previous)
    return code if code >= 0 else 128 - code


def _ensure_server(config: str | None, settings: Settings) -> str | None:
    """The proxy's URL once it answers: the background server for `config`, started if needed."""
    instance = Instance.for_config(config)
    if instance.is_running():
        return instance.url(settings)
    url = url_of(settings.host, settings.port)
    if wait_until_answering(url, timeout=0.5):
        print(f"ccproxy-engine: using the server already answering on {url}", file=sys.stderr)
        return url
    return url if start(instance, settings) == 0 else None
