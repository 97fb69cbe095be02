"""Every type alias of the engine, and the normalized delta vocabulary shared by every stage.

A provider's compiled rules turn each upstream chunk (streamed) or body (not streamed) into a list of
*normalized deltas*. Two consumers read them: `StreamMachine` (Anthropic SSE events) and
`MessageBuilder` (one Anthropic message). Neither knows which provider produced them, which is what
keeps provider differences in `rules/`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

JSON: TypeAlias = Any
"""A decoded JSON value: dict, list, str, int, float, bool or None."""

JSONObject: TypeAlias = dict[str, Any]

Scope: TypeAlias = dict[str, Any]
"""The names a compiled template sees while it runs (``request``, ``model``, ``provider``, ...)."""

Transformer: TypeAlias = Callable[[Scope], Any]
"""A compiled rule fragment: takes the evaluation scope, returns a native value."""

Selector: TypeAlias = Callable[[Any], Any]
"""A compiled JMESPath selector: takes a JSON value, returns what the expression selects (or None)."""

KeyPath: TypeAlias = tuple[str | int, ...]
"""Where a value sits in a YAML document or a JSON body: mapping keys and list indices from the top."""

TokenCount: TypeAlias = Callable[[], Awaitable[int]]
"""A request's token count, computed on first await and shared by everything that asks."""

IdSource: TypeAlias = Callable[[int], str]
"""Random id text of a given length (swapped for a deterministic source in tests)."""

SSEEvent: TypeAlias = tuple[str, JSONObject]
"""An Anthropic stream event as (event name, data payload); `_sse.encode_event` makes bytes of it."""


@dataclass(slots=True)
class TextDelta:
    """A piece of answer text."""

    text: str


@dataclass(slots=True)
class ThinkingDelta:
    """A piece of reasoning text, and/or the opaque signature that closes the reasoning block."""

    thinking: str = ""
    signature: str | None = None


@dataclass(slots=True)
class RedactedThinkingDelta:
    """Reasoning the upstream returned encrypted (OpenRouter's ``reasoning.encrypted``): opaque data
    that becomes one whole ``redacted_thinking`` block, its data wrapped in the engine's envelope."""

    data: str


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of one tool call.

    `key` identifies the call within the response (OpenAI's `tool_calls[].index`; None when the
    upstream omits it). `id` and `name` arrive on the first fragment in the reference behaviour but
    may come late or repeat; `arguments` is a JSON text fragment (or the whole text), never parsed here.
    """

    key: int | str | None = None
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class FinishDelta:
    """The upstream said why it stopped, already mapped to an Anthropic `stop_reason`.

    `stop_reason` is None when the rules have no mapping for `raw` (an unknown finish reason).
    """

    stop_reason: str | None
    raw: str | None = None
    stop_sequence: str | None = None


@dataclass(slots=True)
class UsageDelta:
    """Token usage in Anthropic terms. Later usage replaces earlier usage (upstream totals are cumulative).

    `input_tokens` already excludes cache reads and writes.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


@dataclass(slots=True)
class ErrorDelta:
    """The upstream reported an error inside a response that had already started (HTTP 200).

    `message` is what the client reads, already naming the provider (the decoder that found the
    error knows which one it is)."""

    error_type: str
    message: str


Delta: TypeAlias = (TextDelta | ThinkingDelta | RedactedThinkingDelta | ToolCallDelta | FinishDelta | UsageDelta
                   | ErrorDelta)
