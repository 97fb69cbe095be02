"""Per-request CPU cost of the translation path, in process (no sockets).

Measures each stage the proxy runs for one request, for a ~10 KB and a ~100 KB Anthropic request
(the 100 KB one is a real Claude Code request from tests/fixtures), and reports µs per request plus
the ratio to a baseline measured in the same run: `orjson.loads` + `orjson.dumps` of the same body,
the least any proxy must do.

    .venv/bin/python bench/translate.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ccproxy_engine._compiler import ResponseDecoder, compile_rules
from ccproxy_engine._loader import load_rules
from ccproxy_engine._sse import encode_events
from ccproxy_engine._stream import MessageBuilder, StreamMachine
from ccproxy_engine._validation import RequestValidator

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests/fixtures/claude-code/2.1.332-nobetas-read-write/003.json"
SCOPE = {"name": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key": "sk-bench", "headers": {}}


def small_request() -> dict[str, Any]:
    """~10 KB: a short system prompt, a few turns, two tools."""
    text = "Please refactor the parser module so that errors carry positions. " * 20
    return {
        "model": "claude-sonnet-4-5", "max_tokens": 4096, "stream": True,
        "system": [{"type": "text", "text": "You are a careful coding assistant. " * 40,
                    "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": text},
            {"role": "assistant", "content": [{"type": "text", "text": "Reading it."},
                                              {"type": "tool_use", "id": "toolu_1", "name": "Read",
                                               "input": {"file_path": "/src/parser.py"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                          "content": "def parse(text):\n    ...\n" * 220}]},
        ],
        "tools": [
            {"name": "Read", "description": "Read a file", "input_schema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                "properties": {"file_path": {"type": "string"}}, "required": ["file_path"],
                "additionalProperties": False}},
            {"name": "Bash", "description": "Run a command", "input_schema": {
                "type": "object", "properties": {"command": {"type": "string"},
                                                 "timeout": {"type": "number", "maximum": 600000}},
                "required": ["command"]}},
        ],
    }


def large_request() -> dict[str, Any]:
    body: dict[str, Any] = json.loads(FIXTURE.read_text())["body"]
    return body


def upstream_answer() -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Let me check.",
                "tool_calls": [{"id": "call_1", "type": "function",
                                "function": {"name": "Read", "arguments": "{\"file_path\":\"/a.py\"}"}}]}}],
            "usage": {"prompt_tokens": 2000, "completion_tokens": 40,
                      "prompt_tokens_details": {"cached_tokens": 1500}}}


def stream_chunks() -> list[dict[str, Any]]:
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4.1"}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"content": f"word{i} "}, "finish_reason": None}]}
              for i in range(60)]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**base, "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 60}})
    return chunks


def timeit(fn: Callable[[], object], repeat: int) -> float:
    """Median µs per call over `repeat` timed batches of 10 calls."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(10):
            fn()
        samples.append((time.perf_counter() - start) / 10 * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    providers, diagnostics = compile_rules(load_rules()[0])
    assert not diagnostics, diagnostics
    openai = providers["openai"]
    validator = RequestValidator("anthropic.messages.schema.json")
    answer = orjson.dumps(upstream_answer())
    chunks = [orjson.dumps(c) for c in stream_chunks()]

    print(f"{'request':>8} {'stage':<34} {'µs':>9} {'x baseline':>10}")
    for label, body in (("10 KB", small_request()), ("100 KB", large_request())):
        raw = orjson.dumps(body)
        baseline = timeit(lambda raw=raw: orjson.dumps(orjson.loads(raw)), args.repeat)

        def request_path(raw: bytes = raw) -> None:
            parsed = orjson.loads(raw)
            validator.check(parsed)
            prepared = openai.build_request(parsed, model="gpt-4.1", provider_vars=SCOPE, stream=True)
            orjson.dumps(prepared.body)

        def answer_path() -> None:
            builder = MessageBuilder(provider="openai", message_id="msg_1", model="claude")
            for delta in ResponseDecoder(openai, stream=False, provider="openai").decode(orjson.loads(answer)):
                builder.feed(delta)
            orjson.dumps(builder.build())

        def stream_path() -> None:
            machine = StreamMachine(provider="openai", message_id="msg_1", model="claude")
            decoder = ResponseDecoder(openai, stream=True, provider="openai")
            out = [encode_events(machine.start())]
            for chunk in chunks:
                events = []
                for delta in decoder.decode(orjson.loads(chunk)):
                    events.extend(machine.feed(delta))
                out.append(encode_events(events))
            out.append(encode_events(machine.finish()))

        parsed = orjson.loads(raw)
        rows = [
            ("baseline: orjson loads+dumps", baseline),
            ("validate (schema)", timeit(lambda parsed=parsed: validator.check(parsed), args.repeat)),
            ("build_request (rules)", timeit(lambda parsed=parsed: openai.build_request(
                parsed, model="gpt-4.1", provider_vars=SCOPE, stream=True), args.repeat)),
            ("request path (parse→encode)", timeit(request_path, args.repeat)),
            ("non-stream answer → message", timeit(answer_path, args.repeat)),
            ("62-chunk stream → SSE", timeit(stream_path, args.repeat)),
        ]
        print(f"{label:>8} ({len(raw) / 1000:.0f} KB body)")
        for stage, micros in rows:
            print(f"{'':>8} {stage:<34} {micros:>9.1f} {micros / baseline:>10.1f}")


if __name__ == "__main__":
    main()
