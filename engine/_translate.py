"""Upstream answers → Anthropic answers: a provider's compiled decoder feeding the delta consumers.

The HTTP app runs this for every answer, and the rule-case runner (tests/rules/) runs the very same
code on scripted answers, so what a case checks is what a request gets.
"""

from __future__ import annotations

import logging

import orjson

from ._compiler import CompiledProvider
from ._errors import EngineError, UpstreamProtocolError
from ._sse import SSEDecoder
from ._stream import MessageBuilder, StreamMachine
from ._types import JSONObject, SSEEvent

logger = logging.getLogger("ccproxy_engine")


def translate_message(provider: CompiledProvider, raw: bytes, builder: MessageBuilder, *,
                      name: str | None = None) -> JSONObject:
    """A whole upstream answer (JSON bytes) → the Anthropic message; raises `EngineError`s.
    `name` is the configured provider's name, used in messages (default: the rule set's name)."""
    name = name or provider.name
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(name, f"answer is not JSON: {raw[:200]!r}") from None
    for delta in provider.new_decoder(stream=False, name=name).decode(answer):
        builder.feed(delta)
    return builder.build()


class StreamTranslator:
    """Upstream SSE bytes (or records) → Anthropic stream events, for one response.

    Never raises for upstream trouble: a broken record, an error record or an engine failure becomes
    the machine's ``error`` event, after which every call returns [].
    """

    __slots__ = ("_decoder", "_done_marker", "_machine", "_provider", "_sse")

    def __init__(self, provider: CompiledProvider, machine: StreamMachine, *, name: str | None = None) -> None:
        self._provider = name or provider.name
        self._decoder = provider.new_decoder(stream=True, name=self._provider)
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
