"""A fake Gemini API upstream (generativelanguage.googleapis.com, v1beta): real wire format, scripted.

`FakeGemini` is a plain ASGI app. Serve it with `serve_app` (fakes/server.py) and point the code
under test at `f"{base_url}/v1beta"`. It answers

* ``POST /v1beta/models/{model}:generateContent`` with one `GenerateContentResponse` body, and
* ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` with ``data: <chunk>`` records and
  no end marker: the stream ends when the body does, as Gemini's does,

after checking the request the way Gemini does, and then some (each problem answers 400 with a
Google error body, so proxy tests fail loudly):

* the key must come in the ``x-goog-api-key`` header; a ``key`` query parameter is refused (our
  policy: keys in URLs end up in logs), a wrong key is ``API_KEY_INVALID``;
* the body must validate against the google-genai SDK's own pydantic types (`types.Content`,
  `types.Tool`, `types.ToolConfig`, `types.GenerationConfig`, ...: REST camelCase, unknown keys
  forbidden, `thoughtSignature` valid base64), see `check_sdk_types`;
* and the protocol rules those types cannot express (`validate_request`): the JSON-Schema keywords
  the API rejects in `functionDeclarations[].parameters`, `parameters` and `parametersJsonSchema`
  together, function names, a function-call turn that does not follow a user or function-response
  turn, a function-response turn whose parts do not answer the calls before it one for one, a
  missing `thoughtSignature` on the first call of a step for gemini-3 models, a signature the fake
  never issued (other than Google's documented dummy), consecutive turns of one role, empty parts.

Replies are scripted like `FakeOpenAI`'s: `queue(...)` them, or set `responder(body)` or `default`:

    fake = FakeGemini(api_key="k")
    fake.queue(Thoughts(["Plan."], then=Calls([Call("get_weather", {"city": "Oslo"})])))
    fake.queue(Text(chunks=["It ", "snows."], usage=Usage(prompt=900, candidates=4, cached=512)))

`Calls` puts a fresh thoughtSignature on the first call of the step, as Gemini 3 does; the fake
remembers every signature it issued (`issued_signatures`) and accepts only those back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias
from urllib.parse import parse_qs

import orjson
import pydantic
from google.genai import types

from .asgi import is_http_request, read_body, send_json, send_stream
from .server import Receive, Scope, Send

__all__ = [
    "DUMMY_SIGNATURE",
    "Blocked",
    "Call",
    "Calls",
    "Chunks",
    "Error",
    "FakeGemini",
    "GeminiRequest",
    "Reply",
    "Scripted",
    "StreamAborted",
    "Text",
    "Thoughts",
    "Usage",
    "camel_case",
    "check_sdk_types",
    "new_signature",
    "validate_request",
]

JSONObject: TypeAlias = dict[str, Any]

API_PREFIX = "/v1beta"
CALL_PATH = re.compile(r"^/v1beta/models/(?P<model>[A-Za-z0-9._-]+):(?P<method>generateContent|streamGenerateContent)$")
MODELS_PATH = "/v1beta/models"
JSON_TYPE = "application/json; charset=UTF-8"
SSE_TYPE = "text/event-stream"
DEFAULT_MODELS = ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-3-pro-preview")
FUNCTION_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}$")
DUMMY_SIGNATURE = "skip_thought_signature_validator"
"""The value Google documents for a function call whose real signature is unknown."""

#: HTTP status → google.rpc status name.
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}

BODY_KEYS = {"contents": None, "systemInstruction": types.Content, "tools": types.Tool,
             "toolConfig": types.ToolConfig, "generationConfig": types.GenerationConfig,
             "safetySettings": types.SafetySetting, "cachedContent": None}
"""The generateContent body's fields and the SDK type of each (of each item, for lists)."""

PART_DATA = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
             "codeExecutionResult")

#: JSON-Schema keywords the Gemini API rejects in `parameters` (protocols.md 3.6), including the ones
#: the SDK's `Schema` type declares for Vertex (additionalProperties, defs, ref) but the API refuses.
REJECTED_SCHEMA_KEYS = frozenset({
    "$schema", "$id", "$comment", "$ref", "ref", "$defs", "defs", "definitions", "additionalProperties",
    "exclusiveMinimum", "exclusiveMaximum", "const", "propertyNames", "uniqueItems", "contains",
    "multipleOf", "unevaluatedProperties", "unevaluatedItems", "contentSchema", "patternProperties",
    "dependentSchemas", "if", "then", "else", "not", "allOf", "oneOf", "examples",
})
STRING_FORMATS = frozenset({"enum", "date-time"})
NAME_MAPS = frozenset({"properties"})
THINKING_MODELS = re.compile(r"^gemini-(2\.5|3|[4-9])")
"""Models that take a thinkingConfig (gemini-2.0 and older answer 400)."""
SIGNED_MODELS = re.compile(r"^gemini-([3-9])")
"""Models that reject a step whose first function call lacks its thoughtSignature."""

_ID_ALPHABET = string.ascii_lowercase + string.digits
_SNAKE = re.compile(r"_([a-z0-9])")


def new_signature() -> str:
    """A thoughtSignature as Gemini sends it: standard base64 of opaque bytes."""
    return base64.b64encode(os.urandom(48)).decode("ascii")


# ---------------------------------------------------------------------------------------------
# Replies: what a test scripts
# ---------------------------------------------------------------------------------------------


@dataclass
class Usage:
    """Token counts, rendered as Gemini `usageMetadata` (prompt includes cached; candidates excludes
    thoughts)."""

    prompt: int = 12
    candidates: int = 5
    thoughts: int = 0
    cached: int = 0
    tool_use_prompt: int = 0

    def to_json(self, *, final: bool = True) -> JSONObject:
        """Streams report the prompt from the first chunk and the output counts once known."""
        body: JSONObject = {"promptTokenCount": self.prompt}
        total = self.prompt + self.tool_use_prompt
        if final:
            body["candidatesTokenCount"] = self.candidates
            total += self.candidates + self.thoughts
            if self.thoughts:
                body["thoughtsTokenCount"] = self.thoughts
        if self.cached:
            body["cachedContentTokenCount"] = self.cached
        if self.tool_use_prompt:
            body["toolUsePromptTokenCount"] = self.tool_use_prompt
        body["totalTokenCount"] = total
        body["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": self.prompt}]
        return body


@dataclass
class Error:
    """A Google error (`google.rpc.Status`): the HTTP answer when scripted, or an in-band record as
    `mid_stream_error`. `status_name` defaults by status (429 RESOURCE_EXHAUSTED, ...); `reason` adds
    an ErrorInfo detail (`API_KEY_INVALID`); `retry_after` sets the header, in seconds. A `body`
    replaces the whole JSON (e.g. a bare one without status)."""

    status: int
    message: str = "fake upstream error"
    status_name: str | None = None
    reason: str | None = None
    retry_after: float | None = None
    body: JSONObject | None = None

    def to_json(self) -> JSONObject:
        if self.body is not None:
            return self.body
        error: JSONObject = {"code": self.status, "message": self.message,
                             "status": self.status_name or STATUS_NAMES.get(self.status, "UNKNOWN")}
        if self.reason:
            error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": self.reason,
                                 "domain": "googleapis.com"}]
        return {"error": error}


@dataclass(kw_only=True)
class Reply:
    """Base of the reply kinds; its fields are the modifiers every kind accepts (keyword-only).

    A stream sends each part in its own chunk (text and thoughts in their `chunks`), every chunk with
    `usageMetadata` (the prompt count; the final counts on the last), the finish reason on the last.

    - `usage`, `model_version` (default: the requested model), `finish_reason` (override, e.g.
      MAX_TOKENS), `finish_message` (Gemini's explanation beside it).
    - `cut_after=K`: send only the first K chunks, then end the body (no finish reason). With
      `abort=True` the TCP connection drops instead.
    - `mid_stream_error=Error(...)`: an in-band ``{"error": ...}`` record after K chunks (`cut_after`;
      default: before the last chunk); `error_without_data=True` sends it without ``data:``.
    - `first_byte_delay`, `delay_between_chunks`, `crlf` (CRLF line endings), `split_bytes=N`.
    """

    usage: Usage = field(default_factory=Usage)
    model_version: str | None = None
    finish_reason: str | None = None
    finish_message: str | None = None
    cut_after: int | None = None
    abort: bool = False
    mid_stream_error: Error | None = None
    error_without_data: bool = False
    first_byte_delay: float = 0.0
    delay_between_chunks: float = 0.0
    crlf: bool = False
    split_bytes: int | None = None

    natural_finish_reason: ClassVar[str] = "STOP"

    def stream_parts(self, request: JSONObject) -> list[JSONObject]:
        """The parts, one per chunk."""
        raise NotImplementedError

    def parts(self, request: JSONObject) -> list[JSONObject]:
        """The parts of the whole answer: adjacent text (and thought) slices joined, as Gemini does."""
        joined: list[JSONObject] = []
        for part in self.stream_parts(request):
            last = joined[-1] if joined else None
            if (last is not None and "text" in part and set(last) <= {"text", "thought"}
                    and set(part) <= {"text", "thought", "thoughtSignature"}
                    and last.get("thought") == part.get("thought")):
                joined[-1] = {**part, "text": last["text"] + part["text"]}
            else:
                joined.append(part)
        return joined

    def reason(self) -> str:
        return self.finish_reason or self.natural_finish_reason


@dataclass
class Text(Reply):
    """Answer text; `chunks` are the slices as streamed (default: the whole text at once). No text
    at all makes a candidate without content (what MALFORMED_FUNCTION_CALL or SAFETY look like)."""

    text: str = ""
    chunks: list[str] | None = None

    def __post_init__(self) -> None:
        if self.chunks is None:
            self.chunks = [self.text] if self.text else []
        elif not self.text:
            self.text = "".join(self.chunks)
        elif "".join(self.chunks) != self.text:
            raise ValueError(f"chunks {self.chunks!r} do not join to text {self.text!r}")

    def stream_parts(self, request: JSONObject) -> list[JSONObject]:
        return [{"text": piece} for piece in self.chunks or []]


@dataclass
class Call:
    """One function call. `id` is sent only when given (the Developer API long sent none)."""

    name: str
    args: JSONObject = field(default_factory=dict)
    id: str | None = None

    def to_json(self) -> JSONObject:
        call: JSONObject = {"name": self.name, "args": self.args}
        if self.id is not None:
            call["id"] = self.id
        return call


_AUTO = "auto"


@dataclass
class Calls(Reply):
    """One step of function calls (several = parallel), optionally after some text. The first call
    carries `signature` (default: a fresh one, readable after construction; None: no signature)."""

    calls: list[Call] = field(default_factory=list)
    text_before: str | None = None
    signature: str | None = _AUTO

    def __post_init__(self) -> None:
        if not self.calls:
            raise ValueError("Calls needs at least one Call")
        if self.signature == _AUTO:
            self.signature = new_signature()

    def stream_parts(self, request: JSONObject) -> list[JSONObject]:
        parts: list[JSONObject] = [{"text": self.text_before}] if self.text_before else []
        for index, call in enumerate(self.calls):
            part: JSONObject = {"functionCall": call.to_json()}
            if index == 0 and self.signature:
                part["thoughtSignature"] = self.signature
            parts.append(part)
        return parts


@dataclass
class Thoughts(Reply):
    """Thought parts (`thought: true`), then `then`. Gemini returns thought text only when the
    request asked for it (`thinkingConfig.includeThoughts`); `signature` rides on the last thought
    part when there is one. Finish reason and usage come from this reply, content from `then`."""

    chunks: list[str] = field(default_factory=list)
    then: Reply | None = None
    signature: str | None = None

    def stream_parts(self, request: JSONObject) -> list[JSONObject]:
        thoughts: list[JSONObject] = []
        if _includes_thoughts(request):
            thoughts = [{"text": piece, "thought": True} for piece in self.chunks]
            if thoughts and self.signature:
                thoughts[-1]["thoughtSignature"] = self.signature
        return thoughts + (self.then.stream_parts(request) if self.then else [])

    def reason(self) -> str:
        return self.finish_reason or (self.then.reason() if self.then else "STOP")


@dataclass
class Blocked(Reply):
    """The prompt itself was blocked: `promptFeedback.blockReason`, no candidates."""

    block_reason: str = "SAFETY"

    def stream_parts(self, request: JSONObject) -> list[JSONObject]:
        return []


@dataclass
class Chunks(Reply):
    """A raw stream: a dict item is sent as ``data: <json>``, a str item as one record's text, bytes
    verbatim. Non-streamed requests get a 500."""

    items: list[JSONObject | str | bytes] = field(default_factory=list)

    def stream_parts(self, request: JSONObject) -> list[JSONObject]:
        return []


Scripted: TypeAlias = Reply | Error
"""What a test can queue or a responder can return."""


def _includes_thoughts(request: JSONObject) -> bool:
    thinking = (camel_case(request).get("generationConfig") or {}).get("thinkingConfig") or {}
    return thinking.get("includeThoughts") is True


# ---------------------------------------------------------------------------------------------
# Rendering: replies to wire bytes and bodies
# ---------------------------------------------------------------------------------------------


def _response(reply: Reply, model: str, response_id: str, parts: list[JSONObject] | None, *,
              finish: bool, usage: JSONObject) -> JSONObject:
    body: JSONObject = {}
    if isinstance(reply, Blocked):
        body["promptFeedback"] = {"blockReason": reply.block_reason, "safetyRatings": []}
    else:
        candidate: JSONObject = {}
        if parts:
            candidate["content"] = {"role": "model", "parts": parts}
        if finish:
            candidate["finishReason"] = reply.reason()
            if reply.finish_message:
                candidate["finishMessage"] = reply.finish_message
        candidate["index"] = 0
        body["candidates"] = [candidate]
    body["usageMetadata"] = usage
    body["modelVersion"] = reply.model_version or model
    body["responseId"] = response_id
    return body


def response_body(reply: Reply, request: JSONObject, model: str) -> JSONObject:
    """The `GenerateContentResponse` that answers a non-streaming request with `reply`."""
    return _response(reply, model, _response_id(), reply.parts(request), finish=True,
                     usage=reply.usage.to_json())


def stream_chunks(reply: Reply, request: JSONObject, model: str) -> list[JSONObject | str | bytes]:
    """The records of a streamed answer, before modifiers: one chunk per part, the finish on the last."""
    if isinstance(reply, Chunks):
        return list(reply.items)
    response_id = _response_id()
    parts = reply.stream_parts(request)
    if not parts:
        return [_response(reply, model, response_id, None, finish=True, usage=reply.usage.to_json())]
    last = len(parts) - 1
    return [_response(reply, model, response_id, [part], finish=i == last,
                      usage=reply.usage.to_json(final=i == last)) for i, part in enumerate(parts)]


def encode_stream(reply: Reply, request: JSONObject, model: str) -> list[bytes]:
    """The writes that answer a streaming request with `reply`, modifiers applied."""
    records = stream_chunks(reply, request, model)
    cut = reply.cut_after
    if reply.mid_stream_error is not None and cut is None:
        cut = max(0, len(records) - 1)
    if cut is not None:
        records = records[:cut]
    separator = b"\r\n\r\n" if reply.crlf else b"\n\n"
    writes = [_encode_record(record, separator, crlf=reply.crlf) for record in records]
    if reply.mid_stream_error is not None:
        error = orjson.dumps(reply.mid_stream_error.to_json())
        writes.append((error if reply.error_without_data else b"data: " + error) + separator)
    if reply.split_bytes:
        data, size = b"".join(writes), reply.split_bytes
        writes = [data[i : i + size] for i in range(0, len(data), size)]
    return writes


def _encode_record(record: JSONObject | str | bytes, separator: bytes, *, crlf: bool) -> bytes:
    if isinstance(record, bytes):
        return record
    if isinstance(record, str):
        return (record.replace("\n", "\r\n") if crlf else record).encode() + separator
    return b"data: " + orjson.dumps(record) + separator


def _response_id() -> str:
    return "".join(random.choices(_ID_ALPHABET, k=16))


# ---------------------------------------------------------------------------------------------
# Validation layer 1: the google-genai SDK's types
# ---------------------------------------------------------------------------------------------


def check_sdk_types(body: Any) -> list[str]:
    """Problems of a generateContent body against the google-genai SDK's pydantic types, validated
    from JSON text as the REST API reads it (camelCase names, base64 bytes, unknown keys forbidden)."""
    if not isinstance(body, dict):
        return ["body: expected a JSON object"]
    fields = {_SNAKE.sub(lambda m: m.group(1).upper(), key): value for key, value in body.items()}
    problems = [f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
                for key, name in zip(body, fields, strict=True) if name not in BODY_KEYS]
    if not isinstance(fields.get("contents"), list):
        problems.append("contents: required, a list of Content")
    else:
        problems += _validate_items("contents", fields["contents"], types.Content)
    for key, model in BODY_KEYS.items():
        if model is None or key not in fields:
            continue
        value = fields[key]
        if isinstance(value, list):
            problems += _validate_items(key, value, model)
        elif key in ("tools", "safetySettings"):
            problems.append(f"{key}: expected a list")
        else:
            problems += _validate(key, value, model)
    return problems


def _validate_items(path: str, items: list[Any], model: type[pydantic.BaseModel]) -> list[str]:
    return [problem for i, item in enumerate(items) for problem in _validate(f"{path}[{i}]", item, model)]


def _validate(path: str, value: Any, model: type[pydantic.BaseModel]) -> list[str]:
    try:
        model.model_validate_json(orjson.dumps(value))
    except pydantic.ValidationError as exc:
        return [f"{path}.{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()]
    except Exception as exc:  # the SDK's own validators raise plain errors (a type list: 'list'.upper)
        return [f"{path}: {type(exc).__name__}: {exc}"]
    return []


# ---------------------------------------------------------------------------------------------
# Validation layer 2: the protocol rules (protocols.md 3.4, 3.6, 3.9, 3.11)
# ---------------------------------------------------------------------------------------------

#: Fields whose value is the caller's data, not API fields: their keys are never renamed.
FREE_FORM = frozenset({"args", "response", "parametersJsonSchema", "responseJsonSchema", "default", "example",
                       "enum", "properties"})


def camel_case(body: Any) -> Any:
    """The body with every API field name in lowerCamelCase. Gemini, like any proto3 JSON parser,
    takes `include_thoughts` as well as `includeThoughts` (the google-genai SDK sends both kinds);
    the rule checks read the canonical form. Property names inside schemas stay as they are."""
    if isinstance(body, list):
        return [camel_case(item) for item in body]
    if not isinstance(body, dict):
        return body
    out: JSONObject = {}
    for key, value in body.items():
        name = _SNAKE.sub(lambda m: m.group(1).upper(), key)
        if name == "properties" and isinstance(value, dict):
            out[name] = {prop: camel_case(schema) for prop, schema in value.items()}
        elif name in FREE_FORM:
            out[name] = value
        else:
            out[name] = camel_case(value)
    return out


def _signature_bytes(signature: str) -> bytes | None:
    try:
        return base64.b64decode(signature.replace("-", "+").replace("_", "/") + "=" * (-len(signature) % 4),
                                validate=True)
    except ValueError:
        return None


def validate_request(body: Any, model: str, issued_signatures: Iterable[str] | None = None, *,
                     strict_turns: bool = True) -> list[str]:
    """Problems Gemini answers 400 for (plus the fake's stricter turn rule), in Gemini's wording
    where it is known; empty when the body is fine. Field names may be camelCase or snake_case.
    With `issued_signatures`, every thoughtSignature must be one of them or the dummy; without,
    only their presence is checked."""
    if not isinstance(body, dict):
        return ["body: expected a JSON object"]
    body = camel_case(body)
    problems: list[str] = []
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return ["* GenerateContentRequest.contents: contents is not specified"]
    for i, content in enumerate(contents):
        problems += _content_problems(f"contents[{i}]", content)
    if problems:
        return problems
    problems += _turn_problems(contents, strict=strict_turns)
    issued = None
    if issued_signatures is not None:
        issued = {_signature_bytes(signature) for signature in (*issued_signatures, DUMMY_SIGNATURE)}
    problems += _signature_problems(contents, model, issued)
    problems += _system_problems(body.get("systemInstruction"))
    declared, tool_problems = _tools_problems(body.get("tools"))
    problems += tool_problems
    problems += _tool_config_problems(body.get("toolConfig"), declared)
    problems += _generation_problems(body.get("generationConfig"), model)
    return problems


def _content_problems(path: str, content: Any) -> list[str]:
    if not isinstance(content, dict):
        return [f"{path}: expected an object"]
    if content.get("role") not in ("user", "model"):
        return [f"{path}.role: Please use a valid role: user, model."]
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        return [f"{path}.parts: must contain at least one part"]
    problems = []
    for j, part in enumerate(parts):
        data = [key for key in PART_DATA if key in part] if isinstance(part, dict) else []
        if len(data) != 1:
            problems.append(f"{path}.parts[{j}]: a part holds exactly one of {list(PART_DATA)}, got {data}")
        elif data == ["text"] and not part["text"]:
            problems.append(f"{path}.parts[{j}].text: must not be empty")
        elif data == ["functionResponse"] and not isinstance(part["functionResponse"].get("response"), dict):
            problems.append(f"{path}.parts[{j}].functionResponse.response: must be an object")
    return problems


def _calls(content: JSONObject) -> list[JSONObject]:
    return [p["functionCall"] for p in content["parts"] if "functionCall" in p]


def _responses(content: JSONObject) -> list[JSONObject]:
    return [p["functionResponse"] for p in content["parts"] if "functionResponse" in p]


def _turn_problems(contents: list[JSONObject], *, strict: bool) -> list[str]:
    problems: list[str] = []
    for i, content in enumerate(contents):
        previous = contents[i - 1] if i else None
        if strict and previous is not None and previous["role"] == content["role"]:
            problems.append(f"contents[{i}]: consecutive turns of role {content['role']!r} (merge them)")
        if content["role"] == "model" and _calls(content) and (previous is None or previous["role"] != "user"):
            problems.append("Please ensure that function call turn comes immediately after a user turn or "
                            "after a function response turn.")
        responses = _responses(content)
        if not responses:
            continue
        calls = _calls(previous) if previous is not None and previous["role"] == "model" else []
        if not calls:
            problems.append("Please ensure that function response turn comes immediately after a function "
                            "call turn.")
        elif len(responses) != len(calls):
            problems.append("Please ensure that the number of function response parts is equal to the number "
                            "of function call parts of the function call turn.")
        elif sorted(str(r.get("name")) for r in responses) != sorted(str(c.get("name")) for c in calls):
            problems.append(f"contents[{i}]: function responses {[r.get('name') for r in responses]} do not "
                            f"answer the calls {[c.get('name') for c in calls]}")
        elif any(r.get("id") != c.get("id") for r, c in zip(responses, calls, strict=True)
                 if r.get("id") is not None or c.get("id") is not None):
            problems.append(f"contents[{i}]: function response ids do not match the call ids, in order")
        parts = content["parts"]
        if any("functionResponse" not in p for p in parts[: len(responses)]):
            problems.append(f"contents[{i}]: function responses must come before the other parts")
    return problems


def _signature_problems(contents: list[JSONObject], model: str, issued: set[bytes | None] | None) -> list[str]:
    problems: list[str] = []
    for i, content in enumerate(contents if issued is not None else ()):
        for j, part in enumerate(content["parts"]):
            signature = part.get("thoughtSignature")
            if signature is not None and (not isinstance(signature, str) or _signature_bytes(signature) not in issued):
                problems.append(f"contents[{i}].parts[{j}].thoughtSignature: Corrupted thought signature.")
    if not SIGNED_MODELS.match(model):
        return problems
    # the current turn: everything after the last user content that is not only function responses
    start = 0
    for i, content in enumerate(contents):
        if content["role"] == "user" and any("functionResponse" not in p for p in content["parts"]):
            start = i + 1
    for i in range(start, len(contents)):
        content = contents[i]
        first = next((j for j, p in enumerate(content["parts"]) if "functionCall" in p), None)
        if content["role"] == "model" and first is not None and "thoughtSignature" not in content["parts"][first]:
            name = content["parts"][first]["functionCall"].get("name")
            problems.append(f"Function call `{name}` in the {i + 1}. content block is missing a "
                            f"`thought_signature`. Learn more: https://ai.google.dev/gemini-api/docs/thought-signatures")
    return problems


def _system_problems(system: Any) -> list[str]:
    if system is None:
        return []
    parts = system.get("parts") if isinstance(system, dict) else None
    if not isinstance(parts, list) or not parts:
        return ["systemInstruction.parts: must contain at least one part"]
    return [f"systemInstruction.parts[{j}]: only non-empty text parts are allowed"
            for j, part in enumerate(parts) if not isinstance(part, dict) or not part.get("text")]


def _tools_problems(tools: Any) -> tuple[set[str], list[str]]:
    declared: set[str] = set()
    problems: list[str] = []
    for t, tool in enumerate(tools or ()):
        for d, declaration in enumerate((tool or {}).get("functionDeclarations") or ()):
            path = f"tools[{t}].function_declarations[{d}]"
            name = declaration.get("name")
            if not isinstance(name, str) or not FUNCTION_NAME.match(name):
                problems.append(f"* GenerateContentRequest.{path}.name: Invalid function name {name!r}. Must start "
                                "with a letter or an underscore. Must be alphameric (a-z, A-Z, 0-9), underscores "
                                "(_), dots (.), colons (:) or dashes (-), with a maximum length of 64.")
            elif name in declared:
                problems.append(f"* GenerateContentRequest.{path}.name: duplicate function name {name!r}")
            else:
                declared.add(name)
            if "parameters" in declaration and "parametersJsonSchema" in declaration:
                problems.append(f"{path}: parameters and parameters_json_schema are mutually exclusive")
            if "parameters" in declaration:
                problems += _schema_problems(declaration["parameters"], f"{path}.parameters")
            schema = declaration.get("parametersJsonSchema")
            if schema is not None and (not isinstance(schema, dict) or schema.get("type") != "object"):
                problems.append(f"{path}.parameters_json_schema: must describe an object (type: object)")
    return declared, problems


def _schema_problems(schema: Any, path: str) -> list[str]:
    """Gemini's wording for a keyword its Schema proto does not have (protocols.md 3.6)."""
    if isinstance(schema, list):
        return [p for i, item in enumerate(schema) for p in _schema_problems(item, f"{path}[{i}]")]
    if not isinstance(schema, dict):
        return []
    problems: list[str] = []
    for key, value in schema.items():
        if key in REJECTED_SCHEMA_KEYS:
            problems.append(f"Invalid JSON payload received. Unknown name \"{key}\" at '{path}': Cannot find field.")
        elif key == "type" and not isinstance(value, str):
            problems.append(f"Invalid JSON payload received. Proto field is not repeating, cannot start list. "
                            f"at '{path}.type'")
        elif key == "enum" and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            problems.append(f"Invalid value at '{path}.enum' (TYPE_STRING)")
        elif key == "format" and schema.get("type") == "string" and value not in STRING_FORMATS:
            problems.append(f"{path}.format: only 'enum' and 'date-time' are supported for STRING type")
        elif key in NAME_MAPS and isinstance(value, dict):
            for name, child in value.items():
                problems += _schema_problems(child, f"{path}.{key}[{name!r}].value")
        elif key in ("items", "anyOf"):
            problems += _schema_problems(value, f"{path}.{key}")
    return problems


def _tool_config_problems(config: Any, declared: set[str]) -> list[str]:
    calling = (config or {}).get("functionCallingConfig") or {}
    allowed = calling.get("allowedFunctionNames")
    if allowed is None:
        return []
    problems = []
    if calling.get("mode") not in ("ANY", "VALIDATED"):
        problems.append("toolConfig.functionCallingConfig.allowedFunctionNames: only allowed with mode ANY")
    problems += [f"toolConfig.functionCallingConfig.allowedFunctionNames: {name!r} is not declared"
                 for name in allowed if name not in declared]
    return problems


def _generation_problems(config: Any, model: str) -> list[str]:
    thinking = (config or {}).get("thinkingConfig")
    if thinking is None:
        return []
    if not THINKING_MODELS.match(model):
        return ["Thinking is not supported by this model."]
    if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
        return ["thinking_budget and thinking_level are not supported together."]
    return []


# ---------------------------------------------------------------------------------------------
# The ASGI app
# ---------------------------------------------------------------------------------------------


class StreamAborted(Exception):
    """Raised inside the app to make the server drop the connection mid-body (`Reply.abort`)."""


@dataclass
class GeminiRequest:
    """One request as the fake saw it. `problems` are the reasons it was refused (SDK types and
    protocol rules); `model` and `method` come from the path, `query` from the query string."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    raw: bytes
    model: str | None = None
    call: str | None = None
    body: Any = None
    problems: list[str] = field(default_factory=list)
    status: int | None = None
    disconnected: bool = False

    @property
    def stream(self) -> bool:
        return self.call == "streamGenerateContent"


class FakeGemini:
    """The scripted upstream; see the module docstring. `api_key`: when set, other keys are
    refused. `strict_turns=False` accepts consecutive turns of one role (Gemini itself does)."""

    def __init__(self, *script: Scripted, default: Scripted | None = None,
                 responder: Callable[[JSONObject], Scripted] | None = None,
                 models: Iterable[str] = DEFAULT_MODELS, api_key: str | None = None,
                 strict_turns: bool = True) -> None:
        self._constructed = (list(script), default, responder, list(models), api_key, strict_turns)
        self.issued_signatures: set[str] = set()
        self.reset()

    def queue(self, *replies: Scripted) -> None:
        """Append replies to the script; each request consumes one."""
        self.script.extend(replies)

    def reset(self) -> None:
        """Back to the state right after construction, no requests recorded (issued signatures stay
        valid, as they do at Google)."""
        script, self.default, self.responder, models, self.api_key, self.strict_turns = self._constructed
        self.script: list[Scripted] = list(script)
        self.models: list[str] = list(models)
        self.requests: list[GeminiRequest] = []

    @property
    def last(self) -> GeminiRequest:
        assert self.requests, "FakeGemini has received no request"
        return self.requests[-1]

    def assert_all_accepted(self) -> None:
        """Fail listing every request the fake refused for its body (a proxy bug, not a scripted error)."""
        refused = [f"request {i} ({r.path}): {p}" for i, r in enumerate(self.requests) for p in r.problems]
        assert not refused, "FakeGemini refused requests:\n" + "\n".join(refused)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await is_http_request(scope, receive, send):
            return
        request = GeminiRequest(
            method=scope["method"], path=scope["path"],
            query=parse_qs(scope.get("query_string", b"").decode("latin-1")),
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            raw=await read_body(receive),
        )
        self.requests.append(request)
        match = CALL_PATH.match(request.path)
        refusal = self._refuse_auth(request)
        if refusal is not None:
            await _send_error(send, request, refusal)
        elif request.path == MODELS_PATH and request.method == "GET":
            await self._answer_models(send, request)
        elif match is None or request.method != "POST":
            await _send_error(send, request, Error(404, f"Method not found: {request.method} {request.path}"))
        else:
            request.model, request.call = match.group("model"), match.group("method")
            await self._answer_call(receive, send, request)

    def _refuse_auth(self, request: GeminiRequest) -> Error | None:
        if "key" in request.query:
            request.problems.append("API key in the URL")
            return Error(400, "FakeGemini: the API key must come in the x-goog-api-key header, never in the "
                              "URL (keys in URLs end up in logs)")
        key = request.headers.get("x-goog-api-key")
        if key is None:
            return Error(403, "Method doesn't allow unregistered callers (callers without established identity). "
                              "Please use API Key or other form of API consumer identity to call this API.")
        if self.api_key is not None and key != self.api_key:
            return Error(400, "API key not valid. Please pass a valid API key.", reason="API_KEY_INVALID")
        return None

    async def _answer_models(self, send: Send, request: GeminiRequest) -> None:
        models = [{"name": f"models/{m}", "displayName": m, "supportedGenerationMethods": ["generateContent"]}
                  for m in self.models]
        await send_json(send, request, 200, {"models": models}, content_type=JSON_TYPE)

    async def _answer_call(self, receive: Receive, send: Send, request: GeminiRequest) -> None:
        assert request.model is not None
        if request.stream and request.query.get("alt") != ["sse"]:
            request.problems.append("streamGenerateContent without alt=sse")
            await _send_error(send, request, Error(400, "FakeGemini: streamGenerateContent needs alt=sse "
                                                        "(without it the answer is one JSON array)"))
            return
        try:
            request.body = orjson.loads(request.raw)
        except orjson.JSONDecodeError:
            await _send_error(send, request, Error(400, "Invalid JSON payload received."))
            return
        # Gemini's own wording first (it names the offending keyword), then what the SDK types say
        with contextlib.suppress(Exception):  # a body too broken for the rules: the types say why
            request.problems = validate_request(request.body, request.model, self.issued_signatures,
                                                strict_turns=self.strict_turns)
        request.problems += check_sdk_types(request.body)
        if request.problems:
            await _send_error(send, request, Error(400, "\n".join(request.problems)))
            return
        reply = self._next_reply(request.body)
        if isinstance(reply, Calls) and reply.signature:
            self.issued_signatures.add(reply.signature)
        if isinstance(reply, Thoughts):
            self._remember_signatures(reply)
        if isinstance(reply, Error):
            await _send_error(send, request, reply)
        elif request.stream:
            await _send_stream(receive, send, request, reply)
        elif isinstance(reply, Chunks):
            await _send_error(send, request, Error(500, "FakeGemini: a Chunks reply needs a streaming request"))
        else:
            await asyncio.sleep(reply.first_byte_delay)
            body = response_body(reply, request.body, request.model)
            await send_json(send, request, 200, body, content_type=JSON_TYPE)

    def _remember_signatures(self, reply: Reply | None) -> None:
        while reply is not None:
            signature = getattr(reply, "signature", None)
            if isinstance(signature, str):
                self.issued_signatures.add(signature)
            reply = getattr(reply, "then", None)

    def _next_reply(self, body: JSONObject) -> Scripted:
        if self.script:
            return self.script.pop(0)
        if self.responder is not None:
            return self.responder(body)
        if self.default is not None:
            return self.default
        return Error(500, "FakeGemini: no scripted reply left (queue one, or set default or responder)")


async def _send_error(send: Send, request: GeminiRequest, error: Error) -> None:
    headers = [("retry-after", f"{error.retry_after:g}")] if error.retry_after is not None else []
    await send_json(send, request, error.status, error.to_json(), content_type=JSON_TYPE, headers=headers)


async def _send_stream(receive: Receive, send: Send, request: GeminiRequest, reply: Reply) -> None:
    assert request.model is not None
    abort = StreamAborted("FakeGemini dropped the connection on purpose (Reply.abort)") if reply.abort else None
    await send_stream(receive, send, request, encode_stream(reply, request.body, request.model),
                      content_type=SSE_TYPE, first_byte_delay=reply.first_byte_delay,
                      delay_between_chunks=reply.delay_between_chunks, abort=abort)
