"""A fast canned OpenAI upstream for benchmarks: answers every POST with the same completion.

Non-streamed requests get a chat.completion body; streamed ones get `STREAM_CHUNKS` content chunks,
a finish chunk, a usage chunk and [DONE], each chunk its own write (so a client sees the first token
before the last, as from a real model, only without the model's delays). Serve it with granian:
``granian --interface asgi bench.upstream:app``.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

STREAM_CHUNKS = 40
_BASE = {"id": "chatcmpl-bench", "created": 1, "model": "gpt-4.1"}
ANSWER = orjson.dumps({**_BASE, "object": "chat.completion", "choices": [{
    "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok " * 20}}],
    "usage": {"prompt_tokens": 2500, "completion_tokens": 20}})
_CHUNK = {**_BASE, "object": "chat.completion.chunk"}
STREAM = (
    [b"data: " + orjson.dumps({**_CHUNK, "choices": [{"index": 0, "delta": {"content": "ok "},
                                                       "finish_reason": None}]}) + b"\n\n"] * STREAM_CHUNKS
    + [b"data: " + orjson.dumps({**_CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
       + b"\n\n",
       b"data: " + orjson.dumps({**_CHUNK, "choices": [], "usage": {"prompt_tokens": 2500,
                                                                   "completion_tokens": 40}}) + b"\n\n",
       b"data: [DONE]\n\n"])
_JSON_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
_IS_STREAM = re.compile(rb'"stream"\s*:\s*true')
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if not _IS_STREAM.search(body):
        await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS})
        await send({"type": "http.response.body", "body": ANSWER})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    for chunk in STREAM:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
