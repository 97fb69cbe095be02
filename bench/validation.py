"""Cost of the request schema check: fastjsonschema (the engine's check today) vs `_fastcheck`.

    .venv/bin/python bench/validation.py [--repeat 200]

Both answer the same question (is this body valid?) on the same bodies: the ~10 KB request of
bench/translate.py and a 79 KB Claude Code request. µs per check, median of the batches, and the
ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import fastjsonschema
import orjson

from ccproxy_engine._fastcheck import compile_check
from ccproxy_engine._loader import load_schema

sys.path.insert(0, str(Path(__file__).resolve().parent))
from translate import large_request, small_request, timeit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    schema = load_schema("anthropic.messages.schema.json")
    check = compile_check(schema)
    fast = fastjsonschema.compile(load_schema("anthropic.messages.schema.json"))  # it rewrites the $refs it is given
    print(f"{'request':<8} {'fastjsonschema µs':>18} {'_fastcheck µs':>14} {'ratio':>6}")
    for label, body in (("10 KB", small_request()), ("100 KB", large_request())):
        assert check(body) and fast(body) is not None
        before = timeit(lambda body=body: fast(body), args.repeat)
        after = timeit(lambda body=body: check(body), args.repeat)
        size = len(orjson.dumps(body)) // 1000
        print(f"{label:<8} {before:>18.1f} {after:>14.1f} {before / after:>5.1f}x   ({size} KB)")


if __name__ == "__main__":
    main()
