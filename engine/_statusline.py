"""``ccproxy-engine statusline``: the command for Claude Code's ``statusLine`` setting.

Claude Code runs it after each assistant message and passes JSON about the session on stdin
(``session_id``, ``model``, ``workspace``, ``cost``, ...); the first line printed becomes the status
line. This asks the running proxy (``/ui/api/requests?session=...``) for that session's last request
and prints the model that really answered it, its tokens and its estimated cost, e.g.::

    deepseek/deepseek-chat · in 12.3k (cached 8.0k) out 412 · $0.0021 · 2.41 s

The session is matched by the id Claude Code puts in each request's ``metadata.user_id``. A status
line must never break the screen: every failure prints a short note and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import httpx

__all__ = ["add_parser", "format_line", "statusline"]

DEFAULT_URL = "http://127.0.0.1:3456"
#: Claude Code waits for the command; a proxy that does not answer soon is reported as such.
TIMEOUT_SECONDS = 1.0


def add_parser(sub: Any) -> None:
    """Register the subcommand on `build_parser`'s subparsers."""
    parser = sub.add_parser("statusline", help="print the status line for Claude Code (reads its JSON on stdin)")
    parser.add_argument("--url", help=f"the proxy's base URL (default: $ANTHROPIC_BASE_URL, else {DEFAULT_URL})")
    parser.add_argument("--key", help="the server key (default: $CCPROXY_API_KEY, else $ANTHROPIC_AUTH_TOKEN, "
                                      "else $ANTHROPIC_API_KEY)")
    parser.set_defaults(handler=_cmd_statusline)


def _cmd_statusline(args: argparse.Namespace) -> int:
    env = os.environ
    url = args.url or env.get("ANTHROPIC_BASE_URL") or DEFAULT_URL
    key = args.key or env.get("CCPROXY_API_KEY") or env.get("ANTHROPIC_AUTH_TOKEN") or env.get("ANTHROPIC_API_KEY")
    print(statusline(sys.stdin, url, key))
    return 0


def statusline(stdin: TextIO, url: str, key: str | None, *, transport: httpx.BaseTransport | None = None) -> str:
    """The line for the session whose JSON is on `stdin`."""
    try:
        session = json.loads(stdin.read() or "{}").get("session_id")
    except (ValueError, AttributeError):
        return "ccproxy: no session JSON on stdin"
    if not isinstance(session, str) or not session:
        return "ccproxy: no session_id on stdin"
    headers = {"x-api-key": key} if key else {}
    try:
        with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=TIMEOUT_SECONDS,
                          transport=transport) as client:
            response = client.get("/ui/api/requests", params={"session": session, "limit": 1})
    except httpx.HTTPError as exc:
        return f"ccproxy: not reachable at {url} ({type(exc).__name__})"
    if response.status_code == 401:
        return "ccproxy: the server key is wrong or missing (set CCPROXY_API_KEY)"
    if response.status_code != 200:
        return f"ccproxy: HTTP {response.status_code} from {url}"
    found = response.json().get("requests") or []
    return format_line(found[0]) if found else "ccproxy: no request of this session yet"


def format_line(record: Mapping[str, Any]) -> str:
    """One request record (as ``/ui/api/requests`` sends it) as a status line."""
    answered = f"{record.get('provider')}/{record.get('model')}" if record.get("provider") else "?"
    if record.get("state") == "in_flight":
        return f"{answered} · answering…"
    parts = [answered]
    if usage := record.get("usage"):
        tokens = f"in {_count(usage.get('input_tokens'))}"
        if usage.get("cache_read_input_tokens"):
            tokens += f" (cached {_count(usage['cache_read_input_tokens'])})"
        tokens += f" out {_count(usage.get('output_tokens'))}"
        cost = record.get("cost")
        parts += [tokens, "cost unknown" if cost is None else f"${cost:.4f}"]
    if record.get("total_ms") is not None:
        parts.append(f"{record['total_ms'] / 1000:.2f} s")
    if record.get("state") == "error":
        parts.append(f"{record.get('error_type')}: {str(record.get('error_message'))[:80]}")
    return " · ".join(parts)


def _count(value: Any) -> str:
    if not isinstance(value, int):
        return "?"
    return f"{value / 1000:.1f}k" if value >= 10_000 else str(value)
