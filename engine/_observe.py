"""What a request leaves behind: its id in every log line about it, its metrics, its access-log line.

`Trace` follows one ``/v1/messages`` request: the pipeline fills in the target that answered, the
retries and the tokens; the app's middleware finishes it once the response is over (a stream's last
byte, an error, or the client gone), which records the metrics (`Metrics.request`) and, when asked
(``server.access_log`` or ``serve --access-log``), writes one JSON line at INFO on the
``ccproxy_engine.access`` logger.

Request ids: the app sets `REQUEST_ID` as soon as it knows the id (`_app._request_id`), and
`RequestIdFilter` (on the ``ccproxy_engine`` logger) puts ``[<id>]`` in front of every message logged
while that request runs, the tasks it starts included (they copy the context).
"""

from __future__ import annotations

import contextvars
import logging
import time
from dataclasses import dataclass, field

import orjson

from ._metrics import Metrics

__all__ = ["ACCESS_LOGGER", "REQUEST_ID", "Observer", "RequestIdFilter", "Trace", "install_request_id_filter"]

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("ccproxy_request_id", default=None)
ACCESS_LOGGER = logging.getLogger("ccproxy_engine.access")
#: The engine's loggers whose messages get the request id (a logger's filters see only its own records;
#: the access log carries the id in its JSON).
_PREFIXED_LOGGERS = ("ccproxy_engine", "ccproxy_engine.router", "ccproxy_engine.stream")


class RequestIdFilter(logging.Filter):
    """Prefixes a record's message with the id of the request being served, when there is one."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        if request_id is not None and not getattr(record, "request_id", None):
            record.request_id = request_id
            record.msg = f"[{request_id}] {record.msg}"  # ids are plain tokens: no % to misread
        return True


def install_request_id_filter() -> None:
    """Add the filter to the engine's loggers once (loggers are process-wide; apps may be many)."""
    for name in _PREFIXED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RequestIdFilter) for f in logger.filters):
            logger.addFilter(RequestIdFilter())


@dataclass(slots=True)
class Trace:
    """One ``/v1/messages`` request as the metrics and the access log see it."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    provider: str = ""
    model: str = ""
    route: str = ""
    retries: int = 0
    fallbacks: int = 0
    tokens_in: int | None = None
    tokens_out: int | None = None
    stream: bool = False
    finished: bool = False

    def usage(self, usage: object) -> None:
        """Take the token counts of an Anthropic ``usage`` object (later values replace earlier ones)."""
        if not isinstance(usage, dict):
            return
        tokens_in = usage.get("input_tokens")
        if isinstance(tokens_in, int) and not isinstance(tokens_in, bool):
            self.tokens_in = tokens_in
        tokens_out = usage.get("output_tokens")
        if isinstance(tokens_out, int) and not isinstance(tokens_out, bool):
            self.tokens_out = tokens_out


class Observer:
    """Starts and finishes traces: the metrics, and the access log when it is on."""

    __slots__ = ("access_log", "metrics")

    def __init__(self, metrics: Metrics, *, access_log: bool = False) -> None:
        self.metrics = metrics
        self.access_log = access_log
        install_request_id_filter()
        if access_log and not ACCESS_LOGGER.isEnabledFor(logging.INFO):  # asked for: shown whatever --log-level
            ACCESS_LOGGER.setLevel(logging.INFO)

    def finish(self, trace: Trace, status: int) -> None:
        """Record `trace` once, with the status the client got."""
        if trace.finished:
            return
        trace.finished = True
        seconds = time.perf_counter() - trace.started
        self.metrics.request(trace.provider, trace.model, trace.route, status, seconds, trace.tokens_in,
                             trace.tokens_out)
        if self.access_log:
            ACCESS_LOGGER.info("%s", orjson.dumps({
                "request_id": trace.request_id, "status": status, "provider": trace.provider or None,
                "model": trace.model or None, "route": trace.route or None, "stream": trace.stream,
                "retries": trace.retries, "fallbacks": trace.fallbacks, "input_tokens": trace.tokens_in,
                "output_tokens": trace.tokens_out, "duration_ms": round(seconds * 1000, 1),
            }).decode())
