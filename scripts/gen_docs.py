"""Regenerate the generated sections of docs/rules.md from their single sources.

* the key reference, from schemas/rule.schema.json (every key's description, type, default, examples);
* the function reference, from ccproxy_engine._functions.FUNCTIONS.

    .venv/bin/python scripts/gen_docs.py          # rewrite docs/rules.md
    .venv/bin/python scripts/gen_docs.py --check  # exit 1 when it is stale (tests/test_docs.py runs this)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from ccproxy_engine._functions import render_reference_markdown

ROOT = Path(__file__).resolve().parent.parent
RULES_DOC = ROOT / "docs" / "rules.md"
SCHEMA = ROOT / "schemas" / "rule.schema.json"
SECTION = re.compile(r"(<!-- BEGIN GENERATED: (\w+) -->\n).*?(<!-- END GENERATED: \2 -->)", re.S)


def _type_of(node: dict[str, Any]) -> str:
    if "type" in node:
        kind = node["type"]
        return " \\| ".join(kind) if isinstance(kind, list) else str(kind)
    if "anyOf" in node:
        return " \\| ".join(_type_of(option) for option in node["anyOf"])
    return "template"


def _rows(node: dict[str, Any], prefix: str) -> list[str]:
    rows = []
    for key, child in node.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        extra = []
        if "default" in child:
            extra.append(f"default `{json.dumps(child['default'])}`")
        if "enum" in child:
            extra.append("one of " + ", ".join(f"`{v}`" for v in child["enum"]))
        if "examples" in child:
            extra.append("e.g. " + ", ".join(f"`{e}`" for e in child["examples"]))
        description = child.get("description", "").replace("|", "\\|")
        tail = f" ({'; '.join(extra)})" if extra else ""
        rows.append(f"| `{path}` | {_type_of(child)} | {description}{tail} |")
        rows.extend(_rows(child, path))
    return rows


def render_keys() -> str:
    schema = json.loads(SCHEMA.read_text())
    lines = ["<!-- Generated from schemas/rule.schema.json by scripts/gen_docs.py; edit the schema. -->", "",
             "| key | type | meaning |", "|---|---|---|", *_rows(schema, "")]
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    sections = {"keys": render_keys(), "functions": render_reference_markdown().rstrip("\n") + "\n"}
    return SECTION.sub(lambda m: m.group(1) + sections[m.group(2)] + m.group(3), text)


def main() -> int:
    current = RULES_DOC.read_text()
    fresh = render(current)
    if "--check" in sys.argv:
        if fresh != current:
            print("docs/rules.md is stale: run .venv/bin/python scripts/gen_docs.py", file=sys.stderr)
            return 1
        return 0
    RULES_DOC.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
