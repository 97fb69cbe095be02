"""Retries and circuit breakers: what the pipeline does when an upstream fails before answering.

`RetryPolicy` decides whether one failed try of a target is tried again and after how long:
connect errors, 429 and 5xx are, with exponential backoff and jitter, honouring the upstream's
``Retry-After`` up to a cap. Never retried: timeouts (a slow upstream would double the wait), a 429
that means an exhausted quota (`UpstreamStatusError.quota`, from the rules' ``errors.quota`` or a
``by_code`` billing_error), any other 4xx, and anything after the first byte reached the client
(the pipeline only retries inside `Proxy._forward`, which returns once the status is known).

`Breakers` holds one `CircuitBreaker` per provider and model. Closed, it lets requests through and
counts consecutive failures; at the threshold it opens, and the pipeline skips its target (the
route's next target, or 529 ``overloaded_error`` when there is none); after ``open_seconds`` one
request may try (half-open): success closes it, failure opens it again. Breakers are per worker
process, like the connection pools.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from enum import IntEnum

from ._config import BreakerSettings, RetrySettings
from ._errors import (
    EngineError,
    RequestError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)

__all__ = ["BreakerState", "Breakers", "CircuitBreaker", "CircuitOpenError", "RetryPolicy", "TargetRefusedError",
           "is_upstream_failure"]

#: Breakers kept at most; past it, the least recently created is forgotten (a custom router or an
#: explicit ``provider/model`` may name models without end).
MAX_BREAKERS = 1024


def is_upstream_failure(exc: EngineError) -> bool:
    """A failure that says the provider is down, slow or busy (counts against its breaker and lets the
    route's next target try), never one that says the request itself is wrong."""
    if isinstance(exc, UpstreamConnectError | UpstreamTimeoutError):
        return True
    return isinstance(exc, UpstreamStatusError) and (exc.upstream_status == 429 or exc.upstream_status >= 500)


class CircuitOpenError(UpstreamError):
    """A target skipped because its breaker is open: 529 ``overloaded_error`` when no target is left."""

    status = 529

    def __init__(self, provider: str, model: str) -> None:
        super().__init__(provider, f"{provider}/{model} failed repeatedly; its circuit breaker is open, "
                         "so it is not tried for now", error_type="overloaded_error")


class TargetRefusedError(RequestError):
    """A target's rules refused the request before anything was sent (a capability its model lacks);
    the client sees the rules' own 400, unless ``server.fallback_on_unsupported`` tries the next target."""

    def __init__(self, refused: RequestError) -> None:
        super().__init__(refused.message, status=refused.status, error_type=refused.error_type)
        self.headers.update(refused.headers)


class RetryPolicy:
    """When and after how long a failed try of one target is tried again (`RetrySettings`)."""

    __slots__ = ("_random", "settings")

    def __init__(self, settings: RetrySettings, rng: Callable[[], float] = random.random) -> None:
        self.settings = settings
        self._random = rng

    def delay(self, exc: EngineError, tries: int) -> float | None:
        """Seconds to wait before try ``tries + 1`` after `exc` ended try `tries`; None: do not retry."""
        if tries >= self.settings.attempts or not _is_retryable(exc):
            return None
        retry_after = _retry_after_seconds(exc.headers.get("retry-after"))
        if retry_after is not None:
            return retry_after if retry_after <= self.settings.max_retry_after else None
        base = min(self.settings.backoff * 2.0 ** (tries - 1), self.settings.max_backoff)
        return base * (0.5 + 0.5 * self._random())  # jitter: clients that failed together do not retry together


def _is_retryable(exc: EngineError) -> bool:
    if isinstance(exc, UpstreamConnectError):
        return True
    if not isinstance(exc, UpstreamStatusError) or exc.quota:
        return False
    return exc.upstream_status == 429 or exc.upstream_status >= 500


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, float(parsedate_to_datetime(value).timestamp()) - time.time())
    except (TypeError, ValueError):
        return None


class BreakerState(IntEnum):
    """The value of the ``ccproxy_circuit_breaker_state`` gauge."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """One provider and model's breaker (see the module docstring)."""

    __slots__ = ("_clock", "_failures", "_opened_at", "_probing", "settings", "state")

    def __init__(self, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.state = BreakerState.CLOSED
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    def allow(self) -> bool:
        """Whether a request may try this target now. An open breaker past ``open_seconds`` turns
        half-open and lets exactly one request through until that one reports back."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.settings.open_seconds:
                return False
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def succeeded(self) -> None:
        self.state = BreakerState.CLOSED
        self._failures = 0
        self._probing = False

    def failed(self) -> None:
        self._failures += 1
        self._probing = False
        threshold = self.settings.failures
        if self.state is BreakerState.HALF_OPEN or (threshold and self._failures >= threshold):
            self.state = BreakerState.OPEN
            self._opened_at = self._clock()

    def released(self) -> None:
        """The request that was let through ended without a verdict on the upstream (the client left,
        the request was wrong): a half-open breaker lets the next one try."""
        self._probing = False


class Breakers:
    """The breakers of one worker, created on first use; `on_change` sees every state change."""

    __slots__ = ("_breakers", "_clock", "on_change", "settings")

    def __init__(self, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str, str, BreakerState], None] | None = None) -> None:
        self.settings = settings
        self._clock = clock
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self.on_change = on_change

    @property
    def enabled(self) -> bool:
        return self.settings.failures > 0

    def get(self, provider: str, model: str) -> CircuitBreaker:
        key = (provider, model)
        breaker = self._breakers.get(key)
        if breaker is None:
            if len(self._breakers) >= MAX_BREAKERS:
                del self._breakers[next(iter(self._breakers))]
            breaker = self._breakers[key] = CircuitBreaker(self.settings, self._clock)
        return breaker

    def allow(self, provider: str, model: str) -> bool:
        if not self.enabled:
            return True
        breaker = self.get(provider, model)
        before = breaker.state
        allowed = breaker.allow()
        self._report(provider, model, before, breaker.state)
        return allowed

    def record(self, provider: str, model: str, outcome: bool | None) -> None:
        """The try's verdict on the upstream: True it answered, False it failed (`is_upstream_failure`),
        None no verdict."""
        if not self.enabled:
            return
        breaker = self.get(provider, model)
        before = breaker.state
        if outcome is None:
            breaker.released()
        elif outcome:
            breaker.succeeded()
        else:
            breaker.failed()
        self._report(provider, model, before, breaker.state)

    def _report(self, provider: str, model: str, before: BreakerState, after: BreakerState) -> None:
        if before is not after and self.on_change is not None:
            self.on_change(provider, model, after)
