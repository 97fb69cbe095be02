"""Prometheus metrics, served on ``GET /metrics`` (behind the server key like every endpoint but
``GET /health`` and ``HEAD /``).

What is counted (every name starts ``ccproxy_``):

* ``requests_total{provider, model, route, status}``: ``/v1/messages`` requests by the target that
  answered last (empty provider and model when none was tried) and the status the client got;
* ``request_duration_seconds{provider, route}``: from the request to the end of its answer (a stream's
  last byte);
* ``upstream_ttfb_seconds{provider, model}``: each upstream try, from sending to the response status;
* ``tokens_total{provider, model, direction}``: input and output tokens, from the translated answer's
  usage and, for a passthrough, its ``message_start``/``message_delta`` events;
* ``retries_total{provider, model}`` and ``fallbacks_total{provider, model}`` (the target that failed);
* ``circuit_breaker_state{provider, model}``: 0 closed, 1 open, 2 half-open.

Label values are bounded, so a client cannot grow the series without end: ``provider`` only takes
configured providers, ``model`` only models the config names (route targets, providers' ``models``),
anything else is ``other``; ``route`` is the router's reason, a fixed set.

Several workers (``serve --workers N``). prometheus-client's multiprocess mode: the supervisor makes
a temporary directory and sets ``PROMETHEUS_MULTIPROC_DIR`` before the app is built
(`use_multiprocess_dir`, before prometheus-client is imported), each worker writes its values to its
own memory-mapped files there, and ``/metrics`` in any worker adds them all up. The supervisor marks
a dead worker's gauges as gone and deletes the directory at exit (`remove_multiprocess_dir`).

Hot-path cost: a label set's child is looked up once and kept (`_Children`), so a request costs a few
dict lookups and lock-guarded float additions (bench/metrics.py measures it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

__all__ = ["Metrics", "known_models", "remove_multiprocess_dir", "use_multiprocess_dir", "worker_exited"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Set when this process made the directory (and so deletes it); a user's own directory is left alone.
_OWNED_ENV = "CCPROXY_ENGINE_OWNS_METRICS_DIR"
OTHER = "other"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)

M = TypeVar("M")


def use_multiprocess_dir() -> str:
    """Point prometheus-client at a directory every forked worker shares; call before it is imported.
    Keeps a directory the user set; else makes a fresh temporary one (removed at exit)."""
    existing = os.environ.get(MULTIPROC_ENV)
    if existing:
        return existing
    path = tempfile.mkdtemp(prefix="ccproxy-metrics-")
    os.environ[MULTIPROC_ENV] = path
    os.environ[_OWNED_ENV] = path
    return path


def worker_exited(pid: int) -> None:
    """A worker is gone: its live gauges (breaker states) stop counting; its counters stay in the sums."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def remove_multiprocess_dir() -> None:
    """Delete the directory `use_multiprocess_dir` made (not one the user set)."""
    path = os.environ.pop(_OWNED_ENV, None)
    if path and os.environ.get(MULTIPROC_ENV) == path:
        shutil.rmtree(path, ignore_errors=True)


class _Children(Generic[M]):
    """A metric's labelled children, kept by label values: `labels()` parses and locks on every call."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    """The app's metrics, in a registry of their own (several apps may live in one test process)."""

    def __init__(self, providers: Iterable[str], models: Iterable[str]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry()
        self.providers = frozenset(providers)
        self.models = frozenset(models)
        registry = self.registry
        self.requests: _Children[Any] = _Children(Counter(
            "ccproxy_requests", "Messages requests by the target that answered and the client's status.",
            ["provider", "model", "route", "status"], registry=registry))
        self.latency: _Children[Any] = _Children(Histogram(
            "ccproxy_request_duration_seconds", "From the request to the answer's last byte.",
            ["provider", "route"], buckets=LATENCY_BUCKETS, registry=registry))
        self.ttfb: _Children[Any] = _Children(Histogram(
            "ccproxy_upstream_ttfb_seconds", "Each upstream try: from sending to the response status.",
            ["provider", "model"], buckets=TTFB_BUCKETS, registry=registry))
        self.tokens: _Children[Any] = _Children(Counter(
            "ccproxy_tokens", "Tokens in and out, from the answers' usage.",
            ["provider", "model", "direction"], registry=registry))
        self.retries: _Children[Any] = _Children(Counter(
            "ccproxy_retries", "Retries of a target before the first byte.", ["provider", "model"],
            registry=registry))
        self.fallbacks: _Children[Any] = _Children(Counter(
            "ccproxy_fallbacks", "Requests a target passed to the route's next one (failed, or its breaker open).",
            ["provider", "model"], registry=registry))
        self.breaker: _Children[Any] = _Children(Gauge(
            "ccproxy_circuit_breaker_state", "Circuit breaker per provider and model: 0 closed, 1 open, 2 half-open.",
            ["provider", "model"], multiprocess_mode="livemax", registry=registry))

    # -- labels -----------------------------------------------------------------------------------

    def provider_label(self, provider: str) -> str:
        return provider if provider in self.providers or not provider else OTHER

    def model_label(self, model: str) -> str:
        return model if model in self.models or not model else OTHER

    # -- recording ----------------------------------------------------------------------------------

    def request(self, provider: str, model: str, route: str, status: int, seconds: float,
                tokens_in: int | None, tokens_out: int | None) -> None:
        provider, model = self.provider_label(provider), self.model_label(model)
        self.requests(provider, model, route, str(status)).inc()
        self.latency(provider, route).observe(seconds)
        if tokens_in:
            self.tokens(provider, model, "in").inc(tokens_in)
        if tokens_out:
            self.tokens(provider, model, "out").inc(tokens_out)

    def upstream_ttfb(self, provider: str, model: str, seconds: float) -> None:
        self.ttfb(self.provider_label(provider), self.model_label(model)).observe(seconds)

    def retried(self, provider: str, model: str) -> None:
        self.retries(self.provider_label(provider), self.model_label(model)).inc()

    def fell_back(self, provider: str, model: str) -> None:
        self.fallbacks(self.provider_label(provider), self.model_label(model)).inc()

    def breaker_state(self, provider: str, model: str, state: int) -> None:
        self.breaker(self.provider_label(provider), self.model_label(model)).set(state)

    # -- exposition -------------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type: this process's registry, or every worker's files."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        registry = self.registry
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST


def known_models(targets: Iterable[Any], provider_models: Iterable[str]) -> set[str]:
    """The model label's allowed values: every model a route target names, and providers' ``models``."""
    return {target.model for target in targets} | set(provider_models)

