"""A fake Anthropic Messages API: records what it receives byte for byte and answers scripted bytes.

The passthrough provider must forward bodies and answers unchanged, so this fake deals in bytes:
`AnthropicMessage` and `AnthropicStream` build the exact JSON and SSE an Anthropic server sends (the
tests compare them with what the client received), `AnthropicError` answers an error envelope.

    fake = FakeAnthropic(AnthropicStream.text("Hello", chunks=["He", "llo"]))
    with serve_app(fake) as url: ...   # provider base_url = url

Like the real API it refuses (400, before any scripted reply is used) reasoning it did not sign:
a thinking block whose signature is missing or an engine envelope (``ccpx1.``), a redacted_thinking
block whose data is one, and, with manual thinking (``enabled``; adaptive thinking may skip it, and
Claude Code's tool loops come back without it), a tool loop whose assistant turn does not start with
a thinking block (`request_problems`; the wording is the API's).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson

from .asgi import read_body, start_response
from .server import Receive, Scope, Send

MESSAGES_PATH = "/v1/messages"
ENGINE_ENVELOPE = "ccpx1."
THINKING_REQUIRED = (
    "Expected `thinking` or `redacted_thinking`, but found `{found}`. When `thinking` is enabled, a final "
    "`assistant` message must start with a thinking block (preceeding the lastmost set of `tool_use` and "
    "`tool_result` blocks). We recommend you include thinking blocks from previous turns. To avoid this "
    "requirement, disable `thinking`. Please consult our documentation at "
    "https://docs.claude.com/en/docs/build-with-claude/extended-thinking")


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _message(model: str, content: list[dict[str, Any]], stop_reason: str | None,
             output_tokens: int) -> dict[str, Any]:
    return {"id": "msg_01FakeAnthropic000000001", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": 25, "output_tokens": output_tokens, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 100}}


@dataclass
class AnthropicMessage:
    """A non-streamed answer: the message JSON (model echoed from the request)."""

    content: list[dict[str, Any]]
    stop_reason: str = "end_turn"

    def body(self, model: str) -> bytes:
        return orjson.dumps(_message(model, self.content, self.stop_reason, 12))


@dataclass
class AnthropicStream:
    """A streamed answer as exact SSE records; `cut_after` drops the connection after that many records."""

    records: list[bytes]
    cut_after: int | None = None
    delay: float = 0.0

    @classmethod
    def of(cls, model: str, blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]], stop_reason: str,
           **options: Any) -> AnthropicStream:
        records = [_event("message_start", {"type": "message_start",
                                            "message": _message(model, [], None, 1)}),
                   _event("ping", {"type": "ping"})]
        for index, (start, deltas) in enumerate(blocks):
            records.append(_event("content_block_start", {"type": "content_block_start", "index": index,
                                                          "content_block": start}))
            records += [_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                       "delta": delta}) for delta in deltas]
            records.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        records.append(_event("message_delta", {"type": "message_delta",
                                                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                                "usage": {"output_tokens": 42}}))
        records.append(_event("message_stop", {"type": "message_stop"}))
        return cls(records, **options)

    @classmethod
    def text(cls, text: str, chunks: list[str] | None = None, model: str = "claude-upstream",
             **options: Any) -> AnthropicStream:
        deltas = [{"type": "text_delta", "text": piece} for piece in (chunks or [text])]
        return cls.of(model, [({"type": "text", "text": ""}, deltas)], "end_turn", **options)

    @classmethod
    def thinking_then_tool(cls, thinking: str, signature: str, tool: str, arguments: str,
                           model: str = "claude-upstream") -> AnthropicStream:
        third = max(1, len(arguments) // 3)
        pieces = [arguments[i:i + third] for i in range(0, len(arguments), third)]
        return cls.of(model, [
            ({"type": "thinking", "thinking": "", "signature": ""},
             [{"type": "thinking_delta", "thinking": thinking}, {"type": "signature_delta", "signature": signature}]),
            ({"type": "tool_use", "id": "toolu_01FakeToolUse00000000001", "name": tool, "input": {}},
             [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]),
        ], "tool_use")


@dataclass
class AnthropicError:
    """An error answer with Anthropic's envelope."""

    status: int
    type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return orjson.dumps({"type": "error", "error": {"type": self.type, "message": self.message},
                             "request_id": "req_fake"})


Reply = AnthropicMessage | AnthropicStream | AnthropicError


def request_problems(body: Any) -> list[str]:
    """What the Messages API refuses in history a proxy might have built: signatures it never issued,
    and a tool loop that lost its thinking while thinking is on."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return []
    problems = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        for j, block in enumerate(content if isinstance(content, list) else ()):
            kind = block.get("type") if isinstance(block, dict) else None
            signature = block.get("signature") if kind == "thinking" else None
            if kind == "thinking" and (not isinstance(signature, str) or not signature
                                       or signature.startswith(ENGINE_ENVELOPE)):
                problems.append(f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block")
            if kind == "redacted_thinking" and str(block.get("data", "")).startswith(ENGINE_ENVELOPE):
                problems.append(f"messages.{i}.content.{j}: Invalid `data` in `redacted_thinking` block")
    thinking = body.get("thinking") or {}
    if thinking.get("type") == "enabled":
        problems += _loop_problems(messages)
    return problems


def _blocks(message: Any) -> list[Any]:
    content = message.get("content")
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])


def _only_results(message: Any) -> bool:
    blocks = _blocks(message)
    return message.get("role") == "user" and bool(blocks) and all(b.get("type") == "tool_result" for b in blocks)


def _loop_problems(messages: list[Any]) -> list[str]:
    """The assistant turn of a tool loop in progress must start with a thinking block."""
    if not messages or not _only_results(messages[-1]):
        return []
    start = next((i + 1 for i in range(len(messages) - 1, -1, -1)
                  if messages[i].get("role") == "user" and not _only_results(messages[i])), 0)
    for i in range(start, len(messages)):
        if messages[i].get("role") == "assistant":
            blocks = _blocks(messages[i])
            found = blocks[0].get("type") if blocks else "nothing"
            if found in ("thinking", "redacted_thinking"):
                return []
            return [f"messages.{i}.content.0.type: {THINKING_REQUIRED.format(found=found)}"]
    return []


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes
    sent: bytes = b""
    """The body bytes this fake answered with (for byte-for-byte comparisons)."""
    problems: list[str] = field(default_factory=list)
    """Why the fake refused the body (`request_problems`); empty when it took it."""

    @property
    def body(self) -> Any:
        return orjson.loads(self.raw)


def _json_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


class FakeAnthropic:
    """Answers POST /v1/messages with scripted replies in order; records every request."""

    def __init__(self, *script: Reply) -> None:
        self.script: list[Reply] = list(script)
        self.requests: list[Received] = []

    def queue(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def reset(self) -> None:
        self.script, self.requests = [], []

    @property
    def last(self) -> Received:
        assert self.requests, "FakeAnthropic has received no request"
        return self.requests[-1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        received = Received(scope["path"], {k.decode(): v.decode() for k, v in scope["headers"]}, raw)
        self.requests.append(received)
        reply: Reply
        if scope["path"] == MESSAGES_PATH:
            received.problems = request_problems(_json_or_none(raw))
        if scope["path"] != MESSAGES_PATH:
            reply = AnthropicError(404, "not_found_error", f"unknown path {scope['path']}")
        elif received.problems:
            reply = AnthropicError(400, "invalid_request_error", received.problems[0])
        elif not self.script:
            reply = AnthropicError(500, "api_error", "no scripted reply left")
        else:
            reply = self.script.pop(0)
        if isinstance(reply, AnthropicError):
            received.sent = reply.body()
            await start_response(send, reply.status, "application/json", reply.headers.items())
            await send({"type": "http.response.body", "body": received.sent})
        elif isinstance(reply, AnthropicMessage):
            received.sent = reply.body(orjson.loads(raw).get("model", "?"))
            await start_response(send, 200, "application/json")
            await send({"type": "http.response.body", "body": received.sent})
        else:
            await self._stream(reply, received, send)

    async def _stream(self, reply: AnthropicStream, received: Received, send: Send) -> None:
        await start_response(send, 200, "text/event-stream; charset=utf-8")
        records = reply.records if reply.cut_after is None else reply.records[:reply.cut_after]
        for record in records:
            received.sent += record
            await send({"type": "http.response.body", "body": record, "more_body": True})
            if reply.delay:
                await asyncio.sleep(reply.delay)
        if reply.cut_after is not None:
            raise ConnectionResetError("scripted cut")  # the server drops the connection mid-stream
        await send({"type": "http.response.body", "body": b""})
