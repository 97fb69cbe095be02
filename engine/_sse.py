"""Server-sent events at the byte level: upstream bytes → records, Anthropic events → bytes.

Parsing works on raw bytes on purpose. `httpx.Response.aiter_lines()` splits the way
`str.splitlines` does, so a U+2028 inside a JSON string would cut a record in two; SSE ends lines
only at CR, LF or CRLF (WHATWG "Server-sent events", "Parsing an event stream").
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from ._types import SSEEvent

__all__ = ["DONE", "SSEDecoder", "SSERecord", "encode_event", "encode_events"]

DONE = "[DONE]"
"""The data of the record that ends an OpenAI-style stream."""


@dataclass(slots=True)
class SSERecord:
    """One dispatched record: its last `event:` value (None if absent) and its `data:` lines joined by LF."""

    event: str | None
    data: str

    @property
    def is_done(self) -> bool:
        """True for the OpenAI end-of-stream sentinel ``data: [DONE]``."""
        return len(self.data) < 16 and self.data.strip() == DONE


class SSEDecoder:
    """Incremental SSE parser: feed it reads of any size, get back the records they complete.

    One decoder per upstream response. Comment lines (``: OPENROUTER PROCESSING``) and the
    `id:`/`retry:` fields are dropped; a record with no `data:` line is not dispatched (as the
    spec says). Call `flush()` at EOF to also get a last record that lacks its blank line.

    One departure from the spec, for upstreams that report a failure mid-stream as a bare JSON
    body (Gemini sends ``{"error": ...}`` without ``data:``, often over several lines): a line that
    starts with ``{`` begins such a body, and it and the lines after it up to a blank line (or EOF)
    come out as one record, so the error reaches the client instead of being dropped.

    >>> d = SSEDecoder()
    >>> d.feed(b'data: {"a":1}\\n') + d.feed(b"\\n")
    [SSERecord(event=None, data='{"a":1}')]
    """

    __slots__ = ("_at_start", "_bare", "_data", "_event", "_pending", "_skip_lf")

    def __init__(self) -> None:
        self._pending = b""
        """Bytes of the line that has not ended yet (no CR in it: CRs are turned into LFs first)."""
        self._skip_lf = False
        """The last read ended with CR: an LF starting the next read belongs to that CRLF."""
        self._at_start = True
        self._event: str | None = None
        self._data: list[str] = []
        self._bare: list[str] = []
        """Lines of a bare JSON body (not SSE fields) being collected."""

    def feed(self, chunk: bytes) -> list[SSERecord]:
        """Parse one read; returns the records completed by it, in order."""
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            # A CR ends a line by itself, so the line can be dispatched now; whether an LF follows
            # is settled by the next read (`_skip_lf`), not by waiting for it.
            self._skip_lf = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = chunk.rfind(b"\n")
        if end < 0:
            if chunk:
                self._pending += chunk
            return []
        # LF never occurs inside a UTF-8 multi-byte sequence, so everything up to the last LF
        # decodes whole, even when a character was split between reads.
        complete = self._pending + chunk[:end] if self._pending else chunk[:end]
        self._pending = chunk[end + 1 :]
        return self._lines(complete.decode("utf-8", "replace"))

    def flush(self) -> list[SSERecord]:
        """End of stream: dispatch what is left, even without its closing blank line."""
        text = self._pending.decode("utf-8", "replace")
        self._pending = b""
        self._skip_lf = False
        records = self._lines(text) if text else []
        self._dispatch(records)
        return records

    def _lines(self, text: str) -> list[SSERecord]:
        if self._at_start:
            self._at_start = False
            if text.startswith("\ufeff"):
                text = text[1:]
        records: list[SSERecord] = []
        for line in text.split("\n"):
            if not line:
                self._dispatch(records)
            elif self._bare or line[0] == "{":
                self._bare.append(line)
            elif line[0] != ":":
                name, _, value = line.partition(":")
                if value[:1] == " ":
                    value = value[1:]
                if name == "data":
                    self._data.append(value)
                elif name == "event":
                    self._event = value or None
        return records

    def _dispatch(self, records: list[SSERecord]) -> None:
        data = self._data
        if data:
            records.append(SSERecord(self._event, data[0] if len(data) == 1 else "\n".join(data)))
            self._data = []
        if self._bare:
            records.append(SSERecord(None, "\n".join(self._bare)))
            self._bare = []
        self._event = None


_PREFIXES: dict[str, bytes] = {
    name: f"event: {name}\ndata: ".encode()
    for name in (
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    )
}


def encode_event(event: SSEEvent) -> bytes:
    """One Anthropic SSE record: ``event: <name>\\ndata: <compact JSON>\\n\\n``.

    orjson output never contains a raw CR or LF (they are escaped inside strings), so the data is
    always one line.
    """
    name, payload = event
    prefix = _PREFIXES.get(name)
    if prefix is None:
        prefix = f"event: {name}\ndata: ".encode()
    return prefix + orjson.dumps(payload) + b"\n\n"


def encode_events(events: list[SSEEvent]) -> bytes:
    """Several records as one buffer, so a batch of events costs one write."""
    if len(events) == 1:
        return encode_event(events[0])
    prefixes = _PREFIXES
    dumps = orjson.dumps
    parts: list[bytes] = []
    for name, payload in events:
        prefix = prefixes.get(name)
        parts.append(prefix if prefix is not None else f"event: {name}\ndata: ".encode())
        parts.append(dumps(payload))
        parts.append(b"\n\n")
    return b"".join(parts)
