"""Normalized deltas → Anthropic: the SSE event stream (`StreamMachine`) or one message (`MessageBuilder`).

Both read the provider-neutral deltas of `_types` and share the tool-call routing of protocols.md 5.2,
so a streamed answer and the same answer not streamed come out with the same blocks. Pure code: no
I/O, no clocks; the caller writes the events and decides when to `ping()`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ._errors import STATUS_ERROR_TYPES, UpstreamProtocolError, UpstreamStatusError
from ._functions import new_id
from ._types import (
    Delta,
    ErrorDelta,
    FinishDelta,
    JSONObject,
    RedactedThinkingDelta,
    SSEEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    UsageDelta,
)

__all__ = ["MessageBuilder", "StopScanner", "StreamMachine", "emulated_stop_sequences", "new_message_id",
           "new_tool_use_id", "repair_json", "stop_scanner"]

logger = logging.getLogger("ccproxy_engine.stream")


_TEXT, _THINKING, _TOOL, _REDACTED = "text", "thinking", "tool_use", "redacted_thinking"

#: Anthropic error type → HTTP status, for an error reported inside a 200 answer.
_ERROR_STATUSES: dict[str, int] = {error_type: status for status, error_type in STATUS_ERROR_TYPES.items()}


def new_message_id() -> str:
    """``msg_`` + 24 base62 characters (from `_functions.new_id`, so tests can make ids deterministic)."""
    return new_id("msg_")


def new_tool_use_id() -> str:
    """``toolu_`` + 24 base62 characters, for a tool call whose upstream sent no id."""
    return new_id("toolu_")


@dataclass(slots=True, eq=False)
class _ToolCall:
    """One upstream tool call, gathered from its fragments."""

    id: str | None = None
    name: str | None = None
    args: list[str] = field(default_factory=list)
    opened: bool = False
    """Its tool_use block has started (which needs a name)."""
    dropped: bool = False
    """The stream already logged a fragment it could not send for this call."""


class _ToolRouter:
    """Sends each `ToolCallDelta` to the call it belongs to (protocols.md 5.2, routing rules 1-4).

    Robust to the known provider quirks: index missing, id repeated on every fragment, an index
    reused by a second call with a new id, and continuation fragments with neither index nor id.
    """

    __slots__ = ("_by_id", "_by_key", "_last", "calls")

    def __init__(self) -> None:
        self.calls: list[_ToolCall] = []
        self._by_key: dict[int | str, _ToolCall] = {}
        self._by_id: dict[str, _ToolCall] = {}
        self._last: _ToolCall | None = None

    def route(self, delta: ToolCallDelta) -> _ToolCall:
        """The call `delta` continues (created if new), with its id and name filled in from `delta`."""
        call_id, key = delta.id, delta.key
        call = self._by_id.get(call_id) if call_id else None
        if call is None:
            if key is not None:
                call = self._by_key.get(key)
                if call is None or (call_id and call.id and call.id != call_id):
                    # A new index, or an index reused by a call with a different id: a new call,
                    # and from now on id-less fragments with this index continue the new one.
                    call = self._new()
                    self._by_key[key] = call
            elif call_id or self._last is None:
                call = self._new()
            else:
                call = self._last
        if call_id and call.id is None:
            call.id = call_id
            self._by_id[call_id] = call
        if delta.name and not call.name:
            call.name = delta.name
        return call

    def _new(self) -> _ToolCall:
        call = _ToolCall()
        self.calls.append(call)
        self._last = call
        return call


class _Usage:
    """Token usage merged field by field: a later non-None value replaces the earlier one."""

    __slots__ = ("cache_creation_input_tokens", "cache_read_input_tokens", "input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cache_read_input_tokens: int | None = None
        self.cache_creation_input_tokens: int | None = None

    def merge(self, delta: UsageDelta) -> None:
        if delta.input_tokens is not None:
            self.input_tokens = delta.input_tokens
        if delta.output_tokens is not None:
            self.output_tokens = delta.output_tokens
        if delta.cache_read_input_tokens is not None:
            self.cache_read_input_tokens = delta.cache_read_input_tokens
        if delta.cache_creation_input_tokens is not None:
            self.cache_creation_input_tokens = delta.cache_creation_input_tokens


def _stop_reason(finish: FinishDelta, saw_tool_use: bool) -> str:
    """The final `stop_reason` (protocols.md 4.7): tool calls present ⇒ tool_use; no tool_use without one."""
    reason = finish.stop_reason or "end_turn"
    if reason == "end_turn" and saw_tool_use:
        return "tool_use"
    if reason == "tool_use" and not saw_tool_use:
        return "end_turn"
    return reason


def _unknown_finish(finish: FinishDelta) -> str:
    """An unknown finish reason with nothing produced is a failure, not an empty end_turn (4.7)."""
    return f"upstream stopped with finish reason '{finish.raw}' and produced no content"


def _drop_unnamed(provider: str, calls: list[_ToolCall]) -> None:
    """Warn about calls whose name never came: a tool_use block without a name is useless to a client."""
    for call in calls:
        if not call.opened:
            logger.warning("[%s] dropped tool call %s: no name arrived (arguments %.200r)",
                           provider, call.id, "".join(call.args))


class StopScanner:
    """Finds the client's `stop_sequences` in answer text the upstream streams (protocols.md 5.5).

    OpenAI and Gemini stop before a stop string and never say which one matched, so the proxy owns
    them: text goes through `feed`, which returns what may be sent now and holds back the longest
    tail that could still become a match. The first sequence to complete wins (the one whose last
    character comes earliest; at the same end, the one that starts earlier), however the text was
    split into deltas. Text of one block only: `flush` releases the held tail at a block boundary
    or a normal finish, so a match never spans a thinking block or a tool call.
    """

    __slots__ = ("_firsts", "_held", "_longest", "_prefixes", "_sequences", "matched")

    def __init__(self, sequences: Sequence[str]) -> None:
        self._sequences = tuple(dict.fromkeys(s for s in sequences if s))
        self._longest = max(map(len, self._sequences), default=0)
        self._prefixes = frozenset(s[:size] for s in self._sequences for size in range(1, len(s)))
        """Every proper prefix: what a held-back tail may be."""
        self._firsts = frozenset(s[0] for s in self._sequences if len(s) > 1)
        self._held = ""
        self.matched: str | None = None
        """The sequence that matched; once set, `feed` returns nothing more."""

    @property
    def sequences(self) -> tuple[str, ...]:
        """The distinct non-empty sequences scanned for."""
        return self._sequences

    def feed(self, text: str) -> str:
        """The part of `held + text` that can be sent: up to a match, or all but a possible prefix."""
        if self.matched is not None:
            return ""
        buffer = self._held + text
        best: tuple[int, int, str] | None = None
        for sequence in self._sequences:
            start = buffer.find(sequence)
            if start >= 0:
                candidate = (start + len(sequence), start, sequence)
                if best is None or candidate < best:
                    best = candidate
        if best is not None:
            self._held, self.matched = "", best[2]
            return buffer[:best[1]]
        keep = self._prefix_length(buffer)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[:len(buffer) - keep]

    def flush(self) -> str:
        """The held-back tail, which can no longer complete a match (the text block ended)."""
        held, self._held = self._held, ""
        return held

    def _prefix_length(self, buffer: str) -> int:
        """The length of the longest tail of `buffer` that is a proper prefix of some sequence. Only a
        tail that starts with a sequence's first character can be one, and `str.find` finds those."""
        start = max(0, len(buffer) - self._longest + 1)
        best = 0
        for first in self._firsts:
            at = buffer.find(first, start)
            while at >= 0 and len(buffer) - at > best:
                if buffer[at:] in self._prefixes:
                    best = len(buffer) - at
                    break
                at = buffer.find(first, at + 1)
        return best


def emulated_stop_sequences(body: Mapping[str, Any], emulate: bool) -> tuple[str, ...]:
    """The request's distinct non-empty ``stop_sequences`` when the provider's rules emulate them, else ()."""
    sequences = body.get("stop_sequences") if emulate else None
    if not isinstance(sequences, list):
        return ()
    return tuple(dict.fromkeys(s for s in sequences if isinstance(s, str) and s))


def stop_scanner(sequences: Sequence[str]) -> StopScanner | None:
    """A fresh scanner for one answer (it keeps state), or None when there is nothing to scan for."""
    return StopScanner(sequences) if sequences else None


class StreamMachine:
    """Turns normalized deltas into a well-formed Anthropic event stream (protocols.md 5.1/5.2).

    Invariants of its output, whatever the deltas:

    * ``message_start`` comes first (`feed` starts the message if `start` was not called); only
      `fail` before anything was sent yields a lone ``error`` (see `is_started`);
    * block indices are 0, 1, 2, … strictly increasing in start order, and an index never reopens;
    * exactly one block is open at a time: the open block is stopped before the next one starts;
    * a delta's type matches its block (text_delta/text, thinking_delta and signature_delta/thinking,
      input_json_delta/tool_use), and every thinking block gets a ``signature_delta`` before its stop;
    * ``message_delta`` then ``message_stop`` end the stream exactly once;
    * an ``error`` event ends it too, and nothing follows it (nor anything after ``message_stop``).

    Tool arguments stream live; a fragment for a call whose block is already closed cannot be sent
    and is logged instead (5.2 option 2). The machine never invents an ``end_turn``: an upstream
    that stops without a finish reason gets an ``api_error`` event.

    With a `StopScanner` (`stop`), answer text is scanned for the client's stop sequences: text is
    sent up to the match, every later content delta is dropped (usage still counts), and
    `is_stopped` tells the caller to `finish()` (``stop_reason: stop_sequence``) and close the upstream.
    """

    __slots__ = (
        "_done", "_finish", "_index", "_input_tokens", "_message_id", "_model", "_next_index", "_open_call",
        "_open_kind", "_provider", "_saw_tool_use", "_sign", "_signature", "_started", "_stop", "_tool_names",
        "_tools", "_usage",
    )

    def __init__(self, *, provider: str, message_id: str, model: str,
                 tool_names: Mapping[str, str] | None = None,
                 sign: Callable[[str | None], str] | None = None, input_tokens: int = 0,
                 stop: StopScanner | None = None) -> None:
        self._stop = stop
        self._provider = provider
        self._message_id = message_id
        self._model = model
        self._tool_names = tool_names
        self._sign = sign
        self._input_tokens = input_tokens
        self._started = False
        self._done = False
        self._next_index = 0
        self._index = -1
        """Index of the open block (meaningful while `_open_kind` is set)."""
        self._open_kind: str | None = None
        self._open_call: _ToolCall | None = None
        self._signature: str | None = None
        """Upstream signature of the open thinking block."""
        self._saw_tool_use = False
        self._tools = _ToolRouter()
        self._finish: FinishDelta | None = None
        self._usage = _Usage()

    @property
    def is_started(self) -> bool:
        """``message_start`` was produced: from now on failures must be `error` events, not HTTP errors."""
        return self._started

    @property
    def is_done(self) -> bool:
        """``message_stop`` or ``error`` was produced; every later call returns nothing."""
        return self._done

    @property
    def is_stopped(self) -> bool:
        """A stop sequence matched: the answer is complete, `finish()` ends it (and the upstream can go)."""
        return self._stop is not None and self._stop.matched is not None

    def start(self) -> list[SSEEvent]:
        """``message_start`` (input tokens: the local estimate until upstream reports), then ``ping``."""
        if self._started or self._done:
            return []
        self._started = True
        message: JSONObject = {
            "id": self._message_id, "type": "message", "role": "assistant", "model": self._model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 1,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }
        return [("message_start", {"type": "message_start", "message": message}),
                ("ping", {"type": "ping"})]

    def feed(self, delta: Delta) -> list[SSEEvent]:
        """The events one delta causes (often none: finish and usage are only remembered)."""
        if self._done:
            return []
        out: list[SSEEvent] = [] if self._started else self.start()
        stop = self._stop
        if stop is not None and stop.matched is not None and not isinstance(delta, UsageDelta):
            return out  # the answer ended at the stop sequence; what the upstream adds is not part of it
        if isinstance(delta, TextDelta):
            self._text(delta.text, out)
        elif isinstance(delta, ToolCallDelta):
            self._flush_text(out)
            self._tool(delta, out)
        elif isinstance(delta, ThinkingDelta):
            self._thinking(delta, out)
        elif isinstance(delta, RedactedThinkingDelta):
            self._redacted(delta, out)
        elif isinstance(delta, UsageDelta):
            self._usage.merge(delta)
        elif isinstance(delta, FinishDelta):
            self._flush_text(out)
            self._finish = delta
        elif isinstance(delta, ErrorDelta):
            out += self.fail(delta.error_type, delta.message)
        else:
            raise TypeError(f"not a delta: {delta!r}")
        return out

    def finish(self) -> list[SSEEvent]:
        """Upstream EOF or ``[DONE]``: close the message, or report a stream cut short."""
        if self._done:
            return []
        if self.is_stopped:
            assert self._stop is not None and self._stop.matched is not None
            self._finish = FinishDelta("stop_sequence", "stop_sequence", self._stop.matched)
        if self._finish is None:
            what = "ended prematurely" if self._next_index else "ended without a response"
            return self.fail("api_error", f"[{self._provider}] upstream stream {what}")
        if self._finish.stop_reason is None and not self._next_index:
            return self.fail("api_error", f"[{self._provider}] {_unknown_finish(self._finish)}")
        out: list[SSEEvent] = [] if self._started else self.start()
        self._flush_text(out)
        self._close(out)
        _drop_unnamed(self._provider, self._tools.calls)
        usage = self._usage
        final: JSONObject = {"output_tokens": usage.output_tokens or 0}
        if usage.input_tokens is not None:
            final["input_tokens"] = usage.input_tokens
        if usage.cache_creation_input_tokens is not None:
            final["cache_creation_input_tokens"] = usage.cache_creation_input_tokens
        if usage.cache_read_input_tokens is not None:
            final["cache_read_input_tokens"] = usage.cache_read_input_tokens
        reason = _stop_reason(self._finish, self._saw_tool_use)
        stop_sequence = self._finish.stop_sequence if reason == "stop_sequence" else None
        out.append(("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": reason, "stop_sequence": stop_sequence},
                                      "usage": final}))
        out.append(("message_stop", {"type": "message_stop"}))
        self._done = True
        return out

    def fail(self, error_type: str, message: str) -> list[SSEEvent]:
        """An ``error`` event that ends the stream (no block stop, no ``message_delta``)."""
        if self._done:
            return []
        self._done = True
        return [("error", {"type": "error", "error": {"type": error_type, "message": message}})]

    def ping(self) -> list[SSEEvent]:
        """A keep-alive for a silent upstream; nothing before ``message_start`` or after the end."""
        if not self._started or self._done:
            return []
        return [("ping", {"type": "ping"})]

    def _text(self, text: str, out: list[SSEEvent]) -> None:
        self._send_text(self._stop.feed(text) if self._stop is not None else text, out)

    def _flush_text(self, out: list[SSEEvent]) -> None:
        """A block boundary or the finish: text held back for a possible stop sequence goes out."""
        if self._stop is not None:
            self._send_text(self._stop.flush(), out)

    def _send_text(self, text: str, out: list[SSEEvent]) -> None:
        if not text:
            return
        if self._open_kind is not _TEXT:
            self._open(out, _TEXT, {"type": "text", "text": ""})
        out.append(("content_block_delta", {"type": "content_block_delta", "index": self._index,
                                            "delta": {"type": "text_delta", "text": text}}))

    def _thinking(self, delta: ThinkingDelta, out: list[SSEEvent]) -> None:
        if not delta.thinking and not delta.signature:
            return
        self._flush_text(out)
        if self._open_kind is not _THINKING:
            self._open(out, _THINKING, {"type": "thinking", "thinking": "", "signature": ""})
        if delta.thinking:
            out.append(("content_block_delta", {"type": "content_block_delta", "index": self._index,
                                                "delta": {"type": "thinking_delta",
                                                          "thinking": delta.thinking}}))
        if delta.signature:
            self._signature = delta.signature

    def _redacted(self, delta: RedactedThinkingDelta, out: list[SSEEvent]) -> None:
        """A ``redacted_thinking`` block arrives whole in its start event (protocols.md 1.8) and stops at once."""
        if not delta.data:
            return
        self._flush_text(out)
        data = self._sign(delta.data) if self._sign is not None else delta.data
        self._open(out, _REDACTED, {"type": "redacted_thinking", "data": data})
        self._close(out)

    def _tool(self, delta: ToolCallDelta, out: list[SSEEvent]) -> None:
        call = self._tools.route(delta)
        fragment = delta.arguments
        if not call.opened:
            if fragment:
                call.args.append(fragment)
            if call.name:
                self._open_tool(call, out)
        elif call is self._open_call:
            if fragment:
                call.args.append(fragment)
                out.append(self._json_delta(fragment))
        elif fragment:
            call.args.append(fragment)
            if not call.dropped:  # once per call: an interleaving upstream would flood the log
                call.dropped = True
                logger.warning("[%s] tool call %s (%s) sent arguments after its block closed; dropped %.200r"
                               " and any later fragments", self._provider, call.id, call.name, fragment)

    def _open_tool(self, call: _ToolCall, out: list[SSEEvent]) -> None:
        if call.id is None:
            call.id = new_tool_use_id()
        name = call.name or ""
        if self._tool_names:
            name = self._tool_names.get(name, name)
        self._open(out, _TOOL, {"type": "tool_use", "id": call.id, "name": name, "input": {}})
        call.opened = True
        self._open_call = call
        self._saw_tool_use = True
        if call.args:
            out.append(self._json_delta("".join(call.args)))

    def _json_delta(self, fragment: str) -> SSEEvent:
        return ("content_block_delta", {"type": "content_block_delta", "index": self._index,
                                        "delta": {"type": "input_json_delta", "partial_json": fragment}})

    def _open(self, out: list[SSEEvent], kind: str, block: JSONObject) -> None:
        if self._open_kind is not None:
            self._close(out)
        self._index = index = self._next_index
        self._next_index += 1
        self._open_kind = kind
        out.append(("content_block_start", {"type": "content_block_start", "index": index,
                                            "content_block": block}))

    def _close(self, out: list[SSEEvent]) -> None:
        kind = self._open_kind
        if kind is None:
            return
        if kind is _THINKING:
            upstream, self._signature = self._signature, None
            signature = self._sign(upstream) if self._sign is not None else upstream or ""
            delta = {"type": "signature_delta", "signature": signature}
            out.append(("content_block_delta", {"type": "content_block_delta", "index": self._index,
                                                "delta": delta}))
        elif kind is _TOOL and self._open_call is not None:
            self._check_arguments(self._open_call)
            self._open_call = None
        out.append(("content_block_stop", {"type": "content_block_stop", "index": self._index}))
        self._open_kind = None

    def _check_arguments(self, call: _ToolCall) -> None:
        """Live mode cannot take arguments back; a log line is all that is left (protocols.md 5.2)."""
        if not call.args:
            return
        text = "".join(call.args)
        try:
            ok = isinstance(orjson.loads(text), dict)
        except orjson.JSONDecodeError:
            ok = False
        if not ok:
            logger.warning("[%s] tool call %s (%s) streamed arguments that are not a JSON object: %.200r",
                           self._provider, call.id, call.name, text)


@dataclass(slots=True, eq=False)
class _Block:
    kind: str
    parts: list[str] = field(default_factory=list)
    signature: str | None = None
    call: _ToolCall | None = None


class MessageBuilder:
    """Gathers the same deltas as `StreamMachine` into one non-streamed Anthropic message (protocols.md 4.11).

    Blocks come out as the stream would have them (adjacent text merged, a block after another
    kind starts a new one), so `build()` equals what an SDK accumulates from the machine's events.
    Unlike the stream, tool arguments are checked before anything is sent: truncated JSON is
    repaired, and arguments that cannot be read fail the request.

    A `StopScanner` (`stop`) cuts the text at the client's first stop sequence, as the stream does:
    the message ends there (``stop_reason: stop_sequence``), later content is dropped, usage counts.
    """

    __slots__ = ("_blocks", "_finish", "_input_tokens", "_message_id", "_model", "_provider", "_sign",
                 "_stop", "_tool_names", "_tools", "_usage")

    def __init__(self, *, provider: str, message_id: str, model: str,
                 tool_names: Mapping[str, str] | None = None,
                 sign: Callable[[str | None], str] | None = None, input_tokens: int = 0,
                 stop: StopScanner | None = None) -> None:
        self._stop = stop
        self._provider = provider
        self._message_id = message_id
        self._model = model
        self._tool_names = tool_names
        self._sign = sign
        self._input_tokens = input_tokens
        self._blocks: list[_Block] = []
        self._tools = _ToolRouter()
        self._finish: FinishDelta | None = None
        self._usage = _Usage()

    def feed(self, delta: Delta) -> None:
        """Add one delta; an `ErrorDelta` raises `UpstreamStatusError` at once."""
        stop = self._stop
        if stop is not None and stop.matched is not None and not isinstance(delta, UsageDelta | ErrorDelta):
            return  # the answer ended at the stop sequence
        if isinstance(delta, TextDelta):
            self._add_text(stop.feed(delta.text) if stop is not None else delta.text)
        elif isinstance(delta, ToolCallDelta):
            self._flush_text()
            self._tool(delta)
        elif isinstance(delta, RedactedThinkingDelta):
            if delta.data:
                self._flush_text()
                self._blocks.append(_Block(_REDACTED, signature=delta.data))
        elif isinstance(delta, ThinkingDelta):
            if delta.thinking or delta.signature:
                self._flush_text()
                block = self._current(_THINKING)
                if delta.thinking:
                    block.parts.append(delta.thinking)
                if delta.signature:
                    block.signature = delta.signature
        elif isinstance(delta, UsageDelta):
            self._usage.merge(delta)
        elif isinstance(delta, FinishDelta):
            self._flush_text()
            self._finish = delta
        elif isinstance(delta, ErrorDelta):
            status = _ERROR_STATUSES.get(delta.error_type, 500)
            raise UpstreamStatusError(self._provider, delta.message, status=status, error_type=delta.error_type,
                                      named=True)
        else:
            raise TypeError(f"not a delta: {delta!r}")

    def build(self) -> JSONObject:
        """The Anthropic message; raises `UpstreamProtocolError` for an empty or unreadable answer."""
        stop = self._stop
        if stop is not None and stop.matched is not None:
            self._finish = FinishDelta("stop_sequence", "stop_sequence", stop.matched)
        else:
            self._flush_text()
        finish = self._finish
        if finish is None:
            if not self._blocks:
                raise UpstreamProtocolError(self._provider,
                                            "upstream answer had no content and no finish reason")
            finish = FinishDelta("end_turn")
        if finish.stop_reason is None and not self._blocks:
            raise UpstreamProtocolError(self._provider, _unknown_finish(finish))
        _drop_unnamed(self._provider, self._tools.calls)
        content = [self._render(block) for block in self._blocks]
        reason = _stop_reason(finish, any(block.kind is _TOOL for block in self._blocks))
        usage = self._usage
        return {
            "id": self._message_id, "type": "message", "role": "assistant", "model": self._model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": finish.stop_sequence if reason == "stop_sequence" else None,
            "usage": {
                "input_tokens": usage.input_tokens if usage.input_tokens is not None else self._input_tokens,
                "output_tokens": usage.output_tokens or 0,
                "cache_creation_input_tokens": usage.cache_creation_input_tokens or 0,
                "cache_read_input_tokens": usage.cache_read_input_tokens or 0,
            },
        }

    def _add_text(self, text: str) -> None:
        if text:
            self._current(_TEXT).parts.append(text)

    def _flush_text(self) -> None:
        """A block boundary or the finish: text held back for a possible stop sequence joins the answer."""
        if self._stop is not None:
            self._add_text(self._stop.flush())

    def _current(self, kind: str) -> _Block:
        """The last block if it has this kind, else a new one (the stream's `ensure`)."""
        blocks = self._blocks
        if blocks and blocks[-1].kind is kind:
            return blocks[-1]
        block = _Block(kind)
        blocks.append(block)
        return block

    def _tool(self, delta: ToolCallDelta) -> None:
        call = self._tools.route(delta)
        if delta.arguments:
            call.args.append(delta.arguments)
        if not call.opened and call.name:
            call.opened = True
            self._blocks.append(_Block(_TOOL, call=call))

    def _render(self, block: _Block) -> JSONObject:
        if block.kind is _TEXT:
            return {"type": "text", "text": "".join(block.parts)}
        if block.kind is _THINKING:
            signature = self._sign(block.signature) if self._sign is not None else block.signature or ""
            return {"type": "thinking", "thinking": "".join(block.parts), "signature": signature}
        if block.kind is _REDACTED:
            data = block.signature or ""
            return {"type": "redacted_thinking", "data": self._sign(data) if self._sign is not None else data}
        call = block.call
        assert call is not None and call.name is not None  # a tool block exists only once named
        if call.id is None:
            call.id = new_tool_use_id()
        name = self._tool_names.get(call.name, call.name) if self._tool_names else call.name
        return {"type": "tool_use", "id": call.id, "name": name, "input": self._arguments(call)}

    def _arguments(self, call: _ToolCall) -> JSONObject:
        """Tool input per protocols.md 4.11: "" → {}, object as is, other JSON wrapped, bad JSON repaired."""
        text = "".join(call.args)
        if not text.strip():
            return {}
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            repaired = repair_json(text)
            if repaired is None:
                raise UpstreamProtocolError(
                    self._provider,
                    f"tool call {call.name} returned arguments that are not valid JSON: {text[:200]}",
                ) from None
            logger.warning("[%s] repaired the arguments of tool call %s (%s): %.200r",
                           self._provider, call.id, call.name, text)
            return repaired
        return value if isinstance(value, dict) else {"value": value}


def repair_json(text: str) -> JSONObject | None:
    """Read a JSON object out of text a model cut short or followed with garbage; None if hopeless.

    Trailing garbage after the object is dropped; an unfinished object gets its open string,
    arrays and objects closed, backing off to the last complete member when the cut fell inside a
    key or a literal. It never turns a non-empty object into ``{}``, and never guesses inside
    text that is complete but malformed.

    >>> repair_json('{"city": "Os')
    {'city': 'Os'}
    >>> repair_json('{"a": [1, 2], "b": tr')
    {'a': [1, 2]}
    """
    start = text.find("{")
    if start < 0:
        return None
    closers: list[str] = []
    # The last few places to cut at, with what closes the text there: after a complete member or
    # after an inner opener. Earlier ones are not worth a parse: if these fail, so do they.
    cuts: deque[tuple[int, str]] = deque(maxlen=4)
    in_string = escaped = False
    for i in range(start, len(text)):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            closers.append("}" if char == "{" else "]")
            if len(closers) > 1:
                cuts.append((i + 1, "".join(reversed(closers))))
        elif char in "}]":
            if not closers or closers.pop() != char:
                return None
            if not closers:
                return _as_object(text[start : i + 1])
            cuts.append((i + 1, "".join(reversed(closers))))
        elif char == ",":
            cuts.append((i, "".join(reversed(closers))))
    if not closers:
        return None
    head = text[start:]
    if in_string:
        head = (head[:-1] if escaped else head) + '"'
    candidates = [head.rstrip() + "".join(reversed(closers))]
    candidates += [text[start:cut] + tail for cut, tail in reversed(cuts)]
    for candidate in candidates:
        value = _as_object(candidate)
        if value is not None:
            return value
    return None


def _as_object(text: str) -> JSONObject | None:
    try:
        value: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
