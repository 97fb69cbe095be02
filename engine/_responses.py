"""OpenAI Responses API clients (the Codex CLI, the openai SDK's ``responses``): their requests in,
the engine's answers out as a ``Response`` object or its ``response.*`` event stream.

The request side is rules, like the Chat Completions inbound (`_chat`): `rules/inbound/openai-responses.yaml`
builds the engine's Anthropic body. What needs server state is refused here first, clearly: the proxy
keeps none, so ``store: true``, ``previous_response_id`` and ``conversation`` cannot be honoured. The
per-target completion (``max_tokens``, thinking budget, whose signatures go back) is the chat
inbound's `ChatInbound.adapt`, shared.

The answer side is a small state machine over the engine's Anthropic values, whatever the provider:
`response_object` renders a whole message; `EventWriter` renders the Anthropic event stream as the
Responses events (``response.created``, ``response.output_item.added``, the text, reasoning-summary
and function-argument deltas, ``response.output_item.done``, ``response.completed``), each with its
``sequence_number``. Thinking becomes a ``reasoning`` item (its text as the summary); a signature
the engine issued rides in ``encrypted_content`` when the client asks for it (``include``), and comes
back as a thinking block through the inbound rules. A call to a flattened ``namespace`` function
(``<namespace>__<name>``) is answered as ``name`` with its ``namespace``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ._chat import ChatInbound, chunk_stream, load_inbound, openai_error
from ._compiler import CompiledRules
from ._errors import RequestError
from ._functions import is_engine_signature, new_id
from ._loader import BUILTIN_RULES_DIR
from ._proxy import Answer, Decoded
from ._types import JSONObject, SSEEvent

__all__ = ["EventWriter", "ResponsesInbound", "render", "response_object"]

INBOUND_RULES = BUILTIN_RULES_DIR / "inbound" / "openai-responses.yaml"

#: The Responses API's own limits, worded like the other endpoints' (``temperature: range: 0..2``).
RANGES: dict[str, tuple[float | None, float | None]] = {
    "temperature": (0, 2), "top_p": (0, 1), "max_output_tokens": (16, None),
}
#: What asks the API to keep or reuse server state, which the proxy does not have.
STATEFUL = ("previous_response_id", "conversation")
#: Anthropic stop_reason → why a Response is incomplete (absent: completed).
INCOMPLETE: dict[str, str] = {
    "max_tokens": "max_output_tokens", "model_context_window_exceeded": "max_output_tokens",
    "refusal": "content_filter",
}
#: Anthropic error type → ResponseError code (anything else: server_error).
_FAILURE_CODES = {"rate_limit_error": "rate_limit_exceeded", "invalid_request_error": "invalid_prompt"}
ENCRYPTED_REASONING = "reasoning.encrypted_content"


class ResponsesInbound:
    """Responses requests → the engine's Anthropic requests; built once per app."""

    __slots__ = ("_rules",)

    #: What templates see as ``provider``: the inbound side has no provider.
    _PROVIDER: Mapping[str, Any] = {"name": "openai-responses", "base_url": "", "api_key": None, "headers": {}}

    adapt = staticmethod(ChatInbound.adapt)

    def __init__(self, rules: CompiledRules | None = None) -> None:
        self._rules = rules or load_inbound(INBOUND_RULES)

    def request(self, body: Any, headers: Mapping[str, str]) -> JSONObject:
        """Check the client's body (shape, ranges, no server state) and build the Anthropic body."""
        check_request(body)
        prepared = self._rules.build_request(body, model=str(body["model"]), provider_vars=self._PROVIDER,
                                             stream=bool(body.get("stream")),
                                             client_headers={k.lower(): v for k, v in headers.items()})
        return prepared.body


def check_request(body: Any) -> None:
    """The checks the rules cannot make, each a 400 that says what to change."""
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise RequestError("model: a model name is required")
    if not isinstance(body.get("input"), (str, list)) or not body["input"]:
        raise RequestError("input: a string or a non-empty list of items is required")
    if body.get("store") is True:
        raise RequestError("store: true is not supported: this proxy keeps no responses (send store: false)")
    for key in STATEFUL:
        if body.get(key) is not None:
            raise RequestError(f"{key}: not supported: this proxy keeps no state; send the whole conversation "
                               "in input (store: false)")
    for key, (low, high) in RANGES.items():
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(f"{key}: must be a number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise RequestError(f"{key}: range: {low}..{'' if high is None else high}")
    for name in ("tools", "include"):
        if body.get(name) is not None and not isinstance(body[name], list):
            raise RequestError(f"{name}: must be a list")


# --- items: shared by the whole answer and the stream -------------------------------------------


def _namespaces(body: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Flattened function name → (namespace, name), for the namespace tools of `body`."""
    return {f"{tool['name']}__{inner['name']}": (tool["name"], inner["name"])
            for tool in body.get("tools") or [] if isinstance(tool, dict) and tool.get("type") == "namespace"
            for inner in tool.get("tools") or [] if isinstance(inner, dict) and inner.get("name")}


def _message_item(item_id: str, text: str, status: str) -> JSONObject:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def _reasoning_item(item_id: str, text: str, signature: str | None, with_encrypted: bool) -> JSONObject:
    item: JSONObject = {"id": item_id, "type": "reasoning",
                        "summary": [{"type": "summary_text", "text": text}] if text else []}
    if with_encrypted and signature and is_engine_signature(signature):
        item["encrypted_content"] = signature
    return item


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str,
               namespaces: Mapping[str, tuple[str, str]]) -> JSONObject:
    item: JSONObject = {"id": item_id, "type": "function_call", "call_id": call_id, "name": name,
                        "arguments": arguments, "status": status}
    if name in namespaces:
        item["namespace"], item["name"] = namespaces[name]
    return item


def _usage(usage: Mapping[str, Any]) -> JSONObject:
    """Anthropic usage → the Responses API's: input tokens include the cached ones."""
    cached, written = usage.get("cache_read_input_tokens") or 0, usage.get("cache_creation_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + cached + written
    output = usage.get("output_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + output}


@dataclass(slots=True)
class _Shell:
    """What every Response object of one answer repeats from the request."""

    response_id: str
    created: int
    body: Mapping[str, Any]

    def response(self, status: str, output: list[JSONObject], *, usage: JSONObject | None = None,
                 incomplete: str | None = None, error: JSONObject | None = None) -> JSONObject:
        body = self.body
        return {
            "id": self.response_id, "object": "response", "created_at": self.created, "model": body.get("model"),
            "status": status, "output": output, "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": body.get("instructions"), "metadata": body.get("metadata") or {},
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "temperature": body.get("temperature"), "top_p": body.get("top_p"),
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "store": False, "reasoning": body.get("reasoning"), "max_output_tokens": body.get("max_output_tokens"),
            "usage": usage,
        }

    def final(self, stop_reason: Any, output: list[JSONObject], usage: Mapping[str, Any]) -> JSONObject:
        incomplete = INCOMPLETE.get(str(stop_reason))
        return self.response("incomplete" if incomplete else "completed", output, usage=_usage(usage),
                             incomplete=incomplete)


def _wants_encrypted(body: Mapping[str, Any]) -> bool:
    return ENCRYPTED_REASONING in (body.get("include") or [])


def response_object(message: Mapping[str, Any], body: Mapping[str, Any], *, response_id: str,
                    created: int) -> JSONObject:
    """A whole Anthropic message as a ``Response``: one item per block (thinking → reasoning,
    text → message, tool_use → function_call)."""
    namespaces, encrypted = _namespaces(body), _wants_encrypted(body)
    output: list[JSONObject] = []
    for block in message.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            output.append(_message_item(new_id("msg_"), block.get("text", ""), "completed"))
        elif kind == "thinking":
            output.append(_reasoning_item(new_id("rs_"), block.get("thinking", ""), block.get("signature"),
                                          encrypted))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            output.append(_call_item(new_id("fc_"), block["id"], block["name"], arguments, "completed", namespaces))
    return _Shell(response_id, created, body).final(message.get("stop_reason"), output, message.get("usage") or {})


# --- the stream ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Open:
    """The item an Anthropic block is streaming: its output index and what it has said so far."""

    item: JSONObject
    output_index: int
    parts: list[str] = field(default_factory=list)
    signature: str | None = None


class EventWriter:
    """Anthropic stream events → Responses SSE records (``event:`` + ``data:``), for one answer.

    Each content block is one output item: added at its start, its deltas, done at its stop.
    ``message_delta`` gives the stop reason and usage; ``message_stop`` the final
    ``response.completed`` (or ``response.incomplete``) with every item; ``error`` a
    ``response.failed`` that ends the stream; ``ping`` an SSE comment. After the end, nothing.
    """

    __slots__ = ("_done", "_encrypted", "_namespaces", "_open", "_output", "_sequence", "_shell", "_stop",
                 "_usage")

    def __init__(self, body: Mapping[str, Any], *, response_id: str, created: int) -> None:
        self._shell = _Shell(response_id, created, body)
        self._namespaces = _namespaces(body)
        self._encrypted = _wants_encrypted(body)
        self._open: dict[int, _Open] = {}
        self._output: list[JSONObject] = []
        self._usage: dict[str, Any] = {}
        self._stop: Any = None
        self._sequence = 0
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
            if name == "ping":
                parts.append(b": ping\n\n")
                continue
            handler = _HANDLERS.get(name)
            if handler is not None:
                parts.extend(self._record(event) for event in handler(self, payload))
        return b"".join(parts)

    def _record(self, event: JSONObject) -> bytes:
        event["sequence_number"] = self._sequence
        self._sequence += 1
        kind: str = event["type"]
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"

    def _message_start(self, payload: JSONObject) -> list[JSONObject]:
        self._usage.update(payload.get("message", {}).get("usage") or {})
        started = self._shell.response("in_progress", [])
        return [{"type": "response.created", "response": started},
                {"type": "response.in_progress", "response": started}]

    def _block_start(self, payload: JSONObject) -> list[JSONObject]:
        block = payload["content_block"]
        kind = block.get("type")
        if kind == "text":
            item = _message_item(new_id("msg_"), "", "in_progress")
        elif kind == "thinking":
            item = _reasoning_item(new_id("rs_"), "", None, False)
        elif kind == "tool_use":
            item = _call_item(new_id("fc_"), block["id"], block["name"], "", "in_progress", self._namespaces)
        else:
            return []
        opened = self._open[payload["index"]] = _Open(item, len(self._output) + len(self._open))
        events: list[JSONObject] = [{"type": "response.output_item.added", "output_index": opened.output_index,
                                     "item": dict(item)}]
        if kind == "text":
            events.append({**self._at(opened), "type": "response.content_part.added", "content_index": 0,
                           "part": {"type": "output_text", "text": "", "annotations": []}})
        return events

    def _at(self, opened: _Open) -> JSONObject:
        return {"item_id": opened.item["id"], "output_index": opened.output_index}

    def _block_delta(self, payload: JSONObject) -> list[JSONObject]:
        opened = self._open.get(payload["index"])
        delta = payload["delta"]
        kind = delta.get("type")
        if opened is None:
            return []
        if kind == "signature_delta":
            opened.signature = delta.get("signature")
            return []
        piece = delta.get({"text_delta": "text", "thinking_delta": "thinking",
                           "input_json_delta": "partial_json"}.get(str(kind), ""))
        if not piece:
            return []
        opened.parts.append(piece)
        if kind == "text_delta":
            return [{**self._at(opened), "type": "response.output_text.delta", "content_index": 0, "delta": piece,
                     "logprobs": []}]
        if kind == "input_json_delta":
            return [{**self._at(opened), "type": "response.function_call_arguments.delta", "delta": piece}]
        events: list[JSONObject] = []
        if len(opened.parts) == 1:
            events.append({**self._at(opened), "type": "response.reasoning_summary_part.added", "summary_index": 0,
                           "part": {"type": "summary_text", "text": ""}})
        events.append({**self._at(opened), "type": "response.reasoning_summary_text.delta", "summary_index": 0,
                       "delta": piece})
        return events

    def _block_stop(self, payload: JSONObject) -> list[JSONObject]:
        opened = self._open.pop(payload["index"], None)
        if opened is None:
            return []
        item, text, at = opened.item, "".join(opened.parts), self._at(opened)
        events: list[JSONObject] = []
        if item["type"] == "message":
            item = _message_item(item["id"], text, "completed")
            part = item["content"][0]
            events += [{**at, "type": "response.output_text.done", "content_index": 0, "text": text, "logprobs": []},
                       {**at, "type": "response.content_part.done", "content_index": 0, "part": part}]
        elif item["type"] == "function_call":
            item = {**item, "arguments": text or "{}", "status": "completed"}
            events.append({**at, "type": "response.function_call_arguments.done", "name": item["name"],
                           "arguments": item["arguments"]})
        else:
            item = _reasoning_item(item["id"], text, opened.signature, self._encrypted)
            if text:
                part = {"type": "summary_text", "text": text}
                events += [{**at, "type": "response.reasoning_summary_text.done", "summary_index": 0, "text": text},
                           {**at, "type": "response.reasoning_summary_part.done", "summary_index": 0, "part": part}]
        self._output.append(item)
        events.append({"type": "response.output_item.done", "output_index": opened.output_index, "item": item})
        return events

    def _message_delta(self, payload: JSONObject) -> list[JSONObject]:
        self._usage.update({k: v for k, v in (payload.get("usage") or {}).items() if v is not None})
        self._stop = payload.get("delta", {}).get("stop_reason")
        return []

    def _message_stop(self, payload: JSONObject) -> list[JSONObject]:
        self._done = True
        final = self._shell.final(self._stop, self._output, self._usage)
        return [{"type": f"response.{final['status']}", "response": final}]

    def _error(self, payload: JSONObject) -> list[JSONObject]:
        """A failure after the answer started: ``response.failed``, whose error carries the message
        (its status and envelope are OpenAI's, `openai_error`)."""
        self._done = True
        error = payload.get("error") or {}
        error_type = str(error.get("type"))
        _, envelope = openai_error(error_type, str(error.get("message")), 500)
        failure = {"code": _FAILURE_CODES.get(error_type, "server_error"), "message": envelope["error"]["message"]}
        return [{"type": "response.failed", "response": self._shell.response("failed", self._output, error=failure)}]


_HANDLERS = {
    "message_start": EventWriter._message_start,
    "content_block_start": EventWriter._block_start,
    "content_block_delta": EventWriter._block_delta,
    "content_block_stop": EventWriter._block_stop,
    "message_delta": EventWriter._message_delta,
    "message_stop": EventWriter._message_stop,
    "error": EventWriter._error,
}


def render(decoded: Decoded, body: Mapping[str, Any]) -> Answer:
    """The answer a Responses client gets for the engine's `decoded` answer to its `body`."""
    response_id, created = new_id("resp_"), int(time.time())
    if decoded.events is None:
        assert decoded.message is not None
        return Answer(decoded.headers, content=orjson.dumps(response_object(decoded.message, body,
                                                                           response_id=response_id,
                                                                           created=created)))
    writer = EventWriter(body, response_id=response_id, created=created)
    return Answer({**decoded.headers, "cache-control": "no-cache"}, media_type="text/event-stream",
                  stream=chunk_stream(decoded.events, writer), upstream=decoded.upstream)
