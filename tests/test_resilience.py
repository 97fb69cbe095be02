"""Retry policy, circuit breaker states, the rules' quota classification and the config keys behind them.

The served behaviour (retries seen by a fake upstream, a breaker opening under a 5xx storm) is in
tests/e2e/test_e2e_resilience.py; here each decision is pinned with a fake clock and fixed jitter.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import orjson
import pytest

from ccproxy_engine._compiler import compile_rules
from ccproxy_engine._config import BreakerSettings, RetrySettings, load_config
from ccproxy_engine._errors import (
    EngineError,
    RequestError,
    UpstreamConnectError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from ccproxy_engine._loader import load_rules
from ccproxy_engine._resilience import Breakers, BreakerState, CircuitBreaker, RetryPolicy, is_upstream_failure


def status_error(status: int, *, retry_after: str | None = None, quota: bool = False) -> UpstreamStatusError:
    return UpstreamStatusError("p", "failed", status=status, upstream_status=status, retry_after=retry_after,
                               quota=quota)


POLICY = RetryPolicy(RetrySettings(attempts=4, backoff=0.5, max_backoff=1.5, max_retry_after=10), rng=lambda: 1.0)


@pytest.mark.parametrize(("exc", "retried"), [
    (UpstreamConnectError("p", "refused"), True),
    (status_error(429), True),
    (status_error(500), True),
    (status_error(503), True),
    (status_error(429, quota=True), False),
    (status_error(400), False),
    (status_error(404), False),
    (UpstreamTimeoutError("p", "no answer in 300 s"), False),
    (RequestError("bad"), False),
])
def test_what_is_retried(exc: EngineError, retried: bool) -> None:
    assert (POLICY.delay(exc, 1) is not None) is retried


def test_backoff_doubles_up_to_its_cap_and_attempts_are_counted() -> None:
    exc = status_error(500)
    assert [POLICY.delay(exc, tries) for tries in (1, 2, 3, 4)] == [0.5, 1.0, 1.5, None]


def test_jitter_takes_up_to_half_off() -> None:
    policy = RetryPolicy(RetrySettings(backoff=1.0), rng=lambda: 0.0)
    assert policy.delay(status_error(502), 1) == 0.5


def test_retry_after_is_honoured_up_to_its_cap() -> None:
    assert POLICY.delay(status_error(429, retry_after="3"), 1) == 3.0
    assert POLICY.delay(status_error(429, retry_after="11"), 1) is None
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    delay = POLICY.delay(status_error(503, retry_after=when), 1)
    assert delay is not None and 3.0 < delay <= 5.0
    assert POLICY.delay(status_error(429, retry_after="soon"), 1) == 0.5  # unreadable: the backoff


def test_one_attempt_means_no_retry() -> None:
    assert RetryPolicy(RetrySettings(attempts=1)).delay(status_error(500), 1) is None


def test_upstream_failures_are_what_a_breaker_counts() -> None:
    assert is_upstream_failure(status_error(429)) and is_upstream_failure(status_error(502))
    assert is_upstream_failure(UpstreamTimeoutError("p", "slow"))
    assert not is_upstream_failure(status_error(400)) and not is_upstream_failure(RequestError("bad"))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_recovers_through_half_open() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(failures=3, open_seconds=10), clock)
    breaker.failed()
    breaker.failed()
    breaker.succeeded()  # a success resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.failed()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now += 10
    assert breaker.allow() and breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # one trial at a time
    breaker.succeeded()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_a_failed_trial_opens_again_and_a_released_one_lets_the_next_try() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(failures=1, open_seconds=5), clock)
    breaker.failed()
    clock.now += 5
    assert breaker.allow()
    breaker.released()  # e.g. the client went away: no verdict
    assert breaker.allow()
    breaker.failed()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()


def test_breakers_report_state_changes_per_provider_and_model() -> None:
    changes: list[tuple[str, str, BreakerState]] = []
    breakers = Breakers(BreakerSettings(failures=1, open_seconds=1), Clock(),
                        on_change=lambda p, m, s: changes.append((p, m, s)))
    breakers.record("a", "m1", False)
    assert not breakers.allow("a", "m1") and breakers.allow("a", "m2") and breakers.allow("b", "m1")
    assert changes == [("a", "m1", BreakerState.OPEN)]


def test_zero_failures_disables_breakers() -> None:
    breakers = Breakers(BreakerSettings(failures=0))
    for _ in range(10):
        breakers.record("a", "m", False)
    assert breakers.allow("a", "m")


# --- the rules' quota classification -------------------------------------------------------------


@pytest.fixture(scope="module")
def error_maps() -> dict[str, object]:
    compiled, problems = compile_rules(load_rules([])[0])
    assert not problems
    return {name: compiled[name].errors for name in ("openai", "gemini")}


QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"


@pytest.mark.parametrize(("rules", "body", "quota"), [
    ("openai", {"error": {"message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"}}, True),
    ("openai", {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
     False),
    ("gemini", {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                          "message": "You exceeded your current quota, please check your plan and billing details."}},
     True),
    ("gemini", {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Resource has been exhausted",
                          "details": [{"@type": QUOTA_FAILURE, "violations": [
                              {"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}, True),
    ("gemini", {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "You exceeded your current quota",
                          "details": [{"@type": QUOTA_FAILURE, "violations": [
                              {"quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]}]}}, False),
    ("gemini", {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                          "message": "Resource has been exhausted (e.g. check quota)."}}, False),
])
def test_the_rules_say_which_429_is_an_exhausted_quota(error_maps: dict[str, object], rules: str,
                                                        body: dict[str, object], quota: bool) -> None:
    error = error_maps[rules].to_exception(429, orjson.dumps(body), None, provider=rules)  # type: ignore[attr-defined]
    assert error.quota is quota
    assert POLICY.delay(error, 1) is None if quota else POLICY.delay(error, 1) is not None


# --- config ----------------------------------------------------------------------------------------


def test_the_config_keys_reach_the_settings(tmp_path: Path) -> None:
    config = tmp_path / "ccproxy.yaml"
    config.write_text(
        "server:\n"
        "  retry: {attempts: 3, backoff: 0.1, max_backoff: 2, max_retry_after: 5}\n"
        "  circuit_breaker: {failures: 4, open_seconds: 12}\n"
        "  fallback_on_unsupported: true\n"
        "  shutdown_grace: 7.5\n"
        "  access_log: true\n"
        "providers: {openai: {api_key: k}}\n"
        "routes: {default: openai/gpt-4.1}\n", encoding="utf-8")
    settings = load_config(config)
    assert settings.resilience.retry == RetrySettings(attempts=3, backoff=0.1, max_backoff=2.0, max_retry_after=5.0)
    assert settings.resilience.breaker == BreakerSettings(failures=4, open_seconds=12.0)
    assert settings.resilience.fallback_on_unsupported
    assert settings.shutdown_grace == 7.5 and settings.access_log


def test_the_defaults_are_small(tmp_path: Path) -> None:
    settings = load_config(None, {})
    assert settings.resilience.retry == RetrySettings(attempts=2, backoff=0.5, max_backoff=4.0, max_retry_after=10.0)
    assert settings.resilience.breaker == BreakerSettings(failures=5, open_seconds=30.0)
    assert not settings.resilience.fallback_on_unsupported
    assert settings.shutdown_grace == 30.0 and not settings.access_log


@pytest.mark.parametrize("server", ["retry: {attempts: 0}", "retry: {tries: 2}", "circuit_breaker: {failures: -1}",
                                    "shutdown_grace: -1", "access_log: yes please"])
def test_bad_values_are_config_errors(tmp_path: Path, server: str) -> None:
    from ccproxy_engine._errors import ConfigError

    config = tmp_path / "ccproxy.yaml"
    config.write_text(f"server: {{{server}}}\nproviders: {{openai: {{api_key: k}}}}\nroutes: {{default: openai/x}}\n",
                      encoding="utf-8")
    with pytest.raises(ConfigError):
        load_config(config)
