"""A fast canned OpenAI upstream for benchmarks: answers every POST with the same completion.

Non-streamed requests get a chat.completion body; streamed ones get 20 content chunks, a finish
chunk, a usage chunk and [DONE]. Serve it with granian: ``granian --interface asgi bench.upstream:app``.
"""

from __future__ import annotations

from typing import Any

import orjson

_BASE = {"id": "chatcmpl-bench", "created": 1, "model": "gpt-4.1"}
ANSWER = orjson.dumps({**_BASE, "object": "chat.completion", "choices": [{
    "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok " * 20}}],
    "usage": {"prompt_tokens": 2500, "completion_tokens": 20}})
_CHUNK = {**_BASE, "object": "chat.completion.chunk"}
STREAM = b"".join(
    [b"data: " + orjson.dumps({**_CHUNK, "choices": [{"index": 0, "delta": {"content": "ok "},
                                                       "finish_reason": None}]}) + b"\n\n"] * 20
    + [b"data: " + orjson.dumps({**_CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
       + b"\n\n",
       b"data: " + orjson.dumps({**_CHUNK, "choices": [], "usage": {"prompt_tokens": 2500,
                                                                   "completion_tokens": 20}}) + b"\n\n",
       b"data: [DONE]\n\n"])


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    is_stream = b'"stream":true' in body
    payload, kind = (STREAM, b"text/event-stream") if is_stream else (ANSWER, b"application/json")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", kind), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
