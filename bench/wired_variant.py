"""A measurement-only copy of this checkout's engine with the prototypes wired into the app.

    .venv/bin/python bench/wired_variant.py        # prints the folder to pass as --variant wired=FOLDER

`engine/_fastcheck.py` (request check) and `TokenCounter.count_request_inline` are not used by the
app yet, and the app loads the tokenizer at start-up; wiring them is the app owner's job. To measure
what that wiring buys in the served numbers, this copies engine/ to bench/.scratch/wired/ccproxy_engine
and patches the copy's _app.py: the schema check answers with `compile_check` before falling back
to jsonschema, `_count` tries the inline count before a thread, and the lifespan no longer warms the
tokenizer (it loads on the first count). Each patch must apply exactly once, or this stops.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "bench" / ".scratch" / "wired"

PATCHES: list[tuple[str, str]] = [
    ("        self._fast = fastjsonschema.compile(schema)\n",
     "        from ._fastcheck import compile_check\n\n        self._fast = compile_check(schema)\n"),
    ("        try:\n            self._fast(body)\n        except fastjsonschema.JsonSchemaValueException:\n",
     "        if not self._fast(body):\n"),
    ("        return tokens.count_request(body)\n    return await asyncio.to_thread",
     "        return tokens.count_request(body)\n    counted = tokens.count_request_inline(body)\n"
     "    if counted is not None:\n        return counted\n    return await asyncio.to_thread"),
    ("        warm = asyncio.ensure_future(asyncio.to_thread(engine.tokens.warm_up))\n",
     "        warm = asyncio.ensure_future(asyncio.sleep(0))  # the tokenizer loads on first use\n"),
]


def main() -> None:
    shutil.rmtree(TARGET, ignore_errors=True)
    package = TARGET / "ccproxy_engine"
    shutil.copytree(ROOT / "engine", package, ignore=shutil.ignore_patterns("__pycache__"))
    app = package / "_app.py"
    text = app.read_text()
    for old, new in PATCHES:
        if text.count(old) != 1:
            raise SystemExit(f"patch does not apply (the app changed?): {old!r}")
        text = text.replace(old, new)
    app.write_text(text)
    print(TARGET)


if __name__ == "__main__":
    main()
