"""Cost of routing a long Claude Code conversation: first turn vs the next turn.

Claude Code resends the whole conversation on every turn. The router needs a token estimate (for
the long_context route), and the counter caches per piece of text, so the next turn should cost in
proportion to what is new. This builds a ~100 KB, 30-turn conversation on top of a real Claude Code
request (tests/fixtures), routes it with a cold counter, then routes the next turn (the same
conversation plus one exchange) and the same turn again. The baseline is `orjson.loads` of the body,
measured in the same run.

    .venv/bin/python bench/route.py
"""

from __future__ import annotations

import asyncio
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import orjson

from ccproxy_engine._config import ProviderSettings, Routes, RouteTarget, Settings
from ccproxy_engine._router import Router
from ccproxy_engine._tokens import TokenCounter

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests/fixtures/claude-code/2.1.332-read-notes/002.json"


def conversation(turns: int) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(FIXTURE.read_text())["body"]
    messages = body["messages"]
    for turn in range(turns):
        tool_id = f"toolu_bench{turn:04d}"
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": f"Step {turn}: reading the next file to check the parser changes."},
            {"type": "tool_use", "id": tool_id, "name": "Read", "input": {"file_path": f"/src/module_{turn}.py"}}]})
        source = "\n".join(f"{n}\tdef handler_{turn}_{n}(request):\n\treturn route(request, {n})" for n in range(20))
        result = {"type": "tool_result", "tool_use_id": tool_id, "content": source}
        messages.append({"role": "user", "content": [result]})
    return body


def settings() -> Settings:
    target = [RouteTarget("openai", "gpt-4.1")]
    return Settings(host="127.0.0.1", port=0, api_key=None, source="<bench>",
                    providers={"openai": ProviderSettings("openai", "openai", None)},
                    routes=Routes(default=target, long_context=[RouteTarget("openai", "gpt-4.1-long")]))


async def route_once(router: Router, counter: TokenCounter, body: dict[str, Any]) -> tuple[float, int | None]:
    async def count() -> int:
        return counter.count_request(body)

    start = time.perf_counter()
    decision = await router.route(body, count)
    return (time.perf_counter() - start) * 1e3, decision.tokens


def main() -> None:
    router = Router(settings())
    first = conversation(30)
    following = copy.deepcopy(first)
    following["messages"] += conversation(31)["messages"][-2:]
    size = len(orjson.dumps(first))
    raw = orjson.dumps(first)
    baseline = statistics.median(_time(lambda: orjson.loads(raw)) for _ in range(50))
    cold_runs, next_runs, same_runs = [], [], []
    for _ in range(5):
        counter = TokenCounter()
        counter.warm_up()
        cold_ms, tokens = asyncio.run(route_once(router, counter, first))
        next_ms, _ = asyncio.run(route_once(router, counter, following))
        same_ms, _ = asyncio.run(route_once(router, counter, following))
        cold_runs.append(cold_ms)
        next_runs.append(next_ms)
        same_runs.append(same_ms)
    print(f"conversation: {size / 1000:.0f} KB, {len(first['messages'])} messages, ~{tokens} tokens")
    print(f"baseline orjson.loads: {baseline:.2f} ms")
    for label, runs in (("first turn (cold cache)", cold_runs), ("next turn (+1 exchange)", next_runs),
                        ("same turn again", same_runs)):
        median = statistics.median(runs)
        print(f"{label:<26} {median:7.2f} ms  ({median / baseline:5.1f}x baseline)")
    print(f"next turn / first turn: {statistics.median(next_runs) / statistics.median(cold_runs):.3f}")


def _time(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


if __name__ == "__main__":
    main()
