"""Regenerate the reference section of docs/configuration.md from schemas/config.schema.json.

The schema is the single source: `validate` and `serve` check configs against it and editors load it,
so the page lists exactly the keys they accept, with the schema's own description, default and examples.

    .venv/bin/python scripts/gen_config_docs.py          # rewrite docs/configuration.md
    .venv/bin/python scripts/gen_config_docs.py --check  # exit 1 when it is stale (tests/test_docs.py runs this)
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DOC = ROOT / "docs" / "configuration.md"
SCHEMA = ROOT / "schemas" / "config.schema.json"
SECTION = re.compile(r"(<!-- BEGIN GENERATED: (\w+) -->\n).*?(<!-- END GENERATED: \2 -->)", re.S)
#: $defs that get a section of their own, named in the type column instead of being expanded.
NAMED_TYPES = ("route", "target")
#: How a key that stands for any name reads in a dotted path.
WILDCARDS = {"providers": "<name>", "models": "<model or glob>", "headers": "<header>"}


def _resolve(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """`node` with its $ref followed; the referring node's own keys (its description) win."""
    if "$ref" not in node:
        return node
    target = schema["$defs"][node["$ref"].rpartition("/")[2]]
    return {**_resolve(target, schema), **{k: v for k, v in node.items() if k != "$ref"}}


def _type_of(node: dict[str, Any]) -> str:
    ref = node.get("$ref", "").rpartition("/")[2]
    if ref in NAMED_TYPES:
        return f"[{ref}](#{ref})"
    if "type" in node:
        kind = node["type"]
        return " or ".join(kind) if isinstance(kind, list) else str(kind)
    if "anyOf" in node:
        return " or ".join(_type_of(option) for option in node["anyOf"])
    return "any"


def _cell(value: Any) -> str:
    return "`" + json.dumps(value, ensure_ascii=False).replace("|", "\\|") + "`"


def _meaning(node: dict[str, Any]) -> str:
    extra = []
    if "examples" in node:
        extra.append("e.g. " + ", ".join(_cell(e) for e in node["examples"]))
    if "pattern" in node:
        extra.append(f"matches `{node['pattern']}`")
    tail = f" ({'; '.join(extra)})" if extra else ""
    return node.get("description", "").replace("|", "\\|") + tail


def _rows(node: dict[str, Any], prefix: str, schema: dict[str, Any]) -> Iterator[str]:
    """One table row per key under `node`, depth first, named by its dotted path."""
    children = list(node.get("properties", {}).items())
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        children.append((WILDCARDS.get(prefix.rpartition(".")[2], "<key>"), extra))
    for key, raw in children:
        path = f"{prefix}.{key}" if prefix else key
        child = _resolve(raw, schema)
        required = key in node.get("required", ())
        default = _cell(child["default"]) if "default" in child else "required" if required else ""
        named = raw.get("$ref", "").rpartition("/")[2] in NAMED_TYPES
        yield f"| `{path}` | {_type_of(raw if named else child)} | {default} | {_meaning(child)} |"
        if not named:
            yield from _rows(child, path, schema)


def render_reference() -> str:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    lines = ["<!-- Generated from schemas/config.schema.json by scripts/gen_config_docs.py; edit the schema. -->",
             "", "| key | type | default | meaning |", "|---|---|---|---|", *_rows(schema, "", schema)]
    for name in NAMED_TYPES:
        node = schema["$defs"][name]
        lines += ["", f"### {name}", "", _meaning(node)]
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    sections = {"reference": render_reference()}
    return SECTION.sub(lambda m: m.group(1) + sections[m.group(2)] + m.group(3), text)


def main() -> int:
    current = CONFIG_DOC.read_text(encoding="utf-8")
    fresh = render(current)
    if "--check" in sys.argv:
        if fresh != current:
            print("docs/configuration.md is stale: run .venv/bin/python scripts/gen_config_docs.py", file=sys.stderr)
            return 1
        return 0
    CONFIG_DOC.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
