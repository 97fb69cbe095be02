"""Reasoning from other providers, kept out of requests to Anthropic (the passthrough provider).

A conversation that began on another provider carries its reasoning in the client's history:
thinking blocks whose signature is the engine's envelope (``ccpx1.…``, see `_functions.encode_signature`)
and redacted_thinking blocks whose data is one. Anthropic checks every signature it is sent and
refuses those (400 "Invalid `signature` in `thinking` block"), so a fallback to Anthropic, or a
client that switches models mid-conversation, would fail on history it cannot change.

The choice made here: such blocks are dropped, never converted. Turning another model's reasoning
into text would put words in the assistant's mouth that it never said to the user, and Anthropic
ignores the thinking of earlier turns anyway. One case needs more: with manual thinking
(``{"type": "enabled", "budget_tokens": N}``) Anthropic requires the assistant turn of a tool loop in
progress (the first assistant message after the last real user message, when the conversation ends
with tool results) to start with a thinking block. No valid one exists for a turn another provider
thought through, so that request is sent with thinking disabled (and without the ``clear_thinking``
context edit, which needs thinking on): the model finishes the tool loop without extended thinking,
and the next user turn thinks again. Adaptive thinking lets the model skip thinking, so a turn
without it is valid there and thinking stays as the client asked (Claude Code's case).

Pure functions over the parsed body: the client's body is never mutated, and a body with nothing
to strip is forwarded as the client's own bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ._functions import SIGNATURE_PREFIX

__all__ = ["NO_CONTENT", "is_foreign_thinking", "passthrough_body", "strip_foreign_thinking"]

NO_CONTENT = "(no content)"
"""Text for an assistant message that held nothing but foreign reasoning (Anthropic refuses empty
content; Claude Code writes the same placeholder for an empty answer)."""

_THINKING_TYPES = ("thinking", "redacted_thinking")
_CLEAR_THINKING = "clear_thinking_"


def is_foreign_thinking(block: Any) -> bool:
    """A reasoning block Anthropic did not sign: a thinking block whose signature is an engine envelope
    or missing, or a redacted_thinking block whose data is an engine envelope."""
    if not isinstance(block, Mapping):
        return False
    kind = block.get("type")
    if kind == "thinking":
        signature = block.get("signature")
        return not isinstance(signature, str) or not signature or signature.startswith(SIGNATURE_PREFIX)
    if kind == "redacted_thinking":
        data = block.get("data")
        return isinstance(data, str) and data.startswith(SIGNATURE_PREFIX)
    return False


def strip_foreign_thinking(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """`body` without foreign reasoning blocks (a new dict; `body` is untouched), or None when it has none.

    An assistant message left empty gets `NO_CONTENT`; when the tool loop in progress then lacks the
    thinking block Anthropic requires, thinking is disabled for this request (module docstring).
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    cleaned: list[Any] | None = None
    for index, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        if _role(message) != "assistant" or not isinstance(content, list):
            continue
        kept = [block for block in content if not is_foreign_thinking(block)]
        if len(kept) == len(content):
            continue
        if cleaned is None:
            cleaned = list(messages)
        cleaned[index] = {**message, "content": kept or [{"type": "text", "text": NO_CONTENT}]}
    if cleaned is None:
        return None
    stripped = {**body, "messages": cleaned}
    if _thinking_on(body) and _tool_loop_lacks_thinking(cleaned):
        _disable_thinking(stripped)
    return stripped


def passthrough_body(body: Mapping[str, Any], raw: bytes | None) -> bytes:
    """The bytes to forward to an Anthropic upstream: the client's own (`raw`, when it still says what
    `body` says) if nothing needs stripping, else the stripped body encoded."""
    stripped = strip_foreign_thinking(body)
    if stripped is None:
        return raw if raw is not None else orjson.dumps(body)
    return orjson.dumps(stripped)


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, Mapping) else None


def _thinking_on(body: Mapping[str, Any]) -> bool:
    """Manual thinking, the mode in which every step of a tool loop's turn must have thought first."""
    thinking = body.get("thinking")
    return isinstance(thinking, Mapping) and thinking.get("type") == "enabled"


def _blocks(message: Any) -> list[Any]:
    content = message.get("content") if isinstance(message, Mapping) else None
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content if isinstance(content, list) else []


def _only_tool_results(message: Any) -> bool:
    blocks = _blocks(message)
    return bool(blocks) and all(isinstance(b, Mapping) and b.get("type") == "tool_result" for b in blocks)


def _tool_loop_lacks_thinking(messages: Sequence[Any]) -> bool:
    """The conversation ends inside a tool loop (tool results last) whose assistant turn, begun after
    the last real user message, does not start with a thinking block."""
    if not messages or _role(messages[-1]) != "user" or not _only_tool_results(messages[-1]):
        return False
    start = 0
    for index in range(len(messages) - 1, -1, -1):
        if _role(messages[index]) == "user" and not _only_tool_results(messages[index]):
            start = index + 1
            break
    for message in messages[start:]:
        if _role(message) == "assistant":
            blocks = _blocks(message)
            first = blocks[0] if blocks else None
            return not (isinstance(first, Mapping) and first.get("type") in _THINKING_TYPES)
    return False


def _disable_thinking(body: dict[str, Any]) -> None:
    """Thinking off, and the context edits that need it on left out (on `body`, a fresh copy)."""
    body["thinking"] = {"type": "disabled"}
    management = body.get("context_management")
    if not isinstance(management, Mapping):
        return
    edits = management.get("edits")
    if not isinstance(edits, list):
        return
    kept = [edit for edit in edits
            if not (isinstance(edit, Mapping) and str(edit.get("type", "")).startswith(_CLEAR_THINKING))]
    if len(kept) == len(edits):
        return
    if kept:
        body["context_management"] = {**management, "edits": kept}
    else:
        del body["context_management"]
