"""OpenAI Chat Completions clients: their requests in, the engine's answers out in their format.

The request side is rules: `rules/inbound/openai-chat.yaml`, compiled by the same compiler as the
provider rules, builds the engine's Anthropic body from the client's OpenAI body. What rules cannot
know is per target, so `ChatInbound.adapt` does it once the route is known: a missing ``max_tokens``
becomes the routed model's ``max_output`` (Anthropic requires one), and a thinking budget is kept
below it.

The answer side is a small generic state machine over the engine's Anthropic values, whatever the
provider: `completion` renders a whole message as a ``chat.completion``, `ChunkWriter` renders the
Anthropic event stream as ``chat.completion.chunk`` records (tool calls as ``tool_calls`` deltas,
their index, id and name on the first fragment), a usage chunk when asked, then ``data: [DONE]``; an
error ends the stream with a ``data: {"error": …}`` record. Errors use OpenAI's envelope and statuses
(`openai_error`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ._compiler import CompiledRules, compile_rule_set
from ._endpoint import Endpoint
from ._errors import RequestError, RuleError
from ._functions import decode_signature, is_engine_signature, new_id
from ._loader import BUILTIN_RULES_DIR, RuleSet, read_rule_file
from ._proxy import Answer, Decoded
from ._types import JSONObject, SSEEvent
from ._validation import RequestValidator

__all__ = ["CHAT_RANGES", "ChatInbound", "ChunkWriter", "chunk_stream", "completion", "load_inbound", "openai_error",
           "render"]

INBOUND_RULES = BUILTIN_RULES_DIR / "inbound" / "openai-chat.yaml"

#: OpenAI's own limits on /v1/chat/completions, worded like the Anthropic ones (``temperature: range: 0..2``).
CHAT_RANGES: dict[str, tuple[float | None, float | None]] = {
    "temperature": (0, 2), "top_p": (0, 1), "max_tokens": (1, None), "max_completion_tokens": (1, None),
    "presence_penalty": (-2, 2), "frequency_penalty": (-2, 2), "n": (1, None),
}
#: An output cap for a model whose capability row names none.
FALLBACK_MAX_OUTPUT = 4096
#: Anthropic's smallest thinking budget.
MIN_THINKING_BUDGET = 1024

#: Anthropic stop_reason → OpenAI finish_reason (protocols.md 4.7, read backwards).
FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}

#: Anthropic error type → (OpenAI status, type, code). 5xx types keep the engine's status (but 529,
#: which OpenAI never sends, is 503).
_ERRORS: dict[str, tuple[int | None, str, str | None]] = {
    "invalid_request_error": (400, "invalid_request_error", None),
    "authentication_error": (401, "invalid_request_error", "invalid_api_key"),
    "billing_error": (429, "insufficient_quota", "insufficient_quota"),
    "permission_error": (403, "permission_error", None),
    "not_found_error": (404, "invalid_request_error", "not_found"),
    "request_too_large": (413, "invalid_request_error", "request_too_large"),
    "rate_limit_error": (429, "requests", "rate_limit_exceeded"),
    "api_error": (None, "server_error", None),
    "timeout_error": (None, "timeout", None),
    "overloaded_error": (503, "server_error", "overloaded"),
}


def openai_error(error_type: str, message: str, status: int) -> tuple[int, JSONObject]:
    """An engine error as OpenAI's status and envelope ``{"error": {"message", "type", "param", "code"}}``.
    An overflow keeps Anthropic's wording and gets OpenAI's ``context_length_exceeded`` code."""
    mapped_status, kind, code = _ERRORS.get(error_type, (None, "server_error" if status >= 500 else
                                                        "invalid_request_error", None))
    if message.startswith("prompt is too long"):
        code = "context_length_exceeded"
    status = mapped_status or (503 if status == 529 else status)
    return status, {"error": {"message": message, "type": kind, "param": None, "code": code}}


def load_inbound(path: Path = INBOUND_RULES) -> CompiledRules:
    """The inbound rule file, compiled; raises `RuleError` with its diagnostics when it is broken."""
    rule_file, diagnostics = read_rule_file(path)
    if rule_file is None or any(d.severity == "error" for d in diagnostics):
        raise RuleError(diagnostics)
    rule_set = RuleSet(rule_file.name, rule_file.path, rule_file.data, dict(rule_file.positions),
                       dict(rule_file.key_positions), (rule_file.name,))
    compiled, problems = compile_rule_set(rule_set)
    if compiled is None:
        raise RuleError(problems)
    return compiled


class ChatInbound:
    """Chat Completions requests → the engine's Anthropic requests; built once per app."""

    __slots__ = ("_rules", "_schema")

    #: What templates see as ``provider``: the inbound side has no provider.
    _PROVIDER: Mapping[str, Any] = {"name": "openai-chat", "base_url": "", "api_key": None, "headers": {}}

    def __init__(self, rules: CompiledRules | None = None) -> None:
        self._rules = rules or load_inbound()
        self._schema = RequestValidator("openai.chat.schema.json", CHAT_RANGES)

    def request(self, body: Any, headers: Mapping[str, str]) -> JSONObject:
        """Check the client's body (OpenAI's rules, OpenAI's ranges) and build the Anthropic body."""
        self._schema.check(body)
        if (body.get("n") or 1) > 1:
            raise RequestError("n: only one choice per request is supported (n=1)")
        prepared = self._rules.build_request(body, model=str(body["model"]), provider_vars=self._PROVIDER,
                                             stream=bool(body.get("stream")),
                                             client_headers={k.lower(): v for k, v in headers.items()})
        return prepared.body

    @staticmethod
    def adapt(body: JSONObject, endpoint: Endpoint, model: str) -> JSONObject:
        """`body` completed for one target: signed thinking blocks only for the provider that signed them,
        ``max_tokens`` from the model's capabilities when the client gave none, and a thinking budget
        that fits under it (dropped if none can)."""
        body = _own_signatures(body, endpoint)
        max_tokens = body.get("max_tokens")
        thinking = body.get("thinking")
        budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
        if max_tokens is not None and (budget is None or budget < max_tokens):
            return body
        if max_tokens is None:
            max_tokens = endpoint.rules.capabilities(model).get("max_output") or FALLBACK_MAX_OUTPUT
        adapted = {**body, "max_tokens": max_tokens}
        if budget is not None and budget >= max_tokens:
            if max_tokens - 1 < MIN_THINKING_BUDGET:
                adapted.pop("thinking")
            else:
                adapted["thinking"] = {**thinking, "budget_tokens": max_tokens - 1}  # type: ignore[dict-item]
        return adapted


def _own_signatures(body: JSONObject, endpoint: Endpoint) -> JSONObject:
    """`body` without the thinking blocks (restored from ``extra_content`` by the inbound rules) that
    `endpoint` cannot take back: another provider's signature, or any for a passthrough (Anthropic
    checks a signature against the thinking text, which an OpenAI client never had)."""
    def dropped(block: Mapping[str, Any]) -> bool:
        return block.get("type") == "thinking" and (
            endpoint.is_passthrough or decode_signature(block.get("signature"), endpoint.name) is None)

    messages = body.get("messages") or []
    if not any(isinstance(m.get("content"), list) and any(dropped(b) for b in m["content"]) for m in messages):
        return body
    return {**body, "messages": [
        {**m, "content": [b for b in m["content"] if not dropped(b)]} if isinstance(m.get("content"), list) else m
        for m in messages]}


# --- answers -------------------------------------------------------------------------------------


def _usage(usage: Mapping[str, Any]) -> JSONObject:
    """Anthropic usage → OpenAI's: prompt tokens include the cached ones (protocols.md 4.8)."""
    cached = usage.get("cache_read_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + cached + (usage.get("cache_creation_input_tokens") or 0)
    completion_tokens = usage.get("output_tokens") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens, "prompt_tokens_details": {"cached_tokens": cached}}


def _finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(str(stop_reason), "stop")


def _tool_call(block: Mapping[str, Any], signature: str | None) -> JSONObject:
    call: JSONObject = {"id": block["id"], "type": "function",
                        "function": {"name": block["name"],
                                     "arguments": orjson.dumps(block.get("input") or {}).decode()}}
    return _with_signature(call, signature)


def _with_signature(call: JSONObject, signature: str | None) -> JSONObject:
    """A call that came right after a signed thinking block carries that signature where Gemini's own
    OpenAI endpoint puts one (``extra_content.google.thought_signature``): a client that sends the
    call back as it came sends the signature too, and the inbound rules restore the thinking block
    (Gemini 3 refuses a tool loop whose calls lost it). Only the engine's envelopes are carried."""
    if signature and is_engine_signature(signature):
        call["extra_content"] = {"google": {"thought_signature": signature}}
    return call


def _calls(blocks: list[Mapping[str, Any]]) -> list[JSONObject]:
    calls, signature = [], None
    for block in blocks:
        kind = block.get("type")
        if kind == "thinking":
            signature = block.get("signature")
        elif kind == "tool_use":
            calls.append(_tool_call(block, signature))
            signature = None
    return calls


def completion(message: Mapping[str, Any], *, completion_id: str, created: int) -> JSONObject:
    """A whole Anthropic message as a ``chat.completion``. Reasoning, when there is any, is in the
    ``reasoning_content`` field that DeepSeek-style servers use and many clients show."""
    blocks = message.get("content") or []
    text = "".join(b["text"] for b in blocks if b.get("type") == "text")
    reasoning = "".join(b.get("thinking", "") for b in blocks if b.get("type") == "thinking")
    calls = _calls(blocks)
    answer: JSONObject = {"role": "assistant", "content": text or (None if calls else ""), "refusal": None}
    if calls:
        answer["tool_calls"] = calls
    if reasoning:
        answer["reasoning_content"] = reasoning
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": message.get("model"),
            "choices": [{"index": 0, "message": answer, "finish_reason": _finish_reason(message.get("stop_reason")),
                         "logprobs": None}],
            "usage": _usage(message.get("usage") or {})}


@dataclass(slots=True)
class _Open:
    """The Anthropic block being streamed: its kind and, for a tool call, its OpenAI index."""

    kind: str
    tool_index: int = -1


class ChunkWriter:
    """Anthropic stream events → Chat Completions SSE records, for one answer.

    Block starts of tool_use become the first ``tool_calls`` fragment (index, id, type, name, empty
    arguments); their ``input_json_delta``s the following fragments; text and thinking deltas become
    ``content`` and ``reasoning_content``. ``message_delta`` gives the finish reason; ``message_stop``
    the usage chunk (when `include_usage`) and ``[DONE]``; ``error`` an error record that ends the
    stream; ``ping`` an SSE comment. After the end, every call returns nothing.
    """

    __slots__ = ("_blocks", "_created", "_done", "_id", "_include_usage", "_model", "_signature", "_tools",
                 "_usage")

    def __init__(self, *, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self._id = completion_id
        self._created = created
        self._model = model
        self._include_usage = include_usage
        self._blocks: dict[int, _Open] = {}
        self._tools = 0
        self._usage: dict[str, Any] = {}
        self._signature: str | None = None
        """The signature of the last thinking block, until a tool call takes it (`_with_signature`)."""
        self._done = False

    @property
    def is_done(self) -> bool:
        return self._done

    def feed(self, events: list[SSEEvent]) -> bytes:
        """The records for a batch of events, as one buffer (empty when none)."""
        parts: list[bytes] = []
        for name, payload in events:
            if self._done:
                break
            parts.extend(self._event(name, payload))
        return b"".join(parts)

    def _event(self, name: str, payload: JSONObject) -> list[bytes]:
        handler = _HANDLERS.get(name)
        return handler(self, payload) if handler is not None else []

    def _message_start(self, payload: JSONObject) -> list[bytes]:
        self._usage.update(payload.get("message", {}).get("usage") or {})
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, payload: JSONObject) -> list[bytes]:
        block = payload["content_block"]
        kind = block.get("type", "")
        if kind != "tool_use":
            if kind == "thinking":
                self._signature = None
            self._blocks[payload["index"]] = _Open(kind)
            return []
        index = self._tools
        self._tools += 1
        self._blocks[payload["index"]] = _Open(kind, index)
        call = _with_signature({"index": index, "id": block["id"], "type": "function",
                                "function": {"name": block["name"], "arguments": ""}}, self._signature)
        self._signature = None
        return [self._chunk({"tool_calls": [call]})]

    def _block_delta(self, payload: JSONObject) -> list[bytes]:
        delta = payload["delta"]
        kind = delta.get("type")
        if kind == "text_delta":
            return [self._chunk({"content": delta["text"]})]
        if kind == "thinking_delta":
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        if kind == "signature_delta":
            self._signature = delta.get("signature")
            return []
        if kind == "input_json_delta" and delta.get("partial_json"):
            block = self._blocks.get(payload["index"])
            if block is not None and block.tool_index >= 0:
                return [self._chunk({"tool_calls": [{"index": block.tool_index,
                                                     "function": {"arguments": delta["partial_json"]}}]})]
        return []

    def _message_delta(self, payload: JSONObject) -> list[bytes]:
        self._usage.update({k: v for k, v in (payload.get("usage") or {}).items() if v is not None})
        reason = _finish_reason(payload.get("delta", {}).get("stop_reason"))
        return [self._chunk({}, finish_reason=reason)]

    def _message_stop(self, payload: JSONObject) -> list[bytes]:
        self._done = True
        records = []
        if self._include_usage:
            records.append(self._record({**self._head(), "choices": [], "usage": _usage(self._usage)}))
        return [*records, b"data: [DONE]\n\n"]

    def _error(self, payload: JSONObject) -> list[bytes]:
        self._done = True
        error = payload.get("error") or {}
        _, envelope = openai_error(str(error.get("type")), str(error.get("message")), 500)
        return [self._record(envelope)]

    def _ping(self, payload: JSONObject) -> list[bytes]:
        return [b": ping\n\n"]

    def _head(self) -> JSONObject:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model}

    def _chunk(self, delta: JSONObject, finish_reason: str | None = None) -> bytes:
        chunk = {**self._head(), "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                              "logprobs": None}]}
        if self._include_usage:
            chunk["usage"] = None
        return self._record(chunk)

    @staticmethod
    def _record(payload: JSONObject) -> bytes:
        return b"data: " + orjson.dumps(payload) + b"\n\n"


_HANDLERS = {
    "message_start": ChunkWriter._message_start,
    "content_block_start": ChunkWriter._block_start,
    "content_block_delta": ChunkWriter._block_delta,
    "message_delta": ChunkWriter._message_delta,
    "message_stop": ChunkWriter._message_stop,
    "error": ChunkWriter._error,
    "ping": ChunkWriter._ping,
}


async def chunk_stream(events: AsyncGenerator[list[SSEEvent], None],
                       writer: ChunkWriter) -> AsyncGenerator[bytes, None]:
    """The Chat Completions byte stream of an Anthropic event stream; closes `events` however it ends.
    A stream that ends without ``message_stop`` or ``error`` (it cannot, from the engine) still ends
    with an error record rather than a silent cut."""
    try:
        async for batch in events:
            records = writer.feed(batch)
            if records:
                yield records
            if writer.is_done:
                return
        yield writer.feed([("error", {"type": "error", "error": {
            "type": "api_error", "message": "the upstream stream ended early"}})])
    finally:
        await events.aclose()


def render(decoded: Decoded, body: Mapping[str, Any]) -> Answer:
    """The answer a Chat Completions client gets for the engine's `decoded` answer to its `body`."""
    completion_id, created = new_id("chatcmpl-"), int(time.time())
    if decoded.events is None:
        assert decoded.message is not None
        return Answer(decoded.headers, content=orjson.dumps(completion(decoded.message, completion_id=completion_id,
                                                                       created=created)))
    options = body.get("stream_options") or {}
    writer = ChunkWriter(completion_id=completion_id, created=created, model=str(body["model"]),
                         include_usage=bool(options.get("include_usage")))
    return Answer({**decoded.headers, "cache-control": "no-cache"}, media_type="text/event-stream",
                  stream=chunk_stream(decoded.events, writer), upstream=decoded.upstream)
