"""A fake OpenAI Responses API upstream (``POST /v1/responses``): real wire format, scripted.

`FakeResponses` is a plain ASGI app. Serve it with `serve_app` (fakes/server.py) and point the code
under test at `f"{base_url}/v1"`. Each request is recorded, checked, and answered with the next
scripted reply: a `Response` body, or for ``stream: true`` the typed event stream the API sends
(``event: <type>`` + ``data: <event>`` records, no end marker: the body ends after
``response.completed``, ``response.incomplete`` or ``response.failed``).

Checks (each problem answers 400 with an OpenAI error body, so proxy tests fail loudly):

* the bearer key (`api_key`);
* the body against the `openai` SDK's own `ResponseCreateParams{Streaming,NonStreaming}` types
  (`check_sdk_types`: unknown keys, missing required keys, wrong shapes, path by path);
* the protocol rules those types cannot express (`validate_request`): `model` and `input` present;
  no server state (`store: false`, no `previous_response_id`: the proxy keeps none);
  `max_output_tokens` at least 16; every `function_call_output` answers an earlier `function_call`
  with its `call_id` and every call gets its output; a `reasoning` item carries encrypted content the
  fake issued for that id and is followed by the item it led to; reasoning parameters and
  `reasoning.encrypted_content` only for reasoning models, sampling parameters only for others;
  function names, and a `tool_choice` naming a declared function.

Replies:

    fake = FakeResponses(api_key="k")
    fake.queue(Reasoning(["Plan the call."], then=Calls([Call("get_weather", {"city": "Oslo"})], split=4)))
    fake.queue(Text("It snows.", chunks=["It ", "snows."], usage=Usage(input=900, output=4, cached=512)))

`Reasoning` gives its item encrypted content when the request asked for it (`include`), and the
fake remembers it (`issued_reasoning`) so that only what it issued comes back. Every reply takes the
modifiers on `Reply` (`incomplete`, `failed`, `error_event`, `cut_after`, `abort`).
"""

from __future__ import annotations

import base64
import itertools
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import orjson
from openai.types.responses import response_create_params

from .asgi import is_http_request, read_body, send_json, send_stream
from .openai_upstream import Error, TypeProblem, check_typed
from .server import Receive, Scope, Send

__all__ = [
    "Call",
    "Calls",
    "Error",
    "FakeResponses",
    "Reasoning",
    "Reply",
    "ResponsesRequest",
    "Scripted",
    "StreamAborted",
    "Text",
    "Usage",
    "check_sdk_types",
    "encode_stream",
    "response_body",
    "stream_events",
    "validate_request",
]

JSONObject: TypeAlias = dict[str, Any]

RESPONSES_PATH = "/v1/responses"
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream; charset=utf-8"
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
REASONING_MODELS = re.compile(r"^(o[1-9]|gpt-5(?!.*-chat)|codex)")
"""Models that take `reasoning` and `include: reasoning.encrypted_content`, and refuse sampling."""
MIN_OUTPUT_TOKENS = 16

_ids = itertools.count(1)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):04d}{os.urandom(6).hex()}"


def new_encrypted_content() -> str:
    """Opaque encrypted reasoning, as the API sends it (base64 of bytes only OpenAI can read)."""
    return base64.b64encode(b"\x01enc" + os.urandom(40)).decode("ascii")


# ---------------------------------------------------------------------------------------------
# Replies: what a test scripts
# ---------------------------------------------------------------------------------------------


@dataclass
class Usage:
    """Token counts as `ResponseUsage`: input includes cached and cache-written tokens, output
    includes reasoning."""

    input: int = 12
    output: int = 5
    cached: int = 0
    cache_write: int = 0
    reasoning: int = 0

    def to_json(self) -> JSONObject:
        details = {"cached_tokens": self.cached, "cache_write_tokens": self.cache_write}
        return {"input_tokens": self.input, "input_tokens_details": details,
                "output_tokens": self.output, "output_tokens_details": {"reasoning_tokens": self.reasoning},
                "total_tokens": self.input + self.output}


@dataclass(kw_only=True)
class Reply:
    """Base of the reply kinds; its fields are the modifiers every kind accepts (keyword-only).

    - `usage`; `incomplete="max_output_tokens"` (or `content_filter`) ends the answer
      `status: incomplete` with that reason (`response.incomplete` in a stream);
    - `failed=Error(...)`: the answer fails in band (`status: failed` with `error`; in a stream a
      `response.failed` event after the items); `error_event=Error(...)`: a stream's `error` event
      after `cut_after` events (default: right after `response.created`), and nothing more;
    - `cut_after=K`: the stream ends after K events without a final one; `abort=True` drops the
      connection there instead.
    """

    usage: Usage = field(default_factory=Usage)
    incomplete: str | None = None
    failed: Error | None = None
    error_event: Error | None = None
    cut_after: int | None = None
    abort: bool = False

    def items(self, request: JSONObject) -> list[JSONObject]:
        """The output items, complete (what `response.output` lists)."""
        raise NotImplementedError

    def pieces(self, item: JSONObject) -> list[str]:
        """How the item's text (or arguments) is cut into deltas in a stream."""
        return [item.get("arguments", "")] if item["type"] == "function_call" else []


@dataclass
class Text(Reply):
    """An assistant message; `chunks` are its deltas (default: the whole text in one)."""

    text: str = ""
    chunks: list[str] | None = None
    refusal: str | None = None

    def items(self, request: JSONObject) -> list[JSONObject]:
        content: list[JSONObject] = []
        if self.text or not self.refusal:
            content.append({"type": "output_text", "text": self.text, "annotations": [], "logprobs": []})
        if self.refusal:
            content.append({"type": "refusal", "refusal": self.refusal})
        return [{"type": "message", "id": _new_id("msg"), "role": "assistant", "status": "completed",
                 "content": content}]

    def text_chunks(self) -> list[str]:
        if self.chunks is not None:
            if "".join(self.chunks) != self.text:
                raise ValueError(f"chunks {self.chunks!r} do not join to {self.text!r}")
            return self.chunks
        return [self.text]


@dataclass
class Call:
    """One function call; `id` is its `call_id` (default: a fresh `call_…`)."""

    name: str
    arguments: JSONObject | str = field(default_factory=dict)
    id: str | None = None

    def to_item(self) -> JSONObject:
        arguments = self.arguments if isinstance(self.arguments, str) else orjson.dumps(self.arguments).decode()
        return {"type": "function_call", "id": _new_id("fc"), "call_id": self.id or _new_id("call"),
                "name": self.name, "arguments": arguments, "status": "completed"}


@dataclass
class Calls(Reply):
    """Function calls (several are parallel), optionally after a message; each call's arguments are
    streamed in `split` deltas."""

    calls: list[Call] = field(default_factory=list)
    text_before: str | None = None
    split: int = 1

    def items(self, request: JSONObject) -> list[JSONObject]:
        before = Text(self.text_before).items(request) if self.text_before else []
        return before + [call.to_item() for call in self.calls]

    def pieces(self, item: JSONObject) -> list[str]:
        if item["type"] != "function_call":
            return []
        text = item["arguments"]
        size = max(1, -(-len(text) // max(1, self.split)))
        return [text[i : i + size] for i in range(0, len(text), size)] or [""]


@dataclass
class Reasoning(Reply):
    """A reasoning item (summary parts, each streamed in `chunks_per_part` deltas; summaries only when
    the request asked for them), then `then`'s items. Its encrypted content is issued only when the
    request includes ``reasoning.encrypted_content``; `item_id` and `encrypted` are readable after
    the reply was rendered. Usage and the ending come from this reply."""

    summary: list[str] = field(default_factory=list)
    then: Reply | None = None
    chunks_per_part: int = 2
    item_id: str | None = None
    encrypted: str | None = None

    def items(self, request: JSONObject) -> list[JSONObject]:
        self.item_id = self.item_id or _new_id("rs")
        item: JSONObject = {"type": "reasoning", "id": self.item_id, "summary": []}
        if (request.get("reasoning") or {}).get("summary"):
            item["summary"] = [{"type": "summary_text", "text": text} for text in self.summary]
        if "reasoning.encrypted_content" in (request.get("include") or []):
            self.encrypted = self.encrypted or new_encrypted_content()
            item["encrypted_content"] = self.encrypted
        return [item] + (self.then.items(request) if self.then else [])

    def pieces(self, item: JSONObject) -> list[str]:
        return self.then.pieces(item) if self.then else super().pieces(item)


Scripted: TypeAlias = Reply | Error
"""What a test can queue or a responder can return."""


# ---------------------------------------------------------------------------------------------
# Rendering: replies to bodies and events
# ---------------------------------------------------------------------------------------------


def _response(reply: Reply, request: JSONObject, response_id: str, output: list[JSONObject], *,
              status: str) -> JSONObject:
    """A `Response` object as the API returns it (the fields the SDK's model requires, and usage)."""
    final = status != "in_progress"
    error = reply.failed.to_json()["error"] if reply.failed and status == "failed" else None
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()), "model": request.get("model"),
        "status": status, "output": output, "error": {"code": error["code"] or "server_error",
                                                       "message": error["message"]} if error else None,
        "incomplete_details": {"reason": reply.incomplete} if status == "incomplete" else None,
        "instructions": request.get("instructions"), "metadata": {}, "parallel_tool_calls": True,
        "temperature": request.get("temperature"), "top_p": request.get("top_p"),
        "tool_choice": request.get("tool_choice", "auto"), "tools": request.get("tools") or [],
        "store": request.get("store", True), "reasoning": request.get("reasoning"),
        "max_output_tokens": request.get("max_output_tokens"),
        "usage": reply.usage.to_json() if final else None,
    }


def _final_status(reply: Reply) -> str:
    if reply.failed is not None:
        return "failed"
    return "incomplete" if reply.incomplete else "completed"


def response_body(reply: Reply, request: JSONObject) -> JSONObject:
    """The whole answer to a non-streamed request."""
    return _response(reply, request, _new_id("resp"), reply.items(request), status=_final_status(reply))


def _text_events(reply: Reply, item: JSONObject, index: int) -> list[JSONObject]:
    base = {"item_id": item["id"], "output_index": index}
    events: list[JSONObject] = []
    for content_index, part in enumerate(item["content"]):
        kind, key = ("output_text", "text") if part["type"] == "output_text" else ("refusal", "refusal")
        empty = {**part, key: ""}
        events.append({"type": "response.content_part.added", **base, "content_index": content_index,
                       "part": empty})
        chunks = reply.text_chunks() if isinstance(reply, Text) and kind == "output_text" else [part[key]]
        delta_type = "response.output_text.delta" if kind == "output_text" else "response.refusal.delta"
        extra = {"logprobs": []} if kind == "output_text" else {}
        events += [{"type": delta_type, **base, "content_index": content_index, "delta": piece, **extra}
                   for piece in chunks if piece]
        done_type = "response.output_text.done" if kind == "output_text" else "response.refusal.done"
        events.append({"type": done_type, **base, "content_index": content_index, key: part[key], **extra})
        events.append({"type": "response.content_part.done", **base, "content_index": content_index,
                       "part": part})
    return events


def _reasoning_events(reply: Reply, item: JSONObject, index: int) -> list[JSONObject]:
    per_part = reply.chunks_per_part if isinstance(reply, Reasoning) else 1
    base = {"item_id": item["id"], "output_index": index}
    events: list[JSONObject] = []
    for summary_index, part in enumerate(item["summary"]):
        text = part["text"]
        size = max(1, -(-len(text) // max(1, per_part)))
        events.append({"type": "response.reasoning_summary_part.added", **base, "summary_index": summary_index,
                       "part": {"type": "summary_text", "text": ""}})
        events += [{"type": "response.reasoning_summary_text.delta", **base, "summary_index": summary_index,
                    "delta": text[i : i + size]} for i in range(0, len(text), size)]
        events.append({"type": "response.reasoning_summary_text.done", **base, "summary_index": summary_index,
                       "text": text})
        events.append({"type": "response.reasoning_summary_part.done", **base, "summary_index": summary_index,
                       "part": part})
    return events


def _item_events(reply: Reply, source: Reply, item: JSONObject, index: int) -> list[JSONObject]:
    """added, the item's deltas, done. `source` is the reply the item came from (for its pieces)."""
    if item["type"] == "function_call":
        added = {**item, "arguments": "", "status": "in_progress"}
        base = {"item_id": item["id"], "output_index": index}
        body = [{"type": "response.function_call_arguments.delta", **base, "delta": piece}
                for piece in source.pieces(item)]
        body.append({"type": "response.function_call_arguments.done", **base, "name": item["name"],
                     "arguments": item["arguments"]})
    elif item["type"] == "message":
        added = {**item, "content": [], "status": "in_progress"}
        body = _text_events(source, item, index)
    else:
        added = {key: value for key, value in item.items() if key != "encrypted_content"}
        added["summary"] = []
        body = _reasoning_events(reply, item, index)
    return [{"type": "response.output_item.added", "output_index": index, "item": added}, *body,
            {"type": "response.output_item.done", "output_index": index, "item": item}]


def _source_of(reply: Reply, item: JSONObject) -> Reply:
    """The reply whose text or calls `item` renders (a `Reasoning`'s `then` for its later items)."""
    while isinstance(reply, Reasoning) and item["type"] != "reasoning" and reply.then is not None:
        reply = reply.then
    return reply


def stream_events(reply: Reply, request: JSONObject) -> list[JSONObject]:
    """Every event of a streamed answer, numbered (`sequence_number`), before any cut."""
    response_id = _new_id("resp")
    items = reply.items(request)
    events: list[JSONObject] = [
        {"type": "response.created", "response": _response(reply, request, response_id, [], status="in_progress")},
        {"type": "response.in_progress", "response": _response(reply, request, response_id, [], status="in_progress")},
    ]
    if reply.error_event is not None:
        error = reply.error_event.to_json()["error"]
        cut = 1 if reply.cut_after is None else reply.cut_after
        events = [*events[:cut], {"type": "error", "code": error["code"] or error["type"],
                                  "message": error["message"], "param": error["param"]}]
    else:
        for index, item in enumerate(items):
            events += _item_events(reply, _source_of(reply, item), item, index)
        status = _final_status(reply)
        events.append({"type": f"response.{status}",
                       "response": _response(reply, request, response_id, items, status=status)})
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events


def encode_stream(reply: Reply, request: JSONObject) -> list[bytes]:
    """The SSE writes of a streamed answer, one per event (`cut_after` applied)."""
    events = stream_events(reply, request)
    if reply.cut_after is not None and reply.error_event is None:
        events = events[: reply.cut_after]
    return [b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n" for event in events]


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def check_sdk_types(body: JSONObject) -> list[TypeProblem]:
    """Check a request body against `ResponseCreateParams{Streaming,NonStreaming}` of the SDK."""
    params = (response_create_params.ResponseCreateParamsStreaming if body.get("stream") is True
              else response_create_params.ResponseCreateParamsNonStreaming)
    return check_typed(body, params)


def validate_request(body: Any, issued: dict[str, str] | None = None) -> list[str]:
    """The protocol rules the SDK types cannot express (module docstring). `issued` maps the
    reasoning item ids the fake issued to their encrypted content; None skips that check (rule
    cases make their own up)."""
    if not isinstance(body, dict):
        return ["the body must be a JSON object"]
    problems = [f"Missing required parameter: '{key}'." for key in ("model", "input") if key not in body]
    if body.get("previous_response_id") is not None:
        problems.append("previous_response_id: the proxy keeps no state and must never send one")
    if body.get("store") is not False:
        problems.append("store must be false: the proxy keeps no state, so nothing may be stored upstream")
    tokens = body.get("max_output_tokens")
    if isinstance(tokens, int) and tokens < MIN_OUTPUT_TOKENS:
        problems.append(f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
                        f"{MIN_OUTPUT_TOKENS}, but got {tokens} instead.")
    problems += _model_problems(body)
    problems += _tool_problems(body)
    items = body.get("input")
    if isinstance(items, list):
        problems += _pairing_problems(items)
        problems += _reasoning_problems(items, issued)
    return problems


def _model_problems(body: JSONObject) -> list[str]:
    reasoning_model = bool(REASONING_MODELS.match(str(body.get("model") or "")))
    problems = []
    if reasoning_model:
        problems += [f"Unsupported parameter: '{key}' is not supported with this model."
                     for key in ("temperature", "top_p") if body.get(key) is not None]
    else:
        if body.get("reasoning") is not None:
            problems.append("Unsupported parameter: 'reasoning.effort' is not supported with this model.")
        if "reasoning.encrypted_content" in (body.get("include") or []):
            problems.append("Encrypted content is not supported with this model.")
    return problems


def _tool_problems(body: JSONObject) -> list[str]:
    names = [tool.get("name") for tool in body.get("tools") or [] if isinstance(tool, dict)]
    problems = [f"Invalid 'tools[{i}].name': string does not match pattern '^[a-zA-Z0-9_-]+$'."
                for i, name in enumerate(names) if not isinstance(name, str) or not FUNCTION_NAME.match(name)]
    if len(set(names)) != len(names):
        problems.append("tools: duplicate function names")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("name") not in names:
        problems.append(f"Tool choice '{choice.get('name')}' not found in 'tools' parameter.")
    return problems


def _pairing_problems(items: list[Any]) -> list[str]:
    """Every output answers an earlier call with its call_id; every call gets its output."""
    problems: list[str] = []
    called: set[str] = set()
    answered: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call":
            if item.get("call_id") in called:
                problems.append(f"Duplicate function call id {item.get('call_id')!r}.")
            called.add(str(item.get("call_id")))
        elif item.get("type") == "function_call_output":
            if item.get("call_id") not in called:
                problems.append(f"No tool call found for function call output with call_id {item.get('call_id')}.")
            answered.add(str(item.get("call_id")))
    problems += [f"No tool output found for function call {call_id}." for call_id in sorted(called - answered)]
    return problems


def _reasoning_problems(items: list[Any], issued: dict[str, str] | None) -> list[str]:
    problems: list[str] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or item.get("type") != "reasoning":
            continue
        following = items[index + 1] if index + 1 < len(items) else None
        if not (isinstance(following, dict) and (following.get("type") == "function_call"
                                                 or following.get("role") == "assistant")):
            problems.append(f"Item '{item.get('id')}' of type 'reasoning' was provided without its required "
                            "following item.")
        if not item.get("encrypted_content"):
            problems.append(f"Item with id '{item.get('id')}' not found. Items are not persisted when `store` "
                            "is set to false; send its encrypted_content.")
        elif issued is not None and issued.get(str(item.get("id"))) != item["encrypted_content"]:
            problems.append(f"The encrypted content for item {item.get('id')} could not be verified.")
    return problems


# ---------------------------------------------------------------------------------------------
# The ASGI app
# ---------------------------------------------------------------------------------------------


class StreamAborted(Exception):
    """Raised inside the app to make the server drop the connection mid-body (`Reply.abort`)."""


@dataclass
class ResponsesRequest:
    """One request as the fake saw it; `problems` are why it was refused (types and protocol rules)."""

    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any = None
    problems: list[str] = field(default_factory=list)
    status: int | None = None
    disconnected: bool = False

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True


class FakeResponses:
    """The scripted upstream; see the module docstring. `api_key`: when set, other keys get a 401."""

    def __init__(self, *script: Scripted, default: Scripted | None = None,
                 responder: Callable[[JSONObject], Scripted] | None = None, api_key: str | None = None) -> None:
        self._constructed = (list(script), default, responder, api_key)
        self.issued_reasoning: dict[str, str] = {}
        self.reset()

    def queue(self, *replies: Scripted) -> None:
        """Append replies to the script; each request consumes one."""
        self.script.extend(replies)

    def reset(self) -> None:
        """Back to the state right after construction, no requests recorded (issued reasoning stays
        valid, as encrypted content does at OpenAI)."""
        script, self.default, self.responder, self.api_key = self._constructed
        self.script: list[Scripted] = list(script)
        self.requests: list[ResponsesRequest] = []

    @property
    def last(self) -> ResponsesRequest:
        assert self.requests, "FakeResponses has received no request"
        return self.requests[-1]

    def assert_all_accepted(self) -> None:
        """Fail listing every request the fake refused for its body (a proxy bug, not a scripted error)."""
        refused = [f"request {i}: {p}" for i, r in enumerate(self.requests) for p in r.problems]
        assert not refused, "FakeResponses refused requests:\n" + "\n".join(refused)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await is_http_request(scope, receive, send):
            return
        request = ResponsesRequest(method=scope["method"], path=scope["path"],
                                   headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
                                   raw=await read_body(receive))
        self.requests.append(request)
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            await _send_error(send, request, Error(401, "Incorrect API key provided.", code="invalid_api_key"))
        elif request.path != RESPONSES_PATH or request.method != "POST":
            await _send_error(send, request, Error(404, f"Invalid URL ({request.method} {request.path})"))
        else:
            await self._answer(receive, send, request)

    async def _answer(self, receive: Receive, send: Send, request: ResponsesRequest) -> None:
        try:
            request.body = orjson.loads(request.raw)
        except orjson.JSONDecodeError:
            await _send_error(send, request, Error(400, "We could not parse the JSON body of your request."))
            return
        request.problems = validate_request(request.body, self.issued_reasoning)
        if isinstance(request.body, dict):
            request.problems += [str(problem) for problem in check_sdk_types(request.body)]
        if request.problems:
            await _send_error(send, request, Error(400, "\n".join(request.problems)))
            return
        reply = self._next_reply(request.body)
        if isinstance(reply, Error):
            await _send_error(send, request, reply)
            return
        if request.stream:
            writes = encode_stream(reply, request.body)
            self._remember(reply)
            abort = StreamAborted("FakeResponses dropped the connection on purpose") if reply.abort else None
            await send_stream(receive, send, request, writes, content_type=SSE_TYPE, abort=abort)
        else:
            body = response_body(reply, request.body)
            self._remember(reply)
            await send_json(send, request, 200, body, content_type=JSON_TYPE)

    def _remember(self, reply: Reply | None) -> None:
        while isinstance(reply, Reasoning):
            if reply.item_id and reply.encrypted:
                self.issued_reasoning[reply.item_id] = reply.encrypted
            reply = reply.then

    def _next_reply(self, body: JSONObject) -> Scripted:
        if self.script:
            return self.script.pop(0)
        if self.responder is not None:
            return self.responder(body)
        if self.default is not None:
            return self.default
        return Error(500, "FakeResponses: no scripted reply left (queue one, or set default or responder)")


async def _send_error(send: Send, request: ResponsesRequest, error: Error) -> None:
    headers = dict(error.headers)
    if error.retry_after is not None:
        headers["retry-after"] = f"{error.retry_after:g}"
    await send_json(send, request, error.status, error.to_json(), content_type=JSON_TYPE,
                    headers=list(headers.items()))
