"""A fake OpenAI Chat Completions upstream: real wire format, scripted per test.

`FakeOpenAI` is a plain ASGI app. Serve it with `serve_app` (fakes/server.py) and point the code
under test at `f"{base_url}/v1"`. Each `POST /v1/chat/completions` is recorded, validated the way
OpenAI validates (a broken body gets a 400 with an OpenAI error, so proxy tests fail loudly), and
answered with the next scripted reply:

    fake = FakeOpenAI()
    fake.queue(ToolCalls([Call("get_weather", {"city": "Oslo"})], split=3))
    fake.queue(Text("It snows.", chunks=["It ", "snows."], usage=Usage(prompt=900, completion=4, cached=512)))
    fake.responder = lambda body: Text("done") if body["messages"][-1]["role"] == "tool" else Error(500, "?")

Replies are consumed in order; when the script is empty, `responder(body)` decides, then
`default`; with neither, the fake answers 500 so a missing script is obvious. Streaming requests
get SSE chunks exactly like OpenAI's (`encode_stream`), others a `chat.completion` body
(`completion_body`). Every reply kind takes the stream modifiers documented on `Reply`.

Validation is two layers. `validate_chat_request` encodes the protocol rules a type cannot
express (role order, tool-call ids, function-name pattern). `check_sdk_types` walks the body
against the `openai` SDK's own request TypedDicts and reports unknown keys (an Anthropic
`cache_control` left behind) and wrong shapes, path by path. Provider dialects that add keys pass
them in `allow_extra` as patterns such as `"messages[].reasoning_content"`.

`FakeOpenAI(dialect=...)` makes the fake speak another OpenAI-compatible provider (`Dialect`; the
shipped ones are in fakes/dialects.py): its extra request keys, the request rules it enforces with
its own error bodies, its usage fields and its stream quirks.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import string
import time
import types
import typing
from collections import abc
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias

import orjson
import typing_extensions
from openai.types.chat import completion_create_params

from .asgi import is_http_request, read_body, send_json, send_stream
from .server import Receive, Scope, Send

__all__ = [
    "OPENAI",
    "Call",
    "Chunks",
    "Dialect",
    "DialectCheck",
    "Error",
    "FakeOpenAI",
    "Reasoning",
    "ReasoningDetails",
    "ReceivedRequest",
    "Reply",
    "Scripted",
    "StreamAborted",
    "Text",
    "ToolCalls",
    "TypeProblem",
    "Usage",
    "check_sdk_types",
    "check_typed",
    "chunk",
    "completion_body",
    "encode_stream",
    "validate_chat_request",
]

JSONObject: TypeAlias = dict[str, Any]

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream; charset=utf-8"
DEFAULT_MODELS = ("gpt-4.1", "gpt-4.1-mini", "o3")
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ROLES = ("system", "developer", "user", "assistant", "tool")
USER_PART_TYPES = {"text": "text", "image_url": "image_url", "input_audio": "input_audio", "file": "file"}
OPENROUTER_COMMENT = b": OPENROUTER PROCESSING"
_ID_ALPHABET = string.ascii_letters + string.digits


def _new_id(prefix: str, length: int) -> str:
    return prefix + "".join(random.choices(_ID_ALPHABET, k=length))


# ---------------------------------------------------------------------------------------------
# Replies: what a test scripts
# ---------------------------------------------------------------------------------------------


@dataclass
class Usage:
    """Token counts, rendered as OpenAI `usage` (prompt includes cached, completion includes reasoning)."""

    prompt: int = 12
    completion: int = 5
    cached: int = 0
    reasoning: int = 0

    def to_json(self) -> JSONObject:
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


@dataclass
class Error:
    """An OpenAI error: sent as the HTTP answer (when scripted) or in-band (as `mid_stream_error`).

    `type` defaults by status (`invalid_request_error`, `rate_limit_exceeded`, `server_error`);
    `retry_after` sets the `retry-after` header in seconds. `body`, when given, is sent as it is
    instead of the error object (a provider's own error shape). Note that the `openai` SDK retries 429
    and 5xx by itself unless `max_retries=0`; each retry consumes the next scripted reply.
    """

    status: int
    message: str = "fake upstream error"
    type: str | None = None
    code: str | None = None
    param: str | None = None
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: JSONObject | None = None

    def to_json(self) -> JSONObject:
        if self.body is not None:
            return self.body
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    @property
    def error_type(self) -> str:
        if self.type is not None:
            return self.type
        if self.status == 429:
            return "rate_limit_exceeded"
        return "server_error" if self.status >= 500 else "invalid_request_error"


@dataclass(kw_only=True)
class Reply:
    """Base of the reply kinds; its fields are the modifiers every kind accepts (keyword-only).

    Stream shape: a role chunk, the kind's content chunks, a finish chunk, then (only when the
    request set `stream_options.include_usage`) a usage chunk with `choices: []`, then `[DONE]`.

    - `usage`, `model` (answered model; default: the request's), `finish_reason` (override).
    - `cut_after=K`: send only the first K chunks, then end the body without finish chunk or
      `[DONE]`. With `abort=True` the TCP connection drops instead (incomplete chunked body).
    - `mid_stream_error=Error(...)`: an in-band `data: {"error": ...}` record after K chunks
      (`cut_after`; default: right before the finish chunk), HTTP 200 already sent; no `[DONE]`.
    - `first_byte_delay` (before the status line), `delay_between_chunks` (between writes).
    - `sse_comments`: `: OPENROUTER PROCESSING` before every record. `crlf`: CRLF line endings.
    - `split_bytes=N`: write the byte stream in N-byte pieces, cutting records and UTF-8
      characters. Each piece is its own write; the receiving socket may still merge them, so add
      `delay_between_chunks` when a test needs the pieces to arrive apart.

    Only `usage`, `model`, `finish_reason` and `first_byte_delay` apply to non-streamed answers.
    """

    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    finish_reason: str | None = None
    cut_after: int | None = None
    abort: bool = False
    mid_stream_error: Error | None = None
    first_byte_delay: float = 0.0
    delay_between_chunks: float = 0.0
    sse_comments: bool = False
    crlf: bool = False
    split_bytes: int | None = None

    natural_finish_reason: ClassVar[str] = "stop"

    def stream_deltas(self) -> list[JSONObject]:
        """Every delta before the finish chunk, the role chunk first."""
        return [_role_delta(content=""), *self.body_deltas()]

    def body_deltas(self) -> list[JSONObject]:
        """The content deltas, without the role chunk."""
        raise NotImplementedError

    def message(self) -> JSONObject:
        """The non-streamed `choices[0].message`."""
        raise NotImplementedError

    def reason(self) -> str:
        return self.finish_reason or self.natural_finish_reason


def _role_delta(*, content: str | None) -> JSONObject:
    return {"role": "assistant", "content": content, "refusal": None}


def _assistant_message(content: str | None) -> JSONObject:
    return {"role": "assistant", "content": content, "refusal": None, "annotations": []}


@dataclass
class Text(Reply):
    """Answer text; `chunks` are the content deltas as sent (default: the whole text at once)."""

    text: str = ""
    chunks: list[str] | None = None

    def __post_init__(self) -> None:
        if self.chunks is None:
            self.chunks = [self.text] if self.text else []
        elif not self.text:
            self.text = "".join(self.chunks)
        elif "".join(self.chunks) != self.text:
            raise ValueError(f"chunks {self.chunks!r} do not join to text {self.text!r}")

    def body_deltas(self) -> list[JSONObject]:
        return [{"content": piece} for piece in self.chunks or []]

    def message(self) -> JSONObject:
        return _assistant_message(self.text)


@dataclass
class Call:
    """One function call. `arguments` is the JSON text sent (a dict is encoded for you);
    `id` defaults to a fresh `call_…` id, readable right after construction."""

    name: str
    arguments: str | JSONObject = "{}"
    id: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.arguments, str):
            self.arguments = orjson.dumps(self.arguments).decode()
        if not self.id:
            self.id = _new_id("call_", 24)

    @property
    def arguments_text(self) -> str:
        assert isinstance(self.arguments, str)
        return self.arguments

    def to_json(self) -> JSONObject:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments_text},
        }


@dataclass
class ToolCalls(Reply):
    """Function calls (several = parallel calls with index 0, 1, ...), optionally after some text.

    Reference behaviour: a head fragment per call (`index`, `id`, `type`, `name`, `arguments: ""`)
    then `split` argument fragments, call 0 entirely before call 1. Without `text_before` the role
    rides on the first tool chunk with `content: null`, as OpenAI sends it. Provider quirks:
    `omit_index` (no `index` key), `repeat_id` (`id` and `type` on every fragment),
    `name_after_arguments` (the name arrives in a last fragment), `whole_call_in_one_chunk`, and
    `interleave` (fragments of the calls alternate).
    """

    calls: list[Call] = field(default_factory=list)
    split: int = 1
    text_before: str | None = None
    omit_index: bool = False
    repeat_id: bool = False
    name_after_arguments: bool = False
    whole_call_in_one_chunk: bool = False
    interleave: bool = False

    natural_finish_reason: ClassVar[str] = "tool_calls"

    def __post_init__(self) -> None:
        if not self.calls:
            raise ValueError("ToolCalls needs at least one Call")

    def stream_deltas(self) -> list[JSONObject]:
        if self.text_before:
            return super().stream_deltas()
        first, *rest = self.body_deltas()
        return [{**_role_delta(content=None), **first}, *rest]

    def body_deltas(self) -> list[JSONObject]:
        per_call = [self._fragments(index, call) for index, call in enumerate(self.calls)]
        ordered = _round_robin(per_call) if self.interleave else [f for frags in per_call for f in frags]
        text = [{"content": self.text_before}] if self.text_before else []
        return text + [{"tool_calls": [fragment]} for fragment in ordered]

    def message(self) -> JSONObject:
        return {**_assistant_message(self.text_before), "tool_calls": [call.to_json() for call in self.calls]}

    def _fragments(self, index: int, call: Call) -> list[JSONObject]:
        if self.whole_call_in_one_chunk:
            fragments = [{"index": index, **call.to_json()}]
        else:
            head_function = (
                {"arguments": ""} if self.name_after_arguments else {"name": call.name, "arguments": ""}
            )
            head = {"index": index, "id": call.id, "type": "function", "function": head_function}
            pieces = _split_text(call.arguments_text, self.split)
            fragments = [head, *({"index": index, "function": {"arguments": piece}} for piece in pieces)]
            if self.name_after_arguments:
                fragments.append({"index": index, "function": {"name": call.name}})
        if self.repeat_id:
            fragments = [{"index": index, "id": call.id, "type": "function", **f} for f in fragments]
        if self.omit_index:
            fragments = [{k: v for k, v in f.items() if k != "index"} for f in fragments]
        return fragments


@dataclass
class Reasoning(Reply):
    """Reasoning text first (DeepSeek-style `delta.reasoning_content`, `content: null`), then `then`.

    `field` names the wire key (`reasoning_content`, or `reasoning` for OpenRouter/Groq/Ollama).
    The finish reason and content come from `then`; the modifiers of `then` are ignored.
    """

    text: str = ""
    then: Text | ToolCalls | None = None
    chunks: list[str] | None = None
    field: str = "reasoning_content"

    def __post_init__(self) -> None:
        if self.chunks is None:
            self.chunks = [self.text] if self.text else []
        elif not self.text:
            self.text = "".join(self.chunks)

    def body_deltas(self) -> list[JSONObject]:
        thinking = [{self.field: piece, "content": None} for piece in self.chunks or []]
        return thinking + (self.then.body_deltas() if self.then else [])

    def message(self) -> JSONObject:
        answer = self.then.message() if self.then else _assistant_message(None)
        return {**answer, self.field: self.text}

    def reason(self) -> str:
        return self.finish_reason or (self.then.reason() if self.then else "stop")


_DETAIL_TEXT = {"reasoning.text": "text", "reasoning.summary": "summary"}


@dataclass
class ReasoningDetails(Reply):
    """OpenRouter's structured reasoning (`reasoning_details`), then `then`.

    Each detail is as OpenRouter returns it: `reasoning.text` (`text`, maybe `signature`),
    `reasoning.summary` (`summary`) or `reasoning.encrypted` (`data`), with `format`, `index` and
    maybe `id`. A whole answer lists them as given, with `reasoning` holding their text. A stream
    sends a text or summary detail as a fragment with its text (mirrored in `delta.reasoning`), then
    its signature in a fragment of its own, and an encrypted detail whole, in the order given.
    """

    details: list[JSONObject] = field(default_factory=list)
    then: Text | ToolCalls | None = None

    def body_deltas(self) -> list[JSONObject]:
        deltas: list[JSONObject] = []
        for detail in self.details:
            key = _DETAIL_TEXT.get(str(detail.get("type")))
            if key is None:
                deltas.append({"content": None, "reasoning": None, "reasoning_details": [detail]})
                continue
            head = {k: v for k, v in detail.items() if k != "signature"}
            deltas.append({"content": None, "reasoning": detail.get(key, ""), "reasoning_details": [head]})
            if detail.get("signature"):
                tail = {**detail, key: ""}
                deltas.append({"content": None, "reasoning": "", "reasoning_details": [tail]})
        return deltas + (self.then.body_deltas() if self.then else [])

    def message(self) -> JSONObject:
        answer = self.then.message() if self.then else _assistant_message(None)
        text = "".join(str(d.get(_DETAIL_TEXT.get(str(d.get("type")), ""), "")) for d in self.details
                       if d.get("type") in _DETAIL_TEXT)
        return {**answer, "reasoning": text, "reasoning_details": self.details}

    def reason(self) -> str:
        return self.finish_reason or (self.then.reason() if self.then else "stop")


@dataclass
class Chunks(Reply):
    """A raw stream, for shapes the other kinds do not make.

    A dict item is sent as `data: <json>` as it is (build it with `chunk()` if useful), a str item
    as one record's text (`": comment"`, `"data: [DONE]"`, `"event: x\\ndata: {}"`), bytes verbatim
    with no separator added. `done` appends `data: [DONE]`. Non-streamed requests get a 500.
    """

    items: list[JSONObject | str | bytes] = field(default_factory=list)
    done: bool = True


Scripted: TypeAlias = Reply | Error
"""What a test can queue or a responder can return."""

DialectCheck: TypeAlias = Callable[[JSONObject], Error | None]
"""A provider's own request rule: the error it answers for a body that breaks it, else None."""


@dataclass(frozen=True)
class Dialect:
    """How one OpenAI-compatible provider differs from OpenAI on the wire, as far as the fake speaks it.

    - `model`: a model the provider serves (what tests and rule cases ask for by default).
    - `allow_extra`: request key patterns beyond the openai SDK types that the provider takes.
    - `checks`: the provider's own request rules, run after OpenAI's; the first failure is answered.
    - `usage`: how it renders `Usage` (default: OpenAI's `usage`).
    - `error_body`: how its error bodies look (default: OpenAI's `{"error": {...}}`).
    - `sse_comments`: an SSE comment line before every stream record (OpenRouter's keep-alives).
    - `omit_tool_call_index`: streamed tool-call fragments carry no `index` (Ollama).
    """

    name: str
    model: str
    allow_extra: frozenset[str] = frozenset()
    checks: tuple[DialectCheck, ...] = ()
    usage: Callable[[Usage], JSONObject] | None = None
    error_body: Callable[[Error], JSONObject] | None = None
    sse_comments: bool = False
    omit_tool_call_index: bool = False

    def usage_json(self, usage: Usage) -> JSONObject:
        return self.usage(usage) if self.usage is not None else usage.to_json()

    def error_json(self, error: Error) -> JSONObject:
        if self.error_body is None or error.body is not None:
            return error.to_json()
        return self.error_body(error)

    def check(self, body: JSONObject) -> Error | None:
        for rule in self.checks:
            error = rule(body)
            if error is not None:
                return error
        return None


OPENAI = Dialect("openai", "gpt-4.1")
"""OpenAI itself: the reference every other dialect differs from."""


def _split_text(text: str, parts: int) -> list[str]:
    """`parts` non-empty pieces of nearly equal length (fewer if the text is shorter)."""
    parts = max(1, min(parts, len(text)))
    size, extra = divmod(len(text), parts)
    pieces, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return [piece for piece in pieces if piece]


def _round_robin(lists: list[list[JSONObject]]) -> list[JSONObject]:
    iterators = [iter(items) for items in lists]
    ordered: list[JSONObject] = []
    while iterators:
        for it in list(iterators):
            item = next(it, None)
            if item is None:
                iterators.remove(it)
            else:
                ordered.append(item)
    return ordered


# ---------------------------------------------------------------------------------------------
# Rendering: replies to wire bytes and bodies
# ---------------------------------------------------------------------------------------------


def chunk(
    delta: JSONObject | None = None,
    finish_reason: str | None = None,
    *,
    id: str = "chatcmpl-fake",
    model: str = "gpt-4.1",
    created: int = 1767225600,
    usage: Literal["absent"] | JSONObject | None = "absent",
) -> JSONObject:
    """One `chat.completion.chunk` as OpenAI shapes it; `usage="absent"` leaves the key out
    (a stream without `include_usage`), `None` sends `"usage": null`."""
    body: JSONObject = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage != "absent":
        body["usage"] = usage
    return body


def _stream_chunks(reply: Reply, request: JSONObject,
                   dialect: Dialect) -> tuple[list[JSONObject | str | bytes], int, bool]:
    """(records, default cut point for a mid-stream error, whether `[DONE]` follows)."""
    if isinstance(reply, Chunks):
        return list(reply.items), len(reply.items), reply.done
    stream_options = request.get("stream_options") or {}
    include_usage = stream_options.get("include_usage") is True
    envelope: JSONObject = {
        "id": _new_id("chatcmpl-", 29),
        "model": reply.model or request.get("model", ""),
        "created": int(time.time()),
        "usage": None if include_usage else "absent",
    }
    deltas = reply.stream_deltas()
    if dialect.omit_tool_call_index:
        deltas = [_without_call_index(d) for d in deltas]
    records: list[JSONObject | str | bytes] = [chunk(d, **envelope) for d in deltas]
    records.append(chunk({}, reply.reason(), **envelope))
    if include_usage:
        usage_chunk = chunk(**{**envelope, "usage": dialect.usage_json(reply.usage)})
        usage_chunk["choices"] = []
        records.append(usage_chunk)
    return records, len(deltas), True


def _without_call_index(delta: JSONObject) -> JSONObject:
    calls = delta.get("tool_calls")
    if not calls:
        return delta
    return {**delta, "tool_calls": [{k: v for k, v in call.items() if k != "index"} for call in calls]}


def encode_stream(reply: Reply, request: JSONObject, dialect: Dialect = OPENAI) -> list[bytes]:
    """The writes that answer a streaming `request` with `reply` in `dialect`, modifiers applied."""
    records, error_cut, done = _stream_chunks(reply, request, dialect)
    cut = reply.cut_after
    if reply.mid_stream_error is not None:
        cut = error_cut if cut is None else cut
    if cut is not None:
        records = records[:cut]
    if reply.mid_stream_error is not None:
        records.append(reply.mid_stream_error.to_json())
    elif done and cut is None:
        records.append("data: [DONE]")

    separator = b"\r\n\r\n" if reply.crlf else b"\n\n"
    writes: list[bytes] = []
    for record in records:
        if reply.sse_comments or dialect.sse_comments:
            writes.append(OPENROUTER_COMMENT + separator)
        writes.append(_encode_record(record, separator, crlf=reply.crlf))
    if reply.split_bytes:
        data, size = b"".join(writes), reply.split_bytes
        writes = [data[i : i + size] for i in range(0, len(data), size)]
    return writes


def _encode_record(record: JSONObject | str | bytes, separator: bytes, *, crlf: bool) -> bytes:
    if isinstance(record, bytes):
        return record
    if isinstance(record, str):
        text = record.replace("\n", "\r\n") if crlf else record
        return text.encode() + separator
    return b"data: " + orjson.dumps(record) + separator


def completion_body(reply: Reply, request: JSONObject, dialect: Dialect = OPENAI) -> JSONObject:
    """The `chat.completion` body that answers a non-streaming `request` with `reply` in `dialect`."""
    return {
        "id": _new_id("chatcmpl-", 29),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model or request.get("model", ""),
        "choices": [
            {"index": 0, "message": reply.message(), "logprobs": None, "finish_reason": reply.reason()}
        ],
        "usage": dialect.usage_json(reply.usage),
    }


# ---------------------------------------------------------------------------------------------
# Validation layer 1: protocol rules (section 2.3 of protocols.md)
# ---------------------------------------------------------------------------------------------


def validate_chat_request(body: Any) -> list[str]:
    """Problems OpenAI would answer 400 for, each as `path: message`; empty when the body is fine."""
    if not isinstance(body, dict):
        return ["body: expected a JSON object"]
    problems: list[str] = []
    if not isinstance(body.get("model"), str) or not body["model"]:
        problems.append("model: required, a non-empty string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        problems.append("messages: required, a non-empty array")
    else:
        for i, message in enumerate(messages):
            problems += _message_shape_problems(f"messages[{i}]", message)
        problems += _tool_order_problems(messages)
    problems += _tools_problems(body)
    if body.get("stream_options") is not None and body.get("stream") is not True:
        problems.append("stream_options: only allowed when 'stream' is true")
    return problems


def _message_shape_problems(path: str, message: Any) -> list[str]:
    if not isinstance(message, dict):
        return [f"{path}: expected an object"]
    role = message.get("role")
    if role not in ROLES:
        return [f"{path}.role: {role!r} is not one of {list(ROLES)}"]
    content = message.get("content")
    if role in ("system", "developer", "tool"):
        problems = _content_problems(f"{path}.content", content, {"text": "text"}, required=True)
        if role == "tool" and (
            not isinstance(message.get("tool_call_id"), str) or not message["tool_call_id"]
        ):
            problems.append(f"{path}.tool_call_id: required for role 'tool'")
        return problems
    if role == "user":
        return _content_problems(f"{path}.content", content, USER_PART_TYPES, required=True)
    problems = _content_problems(
        f"{path}.content", content, {"text": "text", "refusal": "refusal"}, required=False
    )
    tool_calls = message.get("tool_calls")
    if tool_calls is None:
        if content is None:
            problems.append(f"{path}.content: required unless 'tool_calls' is given")
        return problems
    if not isinstance(tool_calls, list) or not tool_calls:
        return [*problems, f"{path}.tool_calls: expected a non-empty array"]
    for j, call in enumerate(tool_calls):
        problems += _tool_call_problems(f"{path}.tool_calls[{j}]", call)
    return problems


def _content_problems(path: str, content: Any, part_types: dict[str, str], *, required: bool) -> list[str]:
    """`part_types` maps each allowed part `type` to the key that must hold its payload."""
    if content is None:
        return [f"{path}: required"] if required else []
    if isinstance(content, str):
        return []
    if not isinstance(content, list) or not content:
        return [f"{path}: expected a string or a non-empty array of parts"]
    problems = []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in part_types:
            problems.append(f"{path}[{k}].type: {kind!r} is not one of {sorted(part_types)}")
        elif part_types[kind] not in part:
            problems.append(f"{path}[{k}].{part_types[kind]}: required for a {kind!r} part")
    return problems


def _tool_call_problems(path: str, call: Any) -> list[str]:
    if not isinstance(call, dict):
        return [f"{path}: expected an object"]
    problems = []
    if not isinstance(call.get("id"), str) or not call["id"]:
        problems.append(f"{path}.id: required, a non-empty string")
    if call.get("type") != "function":
        problems.append(f"{path}.type: must be 'function'")
    function = call.get("function")
    if not isinstance(function, dict):
        return [*problems, f"{path}.function: required, an object"]
    if not isinstance(function.get("name"), str) or not FUNCTION_NAME.match(function["name"]):
        problems.append(
            f"{path}.function.name: {function.get('name')!r} does not match {FUNCTION_NAME.pattern}"
        )
    if not isinstance(function.get("arguments"), str):
        problems.append(f"{path}.function.arguments: required, a string of JSON")
    return problems


def _tool_order_problems(messages: list[Any]) -> list[str]:
    """Tool messages answer the assistant message right before them, and answer all of its calls."""
    problems: list[str] = []
    issued_at, issued, unanswered = -1, set[str](), list[str]()
    in_tool_run = False
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not in_tool_run:
                problems.append(
                    f"messages[{i}]: messages with role 'tool' must be a response to a preceding "
                    "message with 'tool_calls'"
                )
            elif isinstance(call_id, str) and call_id not in issued:
                problems.append(
                    f"messages[{i}].tool_call_id: {call_id!r} matches no tool call of messages[{issued_at}]"
                )
            elif call_id in unanswered:
                unanswered.remove(call_id)
            continue
        problems += _unanswered_problem(issued_at, unanswered)
        calls = message.get("tool_calls") if role == "assistant" else None
        ids = [str(c.get("id")) for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
        in_tool_run = bool(ids)
        issued_at, issued, unanswered = i, set(ids), list(ids)
        if len(issued) != len(ids):
            problems.append(f"messages[{i}].tool_calls: duplicate tool call ids {ids}")
    return problems + _unanswered_problem(issued_at, unanswered)


def _unanswered_problem(index: int, unanswered: list[str]) -> list[str]:
    if not unanswered:
        return []
    return [
        f"messages[{index}]: an assistant message with 'tool_calls' must be followed by tool messages "
        f"responding to each 'tool_call_id'; these had none: {unanswered}"
    ]


def _tools_problems(body: JSONObject) -> list[str]:
    tools = body.get("tools")
    names: set[str] = set()
    problems: list[str] = []
    if tools is not None:
        if not isinstance(tools, list) or not tools:
            return ["tools: expected a non-empty array (leave the key out for no tools)"]
        for j, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
                problems.append(f"tools[{j}]: expected {{'type': 'function', 'function': {{...}}}}")
                continue
            name = function.get("name")
            if not isinstance(name, str) or not FUNCTION_NAME.match(name):
                problems.append(f"tools[{j}].function.name: {name!r} does not match {FUNCTION_NAME.pattern}")
            else:
                names.add(name)
            if "parameters" in function and not isinstance(function["parameters"], dict):
                problems.append(f"tools[{j}].function.parameters: expected a JSON Schema object")
    return problems + _tool_choice_problems(body.get("tool_choice"), names, has_tools=tools is not None)


def _tool_choice_problems(choice: Any, names: set[str], *, has_tools: bool) -> list[str]:
    if choice is None:
        return []
    if not has_tools:
        return ["tool_choice: only allowed when 'tools' are specified"]
    if isinstance(choice, str):
        return (
            [] if choice in ("none", "auto", "required") else [f"tool_choice: {choice!r} is not a valid mode"]
        )
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        return [] if name in names else [f"tool_choice.function.name: {name!r} is not one of the tools"]
    return []


# ---------------------------------------------------------------------------------------------
# Validation layer 2: the openai SDK's request TypedDicts, strictly (unknown keys included)
# ---------------------------------------------------------------------------------------------
# pydantic's TypeAdapter over these TypedDicts ignores unknown keys and validates `Iterable`
# fields lazily, so it misses exactly the mistakes a proxy makes. This walker is strict instead.


@dataclass(frozen=True)
class TypeProblem:
    """A place where the body leaves the SDK's request types, e.g. `messages[0].cache_control`."""

    path: str
    message: str

    @property
    def pattern(self) -> str:
        """The path with list indexes blanked, as `allow_extra` spells it: `messages[].cache_control`."""
        return re.sub(r"\[\d+\]", "[]", self.path)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def check_sdk_types(body: JSONObject) -> list[TypeProblem]:
    """Check a request body against `CompletionCreateParams{Streaming,NonStreaming}` of the SDK."""
    params = (
        completion_create_params.CompletionCreateParamsStreaming
        if body.get("stream") is True
        else completion_create_params.CompletionCreateParamsNonStreaming
    )
    return check_typed(body, params)


def check_typed(value: Any, tp: Any) -> list[TypeProblem]:
    """Where `value` (decoded JSON) leaves the SDK type `tp` (a TypedDict, union, list, ...): unknown
    keys, missing required keys, wrong shapes, path by path. Other fakes of OpenAI's wire formats
    (the Responses API's) check their bodies with it too."""
    problems: list[TypeProblem] = []
    _check_type(value, tp, "", problems)
    return problems


_LIST_ORIGINS = (list, abc.Iterable, abc.Sequence)
_DICT_ORIGINS = (dict, abc.Mapping)
_JSON_NAMES: dict[Any, str] = {
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}
_SCALARS: dict[Any, Callable[[Any], bool]] = {
    str: lambda v: isinstance(v, str),
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    type(None): lambda v: v is None,
}


@functools.cache
def _typed_dict_fields(tp: Any) -> tuple[dict[str, Any], frozenset[str]]:
    """(key → type, required keys). `__required_keys__` misses `Required[...]` written as a string
    annotation (the SDK modules use `from __future__ import annotations`), so read the wrappers."""
    hints = typing_extensions.get_type_hints(tp, include_extras=True)
    required = set()
    for key, hint in hints.items():
        origin: Any = typing_extensions.get_origin(hint)
        if origin is typing_extensions.Required or (
            key in tp.__required_keys__ and origin is not typing_extensions.NotRequired
        ):
            required.add(key)
    return hints, frozenset(required)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _unwrap(tp: Any) -> Any:
    while typing_extensions.get_origin(tp) in (typing_extensions.Required, typing_extensions.NotRequired):
        tp = typing_extensions.get_args(tp)[0]
    return tp


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _type_name(tp: Any) -> str:
    """The JSON name of a type (`string`, `array`, ...), or the TypedDict's name."""
    tp = _unwrap(tp)
    origin = typing_extensions.get_origin(tp)
    if typing_extensions.is_typeddict(tp):
        return str(tp.__name__)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing_extensions.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(member) for member in typing_extensions.get_args(tp))
    if tp in _LIST_ORIGINS or origin in _LIST_ORIGINS:
        return "array"
    if tp in _DICT_ORIGINS or origin in _DICT_ORIGINS:
        return "object"
    return _JSON_NAMES.get(tp, str(tp))


def _check_type(value: Any, tp: Any, path: str, out: list[TypeProblem]) -> None:
    tp = _unwrap(tp)
    origin = typing_extensions.get_origin(tp)
    args = typing_extensions.get_args(tp)
    if tp in (object, Any):
        return
    if tp in _SCALARS:
        if not _SCALARS[tp](value):
            out.append(TypeProblem(path, f"expected {_type_name(tp)}, got {_json_kind(value)}"))
    elif origin is typing.Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            out.append(TypeProblem(path, f"expected {_type_name(tp)}, got {value!r}"))
    elif origin in (typing.Union, types.UnionType):
        _check_union(value, args, path, out)
    elif typing_extensions.is_typeddict(tp):
        _check_typed_dict(value, tp, path, out)
    elif tp in _LIST_ORIGINS or origin in _LIST_ORIGINS:
        if not isinstance(value, list):
            out.append(TypeProblem(path, f"expected array, got {_json_kind(value)}"))
        elif args:
            for i, item in enumerate(value):
                _check_type(item, args[0], f"{path}[{i}]", out)
    elif tp in _DICT_ORIGINS or origin in _DICT_ORIGINS:
        if not isinstance(value, dict):
            out.append(TypeProblem(path, f"expected object, got {_json_kind(value)}"))
        elif len(args) == 2:
            for key, item in value.items():
                _check_type(item, args[1], _join(path, key), out)
    # Any other construct is accepted: a false alarm would be worse than a missed check.


def _check_typed_dict(value: Any, tp: Any, path: str, out: list[TypeProblem]) -> None:
    if not isinstance(value, dict):
        out.append(TypeProblem(path, f"expected {tp.__name__} (object), got {_json_kind(value)}"))
        return
    hints, required = _typed_dict_fields(tp)
    out.extend(
        TypeProblem(_join(path, k), f"missing, required by {tp.__name__}") for k in required - value.keys()
    )
    for key, item in value.items():
        if key in hints:
            _check_type(item, hints[key], _join(path, key), out)
        else:
            out.append(TypeProblem(_join(path, key), f"unknown key, not in {tp.__name__}"))


def _check_union(value: Any, members: tuple[Any, ...], path: str, out: list[TypeProblem]) -> None:
    """Accept if any member accepts; else report the closest plausible member's problems."""
    attempts: list[tuple[Any, list[TypeProblem]]] = []
    for member in members:
        found: list[TypeProblem] = []
        _check_type(value, member, path, found)
        if not found:
            return
        attempts.append((member, found))
    plausible = [(member, found) for member, found in attempts if _is_plausible(value, member)]
    if plausible:
        out.extend(min(plausible, key=lambda attempt: len(attempt[1]))[1])
    else:
        names = " | ".join(_type_name(member) for member in members)
        shown = value.get("type", value.get("role")) if isinstance(value, dict) else None
        detail = f"{_json_kind(value)} with {shown!r}" if shown else _json_kind(value)
        out.append(TypeProblem(path, f"expected {names}, got {detail}"))


def _is_plausible(value: Any, tp: Any) -> bool:
    """Whether `value` has the outer shape of `tp` and its discriminators (`role`, `type`) match."""
    tp = _unwrap(tp)
    origin = typing_extensions.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is_plausible(value, member) for member in typing_extensions.get_args(tp))
    if typing_extensions.is_typeddict(tp):
        if not isinstance(value, dict):
            return False
        hints, required = _typed_dict_fields(tp)
        literals = [(key, _unwrap(hints[key])) for key in required]
        return all(
            value.get(key) in typing_extensions.get_args(hint)
            for key, hint in literals
            if typing_extensions.get_origin(hint) is typing.Literal
        )
    if tp in _LIST_ORIGINS or origin in _LIST_ORIGINS:
        return isinstance(value, list)
    if tp in _DICT_ORIGINS or origin in _DICT_ORIGINS:
        return isinstance(value, dict)
    if origin is typing.Literal:
        return any(type(value) is type(a) for a in typing_extensions.get_args(tp))
    return tp not in _SCALARS or _SCALARS[tp](value)


# ---------------------------------------------------------------------------------------------
# The ASGI app
# ---------------------------------------------------------------------------------------------


class StreamAborted(Exception):
    """Raised inside the app to make the server drop the connection mid-body (`Reply.abort`)."""


@dataclass
class ReceivedRequest:
    """One request as the fake saw it. `problems` are protocol-rule violations, `type_problems`
    places where the body leaves the SDK types (kept even when they did not cause a 400)."""

    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any = None
    problems: list[str] = field(default_factory=list)
    type_problems: list[TypeProblem] = field(default_factory=list)
    status: int | None = None
    disconnected: bool = False


class FakeOpenAI:
    """The scripted upstream; see the module docstring. One instance may serve many requests,
    concurrently too (each takes the next scripted reply when it arrives).

    `api_key`: when set, other bearer tokens get a 401. `check_sdk_types=False` records type
    problems without rejecting the request (then `assert_valid_with_sdk_types()` checks them).
    `allow_extra`: path patterns exempt from the type check, e.g. `{"thinking",
    "messages[].reasoning_content"}` for a DeepSeek-style dialect (a `dialect` adds its own).
    `dialect`: the provider the fake speaks (`Dialect`; fakes/dialects.py has them all).
    """

    script: list[Scripted]
    default: Scripted | None
    responder: Callable[[JSONObject], Scripted] | None
    models: list[str]
    api_key: str | None
    check_sdk_types: bool
    allow_extra: set[str]
    dialect: Dialect
    requests: list[ReceivedRequest]

    def __init__(
        self,
        *script: Scripted,
        default: Scripted | None = None,
        responder: Callable[[JSONObject], Scripted] | None = None,
        models: Iterable[str] = DEFAULT_MODELS,
        api_key: str | None = None,
        check_sdk_types: bool = True,
        allow_extra: Collection[str] = (),
        dialect: Dialect = OPENAI,
    ) -> None:
        self._constructed = (
            list(script),
            default,
            responder,
            list(models),
            api_key,
            check_sdk_types,
            allow_extra,
        )
        self.dialect = dialect
        self.reset()

    def queue(self, *replies: Scripted) -> None:
        """Append replies to the script; each request consumes one."""
        self.script.extend(replies)

    def reset(self) -> None:
        """Back to the state right after construction (settings included), no requests recorded:
        for a fake shared between tests."""
        script, self.default, self.responder, models, self.api_key, self.check_sdk_types, allow = (
            self._constructed
        )
        self.script, self.models = list(script), list(models)
        self.allow_extra = set(allow) | self.dialect.allow_extra
        self.requests = []

    @property
    def last(self) -> ReceivedRequest:
        assert self.requests, "FakeOpenAI has received no request"
        return self.requests[-1]

    def assert_valid_with_sdk_types(self) -> None:
        """Fail listing every type problem of every chat request received so far."""
        found = [f"request {i}: {p}" for i, r in enumerate(self.requests) for p in r.type_problems]
        assert not found, "requests left the openai SDK types:\n" + "\n".join(found)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await is_http_request(scope, receive, send):
            return
        request = ReceivedRequest(
            method=scope["method"],
            path=scope["path"],
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            raw=await read_body(receive),
        )
        self.requests.append(request)
        if scope["path"] not in (CHAT_PATH, MODELS_PATH):
            await self._send_error(send, request, Error(404, f"Unknown request URL: {scope['path']}"))
        elif not self._is_authorized(request):
            await self._send_error(send, request, Error(401, "Incorrect API key provided", code="invalid_api_key"))
        elif scope["path"] == MODELS_PATH:
            await self._answer_models(send, request)
        elif request.method != "POST":
            await self._send_error(send, request, Error(405, "Method not allowed"))
        else:
            await self._answer_chat(receive, send, request)

    def _is_authorized(self, request: ReceivedRequest) -> bool:
        return self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}"

    async def _answer_models(self, send: Send, request: ReceivedRequest) -> None:
        data = [{"id": m, "object": "model", "created": 1767225600, "owned_by": "fake"} for m in self.models]
        await send_json(send, request, 200, {"object": "list", "data": data}, content_type=JSON_TYPE)

    async def _answer_chat(self, receive: Receive, send: Send, request: ReceivedRequest) -> None:
        try:
            request.body = orjson.loads(request.raw)
        except orjson.JSONDecodeError:
            await self._send_error(send, request, Error(400, "We could not parse the JSON body of your request."))
            return
        request.problems = validate_chat_request(request.body)
        if isinstance(request.body, dict):
            found = check_sdk_types(request.body)
            request.type_problems = [p for p in found if p.pattern not in self.allow_extra]
        rejected = request.problems
        if not rejected and self.check_sdk_types:
            rejected = [str(problem) for problem in request.type_problems]
        if rejected:
            error = Error(400, "Invalid request: " + "; ".join(rejected), param=rejected[0].split(":")[0])
            await self._send_error(send, request, error)
            return
        refused = self.dialect.check(request.body)
        if refused is not None:
            request.problems.append(f"{self.dialect.name}: {refused.message}")
            await self._send_error(send, request, refused)
            return
        reply = self._next_reply(request.body)
        if isinstance(reply, Error):
            await self._send_error(send, request, reply)
        elif request.body.get("stream") is True:
            await _send_stream(receive, send, request, reply, self.dialect)
        elif isinstance(reply, Chunks):
            await self._send_error(send, request, Error(500, "FakeOpenAI: a Chunks reply needs a streaming request"))
        else:
            await asyncio.sleep(reply.first_byte_delay)
            body = completion_body(reply, request.body, self.dialect)
            await send_json(send, request, 200, body, content_type=JSON_TYPE)

    async def _send_error(self, send: Send, request: ReceivedRequest, error: Error) -> None:
        headers = dict(error.headers)
        if error.retry_after is not None:
            headers["retry-after"] = f"{error.retry_after:g}"
        await send_json(send, request, error.status, self.dialect.error_json(error), content_type=JSON_TYPE,
                        headers=headers.items())

    def _next_reply(self, body: JSONObject) -> Scripted:
        if self.script:
            return self.script.pop(0)
        if self.responder is not None:
            return self.responder(body)
        if self.default is not None:
            return self.default
        return Error(500, "FakeOpenAI: no scripted reply left (queue one, or set default or responder)")


async def _send_stream(receive: Receive, send: Send, request: ReceivedRequest, reply: Reply,
                       dialect: Dialect) -> None:
    abort = StreamAborted("FakeOpenAI dropped the connection on purpose (Reply.abort)") if reply.abort else None
    await send_stream(receive, send, request, encode_stream(reply, request.body, dialect), content_type=SSE_TYPE,
                      first_byte_delay=reply.first_byte_delay, delay_between_chunks=reply.delay_between_chunks,
                      abort=abort)
