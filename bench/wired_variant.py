"""A measurement-only copy of this checkout's engine with the prototypes wired into the app.

    .venv/bin/python bench/wired_variant.py        # prints the folder to pass as --variant wired=FOLDER

`engine/_fastcheck.py` (request check) and `TokenCounter.count_request_inline` are not used by the
app yet, and the app loads the tokenizer at start-up; wiring them is the app owner's job. To measure
what that wiring buys in the served numbers, this copies engine/ to bench/.scratch/wired/ccproxy_engine
and patches the copy: the schema check (_validation.py) answers with `compile_check` before falling
back to jsonschema, `Proxy.count_tokens` (_proxy.py) tries the inline count before a thread, and the
lifespan (_app.py) no longer warms the tokenizer (it loads on the first count). Each patch must
apply exactly once, or this stops.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "bench" / ".scratch" / "wired"

#: (file, old, new): each `old` must occur exactly once in its file.
PATCHES: list[tuple[str, str, str]] = [
    ("_validation.py", "        self._fast = fastjsonschema.compile(schema)\n",
     "        from ._fastcheck import compile_check\n\n        self._fast = compile_check(schema)\n"),
    ("_validation.py",
     "        try:\n            self._fast(body)\n        except fastjsonschema.JsonSchemaValueException:\n",
     "        if not self._fast(body):\n"),
    ("_proxy.py", "            return self.tokens.count_request(body)\n        return await asyncio.to_thread",
     "            return self.tokens.count_request(body)\n        counted = self.tokens.count_request_inline(body)\n"
     "        if counted is not None:\n            return counted\n        return await asyncio.to_thread"),
    ("_app.py", "        warm = asyncio.ensure_future(asyncio.to_thread(proxy.tokens.warm_up))\n",
     "        warm = asyncio.ensure_future(asyncio.sleep(0))  # the tokenizer loads on first use\n"),
]


def main() -> None:
    shutil.rmtree(TARGET, ignore_errors=True)
    package = TARGET / "ccproxy_engine"
    shutil.copytree(ROOT / "engine", package, ignore=shutil.ignore_patterns("__pycache__"))
    for name, old, new in PATCHES:
        path = package / name
        text = path.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"patch does not apply to {name} (the code changed?): {old!r}")
        path.write_text(text.replace(old, new))
    print(TARGET)


if __name__ == "__main__":
    main()
