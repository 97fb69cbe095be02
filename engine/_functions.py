"""The functions rule files may call: JMESPath functions in selectors, Jinja filters in templates.

Rules stay declarative only if the few things YAML cannot say (JSON text, ids, schema cleaning, name
shortening, the thinking-signature envelope) live in one small, documented library. Each function is
written once as plain Python and exposed on both sides under the same name:

* JMESPath: `EngineFunctions` (the documented `functions.Functions` extension point) and the one
  shared `JMESPATH_OPTIONS`. The instance serves every request, so nothing per request lives on it.
* Jinja: `JINJA_FILTERS` and `JINJA_GLOBALS`, installed by the rule compiler into its environment.

`FUNCTIONS` documents every one of them (signature, parameters, examples). The reference section of
docs/rules.md is rendered from it by `render_reference_markdown`, and a test runs every example on
every side the function exists, so the reference cannot drift from the code.

Every function takes and returns plain JSON types (dict, list, str, int, float, bool, None): JMESPath
checks argument types by `type(value).__name__`, and the compiler hands over plain values.
"""

from __future__ import annotations

import base64
import binascii
import collections
import functools
import hashlib
import itertools
import os
import re
import string
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import jmespath
import orjson
from jmespath import exceptions, functions

from ._types import JSON, IdSource

ID_LENGTH = 24
"""Random characters after the prefix in `new_id` (Anthropic's `toolu_` ids use 24 base62 chars)."""

SIGNATURE_PREFIX = "ccpx1."
"""Marks a thinking signature as an engine envelope (protocols.md 4.6); never a real Anthropic one."""

SHORT_NAME_MIN_LEN = 10
"""`short_name` needs room for one kept character, "_" and 8 hex digits."""

_ID_ALPHABET = (string.digits + string.ascii_letters).encode("ascii")
# bytes.translate maps random bytes to base62 without modulo bias: 248 = 4 * 62 values map evenly,
# the top 8 are deleted.
_ID_TABLE = bytes(_ID_ALPHABET[b % 62] if b < 248 else 0 for b in range(256))
_ID_REJECT = bytes(range(248, 256))

# Inside these JSON-Schema keywords the keys are user names (properties, definitions), not keywords.
_NAME_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
# These keywords hold instance data, not schemas: copied as they are.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples", "example"})

_VALID_NAME_CHARS = re.compile(r"[a-zA-Z0-9_-]+")
_INVALID_NAME_CHAR = re.compile(r"[^a-zA-Z0-9_-]")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_INTEGER = re.compile(r"(?<![\w.-])(?:\d{1,3}(?:,\d{3})+|\d+)(?![\w-]|[.,]\d)")

_SHORT_ID_MAX_LEN = 40
"""`short_id` draws its characters from a SHA-256 digest: 256 bits give 43 base62 digits."""
_ALNUM = re.compile(r"[A-Za-z0-9]+")

_F = TypeVar("_F", bound=Callable[..., Any])

"""Returns that many characters from the base62 alphabet."""


# -- JSON ------------------------------------------------------------------------------------------


def json_encode(value: JSON) -> str:
    """Compact JSON text: no spaces, non-ASCII kept, keys in their given order (unlike `to_string`)."""
    return orjson.dumps(value).decode("utf-8")


def json_decode(text: JSON) -> JSON:
    """The value `text` encodes; None when it is not a string of valid JSON (upstreams send broken
    tool-call arguments, and a selector must not fail the whole response over one)."""
    if not isinstance(text, str | bytes):
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


# -- ids and names ---------------------------------------------------------------------------------


def _random_base62(length: int) -> str:
    out = b""
    while len(out) < length:
        out += os.urandom(length + 8).translate(_ID_TABLE, _ID_REJECT)
    return out[:length].decode("ascii")


_ID_BATCH_BYTES = 4096
"""Random bytes drawn per refill of `_ready_ids`: about 160 ids per getrandom call."""
_ready_ids: collections.deque[str] = collections.deque()


def _random_id(length: int) -> str:
    """`length` base62 characters; ids of the usual length come from a batch drawn with one OS call.

    A request mints two or three ids, and a getrandom call per id cost more than the rest of
    `new_id`. The batch is as random as separate calls; `deque.popleft` and `extend` are atomic, so
    threads never share an id.
    """
    if length != ID_LENGTH:
        return _random_base62(length)
    while True:
        try:
            return _ready_ids.popleft()
        except IndexError:
            pool = os.urandom(_ID_BATCH_BYTES).translate(_ID_TABLE, _ID_REJECT).decode("ascii")
            _ready_ids.extend(pool[start:start + length] for start in range(0, len(pool) - length + 1, length))


_id_source: IdSource = _random_id


def set_id_source(source: IdSource | None) -> None:
    """Replace the randomness behind `new_id` (None restores the OS source), e.g. for snapshots."""
    global _id_source  # noqa: PLW0603 - the one injectable process-wide source
    _id_source = source or _random_id


@contextmanager
def deterministic_ids() -> Iterator[None]:
    """Within the block, `new_id` draws a counter (000…001, 000…002, …) so snapshots are stable."""
    previous = _id_source
    counter = itertools.count(1)
    set_id_source(lambda length: f"{next(counter):0{length}d}")
    try:
        yield
    finally:
        set_id_source(previous)


def new_id(prefix: str) -> str:
    """`prefix` followed by `ID_LENGTH` base62 characters, e.g. a `toolu_` id for a minted tool call."""
    return prefix + _id_source(ID_LENGTH)


@functools.lru_cache(maxsize=4096)
def short_name(name: str, max_len: int = 64) -> str:
    """`name` if it is already a valid tool name of at most `max_len` characters; otherwise a
    deterministic valid one: invalid characters become "_", the result is cut to `max_len - 9`
    characters, and "_" plus 8 hex digits of the original's SHA-1 are appended. The hash is added
    whenever the name changes, so two names that differ only in invalid characters (``a.b``,
    ``a:b``) stay distinct and can be mapped back; the same name always gives the same result."""
    max_len = int(max_len)
    if max_len < SHORT_NAME_MIN_LEN:
        raise ValueError(f"short_name: max_len must be at least {SHORT_NAME_MIN_LEN}, got {max_len}")
    if len(name) <= max_len and _VALID_NAME_CHARS.fullmatch(name):
        return name
    cleaned = _INVALID_NAME_CHAR.sub("_", name)
    if not cleaned:
        return "_"
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return f"{cleaned[: max_len - 9]}_{digest}"


@functools.lru_cache(maxsize=4096)
def short_id(call_id: str, length: int) -> str:
    """A tool-call id of exactly `length` ASCII letters and digits, for providers that accept no
    other (Mistral: 9). An id that already is one passes unchanged, so ids the provider issued
    come back as they were and applying it twice changes nothing; any other id becomes the first
    `length` base62 digits of its SHA-256, so an assistant's call and the tool result answering it,
    hashed apart, still match."""
    length = int(length)
    if not 1 <= length <= _SHORT_ID_MAX_LEN:
        raise ValueError(f"short_id: length must be between 1 and {_SHORT_ID_MAX_LEN}, got {length}")
    if len(call_id) == length and _ALNUM.fullmatch(call_id):
        return call_id
    number = int.from_bytes(hashlib.sha256(call_id.encode("utf-8")).digest(), "big")
    digits = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        digits.append(_ID_ALPHABET[digit])
    return bytes(digits).decode("ascii")


def with_previous(items: JSON) -> list[JSON]:
    """Each element of a list with the element before it, as ``{"previous": …, "item": …}`` (the
    first element's previous is None); [] for anything but a list. `$each` sees one element at a
    time, so this is how a rule reacts to an order it must repair (a message after another)."""
    if not isinstance(items, list):
        return []
    return [{"previous": previous, "item": item} for previous, item in zip([None, *items], items, strict=False)]


# -- content ---------------------------------------------------------------------------------------


def text_of(content: JSON, sep: str = "\n") -> str:
    """The plain text of an Anthropic content value: a string as it is, the `text` of the text blocks
    of a list joined by `sep` (other block types, thinking included, are skipped), "" for None."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return sep.join(
            block["text"]
            for block in content
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        )
    return ""


def blocks(content: JSON) -> list[JSON]:
    """An Anthropic content value as a list of blocks, so a template can always iterate: a string
    becomes one text block, a list stays as it is, None and "" become [] (Anthropic rejects empty
    text blocks)."""
    if isinstance(content, list):
        return content
    if isinstance(content, str) and content:
        return [{"type": "text", "text": content}]
    return []


def data_url(source: JSON) -> str | None:
    """Where an Anthropic image or document `source` can be fetched: a `data:` URL for base64 data,
    the URL itself for a url source, None for anything else (file ids, text sources)."""
    if not isinstance(source, dict):
        return None
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if isinstance(media_type, str) and isinstance(data, str):
            return f"data:{media_type};base64,{data}"
        return None
    if kind == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    return None


def integers(text: JSON) -> list[int]:
    """The whole numbers written in a text, in order (digits grouped with "," are read as one
    number); [] for anything that is not a string. Rules use it to read token counts out of error
    messages."""
    if not isinstance(text, str):
        return []
    return [int(match.replace(",", "")) for match in _INTEGER.findall(text)]


# -- reasoning -------------------------------------------------------------------------------------


def effort_from_budget(budget_tokens: JSON) -> str | None:
    """The reasoning effort for an Anthropic thinking budget (protocols.md 4.6 buckets):
    below 4096 "low", below 16384 "medium", otherwise "high"; None when there is no budget."""
    if budget_tokens is None or isinstance(budget_tokens, bool) or not isinstance(budget_tokens, int | float):
        return None
    if budget_tokens < 4096:
        return "low"
    if budget_tokens < 16384:
        return "medium"
    return "high"


def encode_signature(provider: str, model: str | None, data: JSON) -> str:
    """An engine signature envelope carrying a provider's reasoning data through an Anthropic client:
    `ccpx1.` + unpadded base64url of `{"p": provider, "m": model, "d": data}`. It never imitates an
    Anthropic signature; clients treat signatures as opaque and send them back unchanged."""
    payload = orjson.dumps({"p": provider, "m": model, "d": data})
    return SIGNATURE_PREFIX + base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")


def _open_envelope(signature: JSON) -> dict[str, Any] | None:
    if not isinstance(signature, str) or not signature.startswith(SIGNATURE_PREFIX):
        return None
    body = signature[len(SIGNATURE_PREFIX) :]
    if not _BASE64URL.fullmatch(body):
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError):  # orjson.JSONDecodeError is a ValueError
        return None
    if isinstance(payload, dict) and isinstance(payload.get("p"), str) and "d" in payload:
        return payload
    return None


def is_engine_signature(signature: JSON) -> bool:
    """True when `signature` is a well-formed engine envelope (of any provider)."""
    return _open_envelope(signature) is not None


def decode_signature(signature: JSON, provider: str) -> JSON:
    """The data inside an engine envelope made for `provider`; None for anything else: envelopes of
    another provider, genuine Anthropic signatures, garbage (the data itself may also be None)."""
    envelope = _open_envelope(signature)
    if envelope is None or envelope["p"] != provider:
        return None
    return envelope["d"]


# -- schemas ---------------------------------------------------------------------------------------


def strip_keys(value: JSON, keys: Iterable[str]) -> JSON:
    """A copy of a JSON value (typically a JSON Schema) without the named keys in any object.

    Keys inside `properties`, `patternProperties`, `$defs`, `definitions` and `dependentSchemas` are
    user names, not keywords, so a property literally called "format" survives while its schemas are
    still cleaned; `enum`, `const`, `default`, `examples` and `example` hold data and are copied as
    they are. The input is never modified.
    """
    if isinstance(keys, str):
        raise TypeError("strip_keys: keys must be a list of strings, not a string")
    return _strip(value, frozenset(keys))


def _strip(value: JSON, keys: frozenset[str]) -> JSON:
    if isinstance(value, dict):
        out: dict[str, JSON] = {}
        for key, item in value.items():
            if key in keys:
                continue
            if key in _NAME_MAPS and isinstance(item, dict):
                out[key] = {name: _strip(schema, keys) for name, schema in item.items()}
            elif key in _DATA_KEYWORDS:
                out[key] = _copy(item)
            else:
                out[key] = _strip(item, keys)
        return out
    if isinstance(value, list):
        return [_strip(item, keys) for item in value]
    return value


def _copy(value: JSON) -> JSON:
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def openapi_schema(schema: JSON, keywords: Iterable[str], formats: Iterable[str]) -> JSON:
    """A JSON Schema rewritten in the OpenAPI 3.0 subset that APIs with a typed schema object accept
    (Gemini's function ``parameters``, which rejects the whole request over one unknown keyword).

    Local ``$ref`` pointers into ``$defs``/``definitions`` are inlined (a recursive one becomes
    ``{"type": "object"}``), ``allOf`` is merged, ``oneOf`` read as ``anyOf``, a ``null`` type or
    branch becomes ``nullable``, a single remaining branch is inlined, ``const`` becomes a one-value
    ``enum``, enum values become strings, ``exclusiveMinimum``/``exclusiveMaximum`` become inclusive
    bounds (one step in for integers), ``required`` keeps only declared properties, an array gets
    ``items``, and ``examples`` gives its first value to ``example``. Then every keyword not in
    `keywords` is dropped, and ``format`` unless its value is in `formats`. Property names are never
    taken for keywords. The input is not modified.
    """
    if isinstance(keywords, str) or isinstance(formats, str):
        raise TypeError("openapi_schema: keywords and formats must be lists of strings")
    if not isinstance(schema, dict):
        return _copy(schema)
    defs: dict[str, JSON] = {}
    for key in ("definitions", "$defs"):
        if isinstance(schema.get(key), dict):
            defs.update({f"#/{key}/{name}": value for name, value in schema[key].items()})
    keep = frozenset(keywords)
    return _OpenAPISchema(defs, keep, frozenset(formats), _wanted_keywords(keep)).convert(schema, ())


def _wanted_keywords(keep: frozenset[str]) -> frozenset[str]:
    """Input keywords worth reading: the kept ones and those that turn into kept ones."""
    derived = {"const": "enum", "examples": "example", "exclusiveMinimum": "minimum",
               "exclusiveMaximum": "maximum"}
    return keep | {source for source, target in derived.items() if target in keep}


@dataclass(frozen=True, slots=True)
class _OpenAPISchema:
    """One `openapi_schema` conversion: the definitions refs point to, and what to keep."""

    defs: dict[str, JSON]
    keywords: frozenset[str]
    formats: frozenset[str]
    wanted: frozenset[str]

    def convert(self, node: JSON, seen: tuple[str, ...]) -> dict[str, JSON]:
        if not isinstance(node, dict):
            return {}  # a boolean schema ("anything") has no OpenAPI form but the empty schema
        node, seen = self._deref(node, seen)
        node = self._merge_all_of(node, seen)
        nullable = node.get("nullable") is True
        own: dict[str, JSON] = {}
        kind = node.get("type")
        branches: list[JSON] = []
        if isinstance(kind, list):
            named = [t for t in kind if t != "null"]
            nullable = nullable or len(named) < len(kind)
            if len(named) == 1:
                own["type"] = named[0]
            else:
                branches = [{"type": t} for t in named]
        elif kind == "null":
            nullable = True
        elif kind is not None:
            own["type"] = kind
        for key in ("anyOf", "oneOf"):
            if isinstance(node.get(key), list):
                branches += node[key]
        kept: list[JSON] = []
        for branch in branches:
            if isinstance(branch, dict) and branch.get("type") == "null":
                nullable = True
            else:
                kept.append(self.convert(branch, seen))
        for key, value in node.items():
            self._keyword(key, value, node, own, seen)
        if own.get("type") == "array" and "items" not in own:
            own["items"] = {}
        if "enum" in own:
            nullable = nullable or None in own["enum"]
            own["enum"] = [_enum_text(v) for v in own["enum"] if v is not None]
        if nullable:
            own["nullable"] = True
        if len(kept) == 1:
            own = {**kept[0], **own}  # the schema's own keywords win over the branch it wraps
        elif kept:
            own["anyOf"] = kept
        return {key: value for key, value in own.items() if key in self.keywords}

    def _keyword(self, key: str, value: JSON, node: dict[str, JSON], own: dict[str, JSON],
                 seen: tuple[str, ...]) -> None:
        if key in ("type", "anyOf", "oneOf", "allOf", "$ref", "nullable") or key not in self.wanted:
            return
        if key == "properties" and isinstance(value, dict):
            own[key] = {name: self.convert(schema, seen) for name, schema in value.items()}
        elif key == "required" and isinstance(value, list):
            declared = node.get("properties")
            names = [name for name in value if isinstance(declared, dict) and name in declared]
            if names:
                own[key] = names
        elif key in ("items", "additionalProperties") and isinstance(value, dict | list):
            own[key] = self.convert(value[0] if isinstance(value, list) and value else value, seen)
        elif key == "const":
            own.setdefault("enum", [_copy(value)])
        elif key == "enum" and isinstance(value, list):
            own[key] = _copy(value)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            self._exclusive(key, value, node, own)
        elif key == "format":
            if value in self.formats:
                own[key] = value
        elif key == "examples":
            if isinstance(value, list) and value and "example" not in node:
                own["example"] = _copy(value[0])
        else:
            own[key] = _copy(value)

    def _exclusive(self, key: str, value: JSON, node: dict[str, JSON], own: dict[str, JSON]) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return  # draft-4 style flag: the bound stays inclusive (slightly looser)
        step = 1 if node.get("type") == "integer" and isinstance(value, int) else 0
        if key == "exclusiveMinimum":
            current = node.get("minimum")
            bound = value + step
            own["minimum"] = max(bound, current) if isinstance(current, int | float) else bound
        else:
            current = node.get("maximum")
            bound = value - step
            own["maximum"] = min(bound, current) if isinstance(current, int | float) else bound

    def _deref(self, node: dict[str, JSON], seen: tuple[str, ...]) -> tuple[dict[str, JSON], tuple[str, ...]]:
        """Follow ``$ref`` (siblings of the ref win); an unknown or recursive one is an open object."""
        while isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            rest = {key: value for key, value in node.items() if key != "$ref"}
            target = self.defs.get(ref)
            if ref in seen or not isinstance(target, dict):
                return {"type": "object", **rest}, seen
            node, seen = {**target, **rest}, (*seen, ref)
        return node, seen

    def _merge_all_of(self, node: dict[str, JSON], seen: tuple[str, ...]) -> dict[str, JSON]:
        parts = node.get("allOf")
        if not isinstance(parts, list):
            return node
        merged = {key: value for key, value in node.items() if key != "allOf"}
        for part in parts:
            if not isinstance(part, dict):
                continue
            resolved, _ = self._deref(part, seen)
            for key, value in self._merge_all_of(resolved, seen).items():
                if key == "properties" and isinstance(value, dict):
                    merged[key] = {**value, **(merged.get(key) or {})}
                elif key == "required" and isinstance(value, list):
                    merged[key] = list(dict.fromkeys([*(merged.get(key) or []), *value]))
                else:
                    merged.setdefault(key, value)
        return merged


def _enum_text(value: JSON) -> str:
    return value if isinstance(value, str) else json_encode(value)


# -- turns and tool calls --------------------------------------------------------------------------


def merge_turns(items: JSON, role_key: str, parts_key: str) -> list[JSON]:
    """Consecutive items with the same `role_key` value merged into one whose `parts_key` list holds
    all their parts in order; items without parts are left out first. Providers that want strictly
    alternating turns (Gemini) get them, whatever the client's message list looked like."""
    if not isinstance(items, list):
        return []
    merged: list[JSON] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        parts = item.get(parts_key)
        if not isinstance(parts, list) or not parts:
            continue
        last = merged[-1] if merged else None
        if last is not None and last.get(role_key) == item.get(role_key):
            last[parts_key] = [*last[parts_key], *parts]
        else:
            merged.append({**item, parts_key: list(parts)})
    return merged


def tool_names_by_id(messages: JSON) -> dict[str, JSON]:
    """The name of every tool call in an Anthropic message list, by tool_use id: what a provider
    that answers tool results by function name (Gemini's functionResponse) needs, since a
    `tool_result` names only the id."""
    names: dict[str, JSON] = {}
    if not isinstance(messages, list):
        return names
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list) or message.get("role") != "assistant":
            continue
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_use" and isinstance(block.get("id"), str):
                names[block["id"]] = block.get("name")
    return names


# -- JMESPath --------------------------------------------------------------------------------------


def signature(*arguments: dict[str, Any]) -> Callable[[_F], _F]:
    """jmespath's `@signature`, typed so mypy keeps the decorated method's type."""
    decorate: Callable[[_F], _F] = functions.signature(*arguments)
    return decorate


def _optional_arg(function: str, required: int, extra: tuple[JSON, ...], jtype: str, default: JSON) -> JSON:
    """JMESPath has no optional parameters: the last required one is declared variadic and this
    checks what follows it with jmespath's own errors (at most one more argument, of type `jtype`)."""
    if not extra:
        return default
    if len(extra) > 1:
        raise exceptions.ArityError(required + 1, required + len(extra), function)
    actual = functions.TYPES_MAP.get(type(extra[0]).__name__, "unknown")
    if actual != jtype:
        raise exceptions.JMESPathTypeError(function, extra[0], actual, [jtype])
    return extra[0]


class EngineFunctions(functions.Functions):  # type: ignore[misc]  # jmespath ships no types
    """The JMESPath built-ins plus the engine's functions; stateless, one instance serves all."""

    @signature({"types": []})
    def _func_json_encode(self, value: JSON) -> str:
        return json_encode(value)

    @signature({"types": ["string", "null"]})
    def _func_json_decode(self, text: str | None) -> JSON:
        return json_decode(text)

    @signature({"types": ["string"]})
    def _func_new_id(self, prefix: str) -> str:
        return new_id(prefix)

    @signature({"types": []}, {"types": ["array-string"]})
    def _func_strip_keys(self, value: JSON, keys: list[str]) -> JSON:
        return strip_keys(value, keys)

    @signature({"types": ["string"], "variadic": True})
    def _func_short_name(self, name: str, *extra: JSON) -> str:
        return short_name(name, _optional_arg("short_name", 1, extra, "number", 64))

    @signature({"types": ["string"]}, {"types": ["number"]})
    def _func_short_id(self, call_id: str, length: int) -> str:
        return short_id(call_id, length)

    @signature({"types": []})
    def _func_with_previous(self, items: JSON) -> list[JSON]:
        return with_previous(items)

    @signature({"types": ["string", "array", "null"], "variadic": True})
    def _func_text_of(self, content: JSON, *extra: JSON) -> str:
        return text_of(content, _optional_arg("text_of", 1, extra, "string", "\n"))

    @signature({"types": []})
    def _func_integers(self, text: JSON) -> list[int]:
        return integers(text)

    @signature({"types": ["number", "null"]})
    def _func_effort_from_budget(self, budget_tokens: float | None) -> str | None:
        return effort_from_budget(budget_tokens)

    @signature({"types": ["string"]}, {"types": ["string", "null"]}, {"types": []})
    def _func_encode_signature(self, provider: str, model: str | None, data: JSON) -> str:
        return encode_signature(provider, model, data)

    @signature({"types": ["string", "null"]}, {"types": ["string"]})
    def _func_decode_signature(self, signature: str | None, provider: str) -> JSON:
        return decode_signature(signature, provider)

    @signature({"types": []})
    def _func_is_engine_signature(self, signature: JSON) -> bool:
        return is_engine_signature(signature)

    @signature({"types": []}, {"types": ["array-string"]}, {"types": ["array-string"]})
    def _func_openapi_schema(self, schema: JSON, keywords: list[str], formats: list[str]) -> JSON:
        return openapi_schema(schema, keywords, formats)

    @signature({"types": []}, {"types": ["string"]}, {"types": ["string"]})
    def _func_merge_turns(self, items: JSON, role_key: str, parts_key: str) -> list[JSON]:
        return merge_turns(items, role_key, parts_key)

    @signature({"types": []})
    def _func_tool_names_by_id(self, messages: JSON) -> dict[str, JSON]:
        return tool_names_by_id(messages)


JMESPATH_OPTIONS = jmespath.Options(custom_functions=EngineFunctions())
"""Pass to every `ParsedResult.search`; shared by all requests."""


# -- Jinja -----------------------------------------------------------------------------------------

JINJA_FILTERS: dict[str, Callable[..., Any]] = {
    "json_encode": json_encode,
    "json_decode": json_decode,
    "strip_keys": strip_keys,
    "short_name": short_name,
    "short_id": short_id,
    "with_previous": with_previous,
    "text_of": text_of,
    "blocks": blocks,
    "data_url": data_url,
    "effort_from_budget": effort_from_budget,
    "integers": integers,
    "decode_signature": decode_signature,
    "is_engine_signature": is_engine_signature,
    "openapi_schema": openapi_schema,
    "merge_turns": merge_turns,
    "tool_names_by_id": tool_names_by_id,
}
"""Filters the compiler installs: `{{ schema | strip_keys(['format']) }}`."""

JINJA_GLOBALS: dict[str, Any] = {
    "new_id": new_id,
    "encode_signature": encode_signature,
}
"""Functions with no natural input value, called directly: `{{ new_id('toolu_') }}`."""


# -- registry and reference ------------------------------------------------------------------------

Kind = Literal["jmespath", "jinja", "both"]

CATEGORIES = ("JSON", "Ids and names", "Content", "Schemas", "Reasoning")
"""Reference order of the categories."""


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter: its JMESPath type, what it means, and its default as written (None: required)."""

    name: str
    type: str
    description: str
    default: str | None = None


@dataclass(frozen=True, slots=True)
class Example:
    """One documented call: the argument values and the expected result.

    The JMESPath and Jinja expressions shown in the reference are generated from `args`, and the
    example test evaluates exactly those expressions.
    """

    args: tuple[JSON, ...]
    output: JSON
    note: str = ""


@dataclass(frozen=True, slots=True)
class FunctionDoc:
    """The documentation of one function: what it does, how to call it, and examples that are tests."""

    name: str
    kind: Kind
    description: str
    category: str
    params: tuple[Param, ...]
    returns: str
    examples: tuple[Example, ...]
    jinja_form: Literal["filter", "global"] = "filter"

    @property
    def signature(self) -> str:
        params = ", ".join(
            f"{p.name}: {p.type}" + (f" = {p.default}" if p.default is not None else "") for p in self.params
        )
        return f"{self.name}({params}) -> {self.returns}"

    @property
    def min_args(self) -> int:
        return sum(1 for p in self.params if p.default is None)

    @property
    def max_args(self) -> int:
        return len(self.params)

    @property
    def in_jmespath(self) -> bool:
        return self.kind in ("jmespath", "both")

    @property
    def in_jinja(self) -> bool:
        return self.kind in ("jinja", "both")

    def jmespath_expression(self, example: Example) -> str:
        return f"{self.name}({', '.join(_jmespath_literal(a) for a in example.args)})"

    def jinja_expression(self, example: Example) -> str:
        """The expression inside `{{ }}`: a filter applied to the first argument, or a global call."""
        args = [_jinja_literal(a) for a in example.args]
        if self.jinja_form == "global":
            return f"{self.name}({', '.join(args)})"
        rest = f"({', '.join(args[1:])})" if len(args) > 1 else ""
        return f"{args[0]} | {self.name}{rest}"


def _jmespath_literal(value: JSON) -> str:
    """A raw string literal for plain one-line strings, a JSON literal for everything else."""
    if isinstance(value, str) and value.isprintable() and "\\" not in value:
        return "'" + value.replace("'", "\\'") + "'"
    return "`" + json_encode(value).replace("`", "\\`") + "`"


def _jinja_literal(value: JSON) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_jinja_literal(k)}: {_jinja_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_jinja_literal(v) for v in value) + "]"
    return repr(value)


_SAMPLE_SCHEMA = {
    "type": "object",
    "properties": {"format": {"type": "string", "format": "uri"}},
    "additionalProperties": False,
}
_LOOSE_SCHEMA = {
    "type": "object",
    "properties": {
        "path": {"type": ["string", "null"], "format": "uri"},
        "mode": {"const": "fast"},
        "limit": {"type": "integer", "exclusiveMinimum": 0},
    },
    "required": ["path", "gone"],
    "additionalProperties": False,
}
_TURNS = [
    {"role": "user", "parts": [{"text": "Hi"}]},
    {"role": "user", "parts": [{"text": "Read notes.md"}]},
    {"role": "model", "parts": []},
    {"role": "model", "parts": [{"text": "Sure."}]},
]
_TOOL_LOOP = [
    {"role": "user", "content": "Read notes.md, then list the files"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Reading."},
        {"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {"file_path": "notes.md"}},
        {"type": "tool_use", "id": "toolu_02", "name": "Bash", "input": {"command": "ls"}},
    ]},
]
_LONG_MCP_NAME = "mcp__" + "acme-internal-knowledge-base__" + "search_documents_by_semantic_similarity_v2"
_GEMINI_SIGNATURE = "ccpx1.eyJwIjoiZ2VtaW5pIiwibSI6ImdlbWluaS0yLjUtcHJvIiwiZCI6ImMybG5MVEUifQ"
_ANTHROPIC_LIKE_SIGNATURE = "EqQBCkgIARABGAIiQJ2x0XxQ+uHqYyNWAw=="
_BLOCKS = [
    {"type": "text", "text": "Hello"},
    {"type": "thinking", "thinking": "hmm", "signature": "x"},
    {"type": "text", "text": "world"},
]

_DOCS = (
    FunctionDoc(
        "json_encode", "both",
        "Compact JSON text of a value, with non-ASCII characters kept and keys in their given order "
        "(the built-in `to_string` escapes non-ASCII and returns strings unquoted).",
        "JSON",
        (Param("value", "any", "the value to encode"),),
        "string",
        (
            Example(({"path": "notes/résumé.md", "limit": 10},), '{"path":"notes/résumé.md","limit":10}'),
            Example(("plain",), '"plain"'),
        ),
    ),
    FunctionDoc(
        "json_decode", "both",
        "The value encoded by a JSON text; null when the text is null or not valid JSON, so one "
        "broken tool-call argument string does not fail the whole response.",
        "JSON",
        (Param("text", "string | null", "JSON text"),),
        "any",
        (
            Example(('{"command":"ls","timeout":5}',), {"command": "ls", "timeout": 5}),
            Example(('{"command": "l',), None, "invalid JSON gives null"),
            Example((None,), None),
        ),
    ),
    FunctionDoc(
        "new_id", "both",
        "A fresh id: the prefix followed by 24 random base62 characters.",
        "Ids and names",
        (Param("prefix", "string", 'text before the random part, e.g. "toolu_"'),),
        "string",
        (
            Example(
                ("toolu_",),
                "toolu_000000000000000000000001",
                "tests use deterministic ids; real ids are random",
            ),
        ),
        jinja_form="global",
    ),
    FunctionDoc(
        "short_name", "both",
        "A valid tool name of at most max_len characters: valid names pass unchanged, invalid "
        "characters become `_`, and longer names are cut and end in `_` plus 8 hex digits of the "
        "SHA-1 of the original, so the result is deterministic and distinct names stay distinct.",
        "Ids and names",
        (
            Param("name", "string", "the tool name"),
            Param("max_len", "number", "the longest allowed name (at least 10)", "64"),
        ),
        "string",
        (
            Example(("mcp__github__create_issue",), "mcp__github__create_issue"),
            Example(("mcp__docs.server__search",), "mcp__docs_server__search_00201f18"),
            Example((_LONG_MCP_NAME,), "mcp__acme-internal-knowledge-base__search_documents_by__a8abfff6"),
            Example((_LONG_MCP_NAME, 32), "mcp__acme-internal-know_a8abfff6"),
        ),
    ),
    FunctionDoc(
        "short_id", "both",
        "A tool-call id of exactly length ASCII letters and digits (Mistral takes no other): an id "
        "that already is one passes unchanged, any other becomes the first length base62 digits of "
        "its SHA-256. Deterministic, so a call and its result still match, and idempotent, so ids "
        "the provider issued survive the round trip through the client.",
        "Ids and names",
        (
            Param("id", "string", "a tool_use or tool_result id"),
            Param("length", "number", "the exact length required (1 to 40)"),
        ),
        "string",
        (
            Example(("toolu_01A09q90qw90lq917835lq9", 9), "L4lugQ9Qs"),
            Example(("a1B2c3D4e", 9), "a1B2c3D4e", "already 9 letters and digits: unchanged"),
            Example(("call_0", 9), "MUPikt56d"),
        ),
    ),
    FunctionDoc(
        "text_of", "both",
        "The plain text of an Anthropic content value: a string as it is, the text of the `text` "
        "blocks of a list joined by sep (thinking and other blocks are skipped), empty for null.",
        "Content",
        (
            Param("content", "string | array | null", "a `content` value"),
            Param("sep", "string", "put between the texts of two blocks", '"\\n"'),
        ),
        "string",
        (
            Example((_BLOCKS,), "Hello\nworld"),
            Example((_BLOCKS, " "), "Hello world"),
            Example(("Just text",), "Just text"),
            Example((None,), ""),
        ),
    ),
    FunctionDoc(
        "blocks", "jinja",
        "An Anthropic content value as a list of blocks: a string becomes one text block, a list "
        "stays as it is, null and the empty string become an empty list.",
        "Content",
        (Param("content", "string | array | null", "a `content` value"),),
        "array",
        (
            Example(("Hi",), [{"type": "text", "text": "Hi"}]),
            Example(([{"type": "text", "text": "Hi"}],), [{"type": "text", "text": "Hi"}]),
            Example((None,), []),
        ),
    ),
    FunctionDoc(
        "data_url", "jinja",
        "Where an image or document source can be fetched: a `data:` URL for base64 data, the URL "
        "of a url source, null for any other source (file ids, text).",
        "Content",
        (Param("source", "object", "the `source` of an image or document block"),),
        "string | null",
        (
            Example(
                ({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},),
                "data:image/png;base64,iVBORw0KGgo=",
            ),
            Example(({"type": "url", "url": "https://example.com/cat.png"},), "https://example.com/cat.png"),
            Example(({"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"},), None),
        ),
    ),
    FunctionDoc(
        "strip_keys", "both",
        "A copy of a JSON value (usually a tool's JSON Schema) without the named keys in any object, "
        "where names of properties and definitions are never taken for keywords and data keywords "
        "(`enum`, `const`, `default`, `examples`, `example`) are copied as they are.",
        "Schemas",
        (
            Param("value", "any", "the value to clean; it is not modified"),
            Param("keys", "array-string", "the keys to remove"),
        ),
        "any",
        (
            Example(
                (_SAMPLE_SCHEMA, ["additionalProperties", "format"]),
                {"type": "object", "properties": {"format": {"type": "string"}}},
                "the property named format survives; its format keyword does not",
            ),
        ),
    ),
    FunctionDoc(
        "integers", "both",
        "The whole numbers written in a text, in order (`128,000` reads as one number); an empty "
        "list for anything but a string. Reads token counts out of provider error messages.",
        "Content",
        (Param("text", "any", "usually an error message"),),
        "array",
        (
            Example(("Maximum context length is 128000 tokens; you sent 130512 tokens.",), [128000, 130512]),
            Example(("limit 1,048,576 exceeded by gemini-2.5-pro",), [1048576]),
            Example((None,), []),
        ),
    ),
    FunctionDoc(
        "with_previous", "both",
        "Each element of a list paired with the one before it, as `{previous, item}` (the first "
        "element's previous is null); an empty list for anything but a list. A rule iterating "
        "with `$each` sees one element at a time; this lets it react to what came before, e.g. "
        "put a message between two that a provider will not take in a row.",
        "Content",
        (Param("items", "any", "a list, e.g. the messages built so far"),),
        "array",
        (
            Example((["tool", "user"],), [{"previous": None, "item": "tool"},
                                            {"previous": "tool", "item": "user"}]),
            Example(([],), []),
            Example((None,), []),
        ),
    ),
    FunctionDoc(
        "effort_from_budget", "both",
        'The reasoning effort for a thinking budget: below 4096 tokens "low", below 16384 "medium", '
        'otherwise "high"; null without a budget.',
        "Reasoning",
        (Param("budget_tokens", "number | null", "`thinking.budget_tokens`"),),
        "string | null",
        (
            Example((1024,), "low"),
            Example((10000,), "medium"),
            Example((32000,), "high"),
            Example((None,), None),
        ),
    ),
    FunctionDoc(
        "encode_signature", "both",
        "A thinking-block signature that carries a provider's reasoning data through an Anthropic "
        "client: `ccpx1.` plus unpadded base64url of `{p: provider, m: model, d: data}`; an honest "
        "envelope, never an imitation of an Anthropic signature.",
        "Reasoning",
        (
            Param("provider", "string", "the provider the data belongs to (its rule file's stem)"),
            Param("model", "string | null", "the model that produced it"),
            Param("data", "any", "what the provider needs back, e.g. a Gemini thoughtSignature"),
        ),
        "string",
        (Example(("gemini", "gemini-2.5-pro", "c2lnLTE"), _GEMINI_SIGNATURE),),
        jinja_form="global",
    ),
    FunctionDoc(
        "decode_signature", "both",
        "The data inside an engine signature made for this provider; null for envelopes of another "
        "provider, genuine Anthropic signatures and anything else.",
        "Reasoning",
        (
            Param("signature", "string | null", "a thinking block's `signature`"),
            Param("provider", "string", "the provider that is about to receive the data"),
        ),
        "any",
        (
            Example((_GEMINI_SIGNATURE, "gemini"), "c2lnLTE"),
            Example((_GEMINI_SIGNATURE, "openai"), None, "made for another provider"),
            Example((_ANTHROPIC_LIKE_SIGNATURE, "gemini"), None, "not an engine envelope"),
        ),
    ),
    FunctionDoc(
        "is_engine_signature", "both",
        "Whether a signature is an engine envelope (of any provider) rather than an Anthropic one.",
        "Reasoning",
        (Param("signature", "any", "a thinking block's `signature`"),),
        "boolean",
        (
            Example((_GEMINI_SIGNATURE,), True),
            Example((_ANTHROPIC_LIKE_SIGNATURE,), False),
        ),
    ),
    FunctionDoc(
        "openapi_schema", "both",
        "A tool's JSON Schema rewritten in the OpenAPI 3.0 subset that typed schema fields accept "
        "(Gemini's `parameters`): local `$ref`s inlined, `allOf` merged, `oneOf` read as `anyOf`, "
        "null types and branches as `nullable`, `const` as a one-value `enum`, enum values as "
        "strings, exclusive bounds as inclusive ones, `required` limited to declared properties; "
        "then only the given keywords are kept, and `format` only with one of the given values. "
        "Property names are never taken for keywords.",
        "Schemas",
        (
            Param("schema", "any", "the JSON Schema; it is not modified"),
            Param("keywords", "array-string", "the keywords to keep"),
            Param("formats", "array-string", "the `format` values to keep"),
        ),
        "any",
        (
            Example(
                (_LOOSE_SCHEMA, ["type", "properties", "required", "nullable", "enum", "minimum", "format"],
                 ["date-time"]),
                {"type": "object",
                 "properties": {"path": {"type": "string", "nullable": True}, "mode": {"enum": ["fast"]},
                                "limit": {"type": "integer", "minimum": 1}},
                 "required": ["path"]},
            ),
        ),
    ),
    FunctionDoc(
        "merge_turns", "both",
        "Consecutive items with the same role merged into one that holds all their parts, in order; "
        "items without parts are left out first. For providers that want strictly alternating turns.",
        "Content",
        (
            Param("items", "any", "the turns, e.g. Gemini `contents`"),
            Param("role_key", "string", "the key holding an item's role"),
            Param("parts_key", "string", "the key holding an item's list of parts"),
        ),
        "array",
        (Example((_TURNS, "role", "parts"),
                 [{"role": "user", "parts": [{"text": "Hi"}, {"text": "Read notes.md"}]},
                  {"role": "model", "parts": [{"text": "Sure."}]}]),),
    ),
    FunctionDoc(
        "tool_names_by_id", "both",
        "The name of every tool call in an Anthropic message list, by tool_use id: what a provider "
        "that answers tool results by function name (Gemini) needs, since a `tool_result` carries "
        "only the id.",
        "Content",
        (Param("messages", "any", "the request's `messages`"),),
        "object",
        (Example((_TOOL_LOOP,), {"toolu_01": "Read", "toolu_02": "Bash"}),),
    ),
)

FUNCTIONS: dict[str, FunctionDoc] = {doc.name: doc for doc in _DOCS}
"""Every function and filter rule files may use, by name; the source of the reference."""


def render_reference_markdown() -> str:
    """The function reference section of docs/rules.md, grouped by category."""
    lines = [
        "## Functions and filters",
        "",
        "<!-- Generated by ccproxy_engine._functions.render_reference_markdown(); edit FUNCTIONS, "
        "not this section. -->",
        "",
        "Selectors (JMESPath) may call the JMESPath built-ins and the functions below; templates "
        "(Jinja) may use the filters and globals below. A function that exists on both sides has "
        "the same name and behaves the same. Every example here is run by the test suite.",
    ]
    for category in CATEGORIES:
        lines += ["", f"### {category}"]
        for doc in _DOCS:
            if doc.category == category:
                lines += ["", *_render_function(doc)]
    return "\n".join(lines) + "\n"


def _render_function(doc: FunctionDoc) -> list[str]:
    sides = []
    if doc.in_jmespath:
        sides.append("JMESPath function")
    if doc.in_jinja:
        sides.append(f"Jinja {doc.jinja_form}")
    lines = [
        f"#### `{doc.name}`",
        "",
        f"*{' · '.join(sides)}* — `{doc.signature}`",
        "",
        doc.description,
        "",
        "| parameter | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for p in doc.params:
        default = f"`{p.default}`" if p.default is not None else "required"
        cells = (f"`{p.name}`", p.type, default, p.description)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines += ["", "```text"]
    for i, example in enumerate(doc.examples):
        if i:
            lines.append("")
        if example.note:
            lines.append(f"# {example.note}")
        if doc.in_jmespath:
            lines.append(f"# In:  {doc.jmespath_expression(example)}")
        if doc.in_jinja:
            lines.append(f"# In:  {{{{ {doc.jinja_expression(example)} }}}}")
        lines.append(f"# Out: {json_encode(example.output)}")
    lines.append("```")
    return lines
