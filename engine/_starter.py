"""``ccproxy-engine init``: a starter config from the provider keys found in the environment.

The providers, their key variables and their models come from the embedded default config
(`DEFAULT_CONFIG_YAML`), so ``init`` writes what ``serve`` without a config would run today, as a
file to edit. Keys are written as ``${VAR}`` references, never as values.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from ._config import DEFAULT_CONFIG_YAML, DEFAULT_HOST, DEFAULT_PORT

__all__ = ["starter_config", "write_starter"]

_KEY_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_ROUTES = ("default", "background", "think")
KEYLESS_FALLBACK = "ollama"


def _embedded() -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load(DEFAULT_CONFIG_YAML)
    return data


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is a subset of it)."""
    return json.dumps(value)


def starter_config(env: Mapping[str, str]) -> tuple[str, list[str]]:
    """The config text, and the key variables it found set in `env`."""
    embedded = _embedded()
    chosen: dict[str, dict[str, Any]] = {}
    found: list[str] = []
    for name, provider in embedded["providers"].items():
        match = _KEY_REFERENCE.match(str(provider.get("api_key") or ""))
        if match and env.get(match.group(1)):
            chosen[name] = provider
            found.append(match.group(1))
    if not chosen:
        chosen[KEYLESS_FALLBACK] = embedded["providers"][KEYLESS_FALLBACK]
    lines = ["# ccproxy-engine config (written by `ccproxy-engine init`).",
             "# Keys are read from the environment: ${VAR} is replaced at start-up, never stored here.",
             "# Every key: schemas/config.schema.json; routes: docs/routing.md.",
             "server:", f"  host: {DEFAULT_HOST}", f"  port: {DEFAULT_PORT}",
             "  # api_key: \"${CCPROXY_API_KEY}\"   # required to listen on anything but loopback",
             "providers:"]
    for name, provider in chosen.items():
        fields = [f"base_url: {_q(provider['base_url'])}"]
        if provider.get("rules"):
            fields.insert(0, f"rules: {provider['rules']}")
        if provider.get("api_key"):
            fields.append(f"api_key: {_q(provider['api_key'])}")
        lines.append(f"  {name}: {{{', '.join(fields)}}}")
    lines.append("routes:")
    for route in _ROUTES:
        targets = [t for t in embedded["routes"].get(route, []) if t.split("/", 1)[0] in chosen]
        if targets:
            lines.append(f"  {route}: [{', '.join(_q(t) for t in targets)}]")
    lines.append(f"  long_context_threshold: {embedded['routes']['long_context_threshold']}")
    return "\n".join(lines) + "\n", found


def write_starter(output: Path, *, force: bool = False, env: Mapping[str, str] | None = None) -> int:
    """Write the starter config to `output` (refusing to overwrite unless `force`); the exit status."""
    if output.exists() and not force:
        print(f"ccproxy-engine: {output} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    text, found = starter_config(os.environ if env is None else env)
    output.write_text(text, encoding="utf-8")
    if found:
        print(f"wrote {output} with the providers of {', '.join(found)}", file=sys.stderr)
    else:
        print(f"wrote {output}: no provider key found in the environment (OPENAI_API_KEY, GEMINI_API_KEY, ...); "
              f"it routes to Ollama on localhost until you add one", file=sys.stderr)
    print(f"check it with: ccproxy-engine validate {output}", file=sys.stderr)
    return 0
