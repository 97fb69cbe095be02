"""Upstream answers → Anthropic answers: a provider's decoder feeding the delta consumers.

`_endpoint.Endpoint` runs this for every answer (the rule-case runner in tests/rules/ drives the same
endpoint on scripted answers, so what a case checks is what a request gets).
"""

from __future__ import annotations

import logging

import orjson

from ._compiler import ResponseDecoder
from ._errors import EngineError, UpstreamProtocolError
from ._sse import SSEDecoder
from ._stream import MessageBuilder, StreamMachine
from ._types import JSONObject, SSEEvent

logger = logging.getLogger("ccproxy_engine")


def translate_message(decoder: ResponseDecoder, raw: bytes, builder: MessageBuilder) -> JSONObject:
    """A whole upstream answer (JSON bytes) → the Anthropic message; raises `EngineError`s."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(decoder.provider, f"answer is not JSON: {raw[:200]!r}") from None
    for delta in decoder.decode(answer):
        builder.feed(delta)
    return builder.build()


class StreamTranslator:
    """Upstream SSE bytes (or records) → Anthropic stream events, for one response.

    Never raises for upstream trouble: a broken record, an error record or an engine failure becomes
    the machine's ``error`` event, after which every call returns [].
    """

    __slots__ = ("_decoder", "_done_marker", "_machine", "_provider", "_sse")

    def __init__(self, decoder: ResponseDecoder, machine: StreamMachine) -> None:
        self._provider = decoder.provider
        self._decoder = decoder
        self._done_marker = self._decoder.done_marker
        self._machine = machine
        self._sse = SSEDecoder()

    @property
    def is_done(self) -> bool:
        return self._machine.is_done

    def start(self) -> list[SSEEvent]:
        return self._machine.start()

    def ping(self) -> list[SSEEvent]:
        return self._machine.ping()

    def feed_bytes(self, chunk: bytes) -> list[SSEEvent]:
        """Raw upstream bytes, split anywhere."""
        events: list[SSEEvent] = []
        for record in self._sse.feed(chunk):
            events += self.feed_record(record.data)
        return events

    def feed_record(self, data: str) -> list[SSEEvent]:
        """One SSE record's data: a JSON chunk, the done marker, or empty."""
        if not data or data == self._done_marker or self._machine.is_done:
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self.fail(UpstreamProtocolError(self._provider, f"stream record is not JSON: {data[:200]}"))
        events: list[SSEEvent] = []
        try:
            for delta in self._decoder.decode(chunk):
                events += self._machine.feed(delta)
        except EngineError as exc:
            events += self.fail(exc)
        if self._machine.is_stopped:  # a stop sequence matched: the message ends, and the upstream can go
            events += self._machine.finish()
        return events

    def finish(self) -> list[SSEEvent]:
        """Upstream EOF: the last record (if unterminated), then the end of the message or an error."""
        events: list[SSEEvent] = []
        for record in self._sse.flush():
            events += self.feed_record(record.data)
        return events + self._machine.finish()

    def fail(self, exc: BaseException) -> list[SSEEvent]:
        """End the stream with an ``error`` event describing `exc`."""
        if isinstance(exc, EngineError):
            logger.warning("stream failed: %s", exc.message)
            return self._machine.fail(exc.error_type, exc.message)
        logger.error("stream translation failed", exc_info=exc)
        return self._machine.fail("api_error", "internal error while translating the stream")


def replace_model(raw: bytes, model: str) -> bytes:
    """`raw` (a JSON object) with its top-level ``model`` value replaced, every other byte kept.

    Passthrough forwards the client's body untouched but for the routed model; re-encoding would
    reorder nothing but still cost a parse-free copy of every byte and change number and escape
    spellings. Falls back to re-encoding when the text is not the simple object this scans.
    """
    span = _top_level_value_span(raw, b"model")
    if span is None:
        body = orjson.loads(raw)
        body["model"] = model
        return orjson.dumps(body)
    start, end = span
    return raw[:start] + orjson.dumps(model) + raw[end:]


_WHITESPACE = b" \t\r\n"


def _top_level_value_span(raw: bytes, key: bytes) -> tuple[int, int] | None:
    """Where the value of `key` in the top-level object of `raw` starts and ends; None if absent."""
    i = _skip_space(raw, 0)
    if i >= len(raw) or raw[i] != ord("{"):
        return None
    i += 1
    while True:
        i = _skip_space(raw, i)
        if i >= len(raw) or raw[i] != ord('"'):
            return None
        name_end = _string_end(raw, i)
        name = raw[i + 1:name_end - 1]
        i = _skip_space(raw, name_end)
        if i >= len(raw) or raw[i] != ord(":"):
            return None
        start = _skip_space(raw, i + 1)
        end = _value_end(raw, start)
        if name == key and b"\\" not in name:
            return start, end
        i = _skip_space(raw, end)
        if i >= len(raw) or raw[i] != ord(","):
            return None
        i += 1


def _skip_space(raw: bytes, i: int) -> int:
    while i < len(raw) and raw[i] in _WHITESPACE:
        i += 1
    return i


def _string_end(raw: bytes, i: int) -> int:
    """Index just after the string that starts with the quote at `i`."""
    i += 1
    while i < len(raw):
        byte = raw[i]
        if byte == 0x5C:  # backslash: skip the escaped byte
            i += 2
            continue
        if byte == 0x22:
            return i + 1
        i += 1
    return len(raw)


def _value_end(raw: bytes, i: int) -> int:
    """Index just after the JSON value that starts at `i` (strings and nesting respected)."""
    if i < len(raw) and raw[i] == 0x22:
        return _string_end(raw, i)
    depth = 0
    while i < len(raw):
        byte = raw[i]
        if byte == 0x22:
            i = _string_end(raw, i)
            continue
        if byte in b"[{":
            depth += 1
        elif byte in b"]}":
            if depth == 0:
                return i
            depth -= 1
            if depth == 0:
                return i + 1
        elif byte == 0x2C and depth == 0:  # a comma ends a scalar
            return i
        i += 1
    return i
