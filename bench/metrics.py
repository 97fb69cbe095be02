"""Per-request CPU cost of observability on the hot path: metrics, the request's trace, the breaker.

What one ``/v1/messages`` request adds, in process (no sockets): a `Trace`, the breaker's ``allow``
and ``record``, one upstream time-to-first-byte observation, the usage noted from the answer, and
`Observer.finish` (request counter, latency histogram, two token counters). Run in-memory (one worker)
and in prometheus-client's multiprocess mode (``--workers N``: every value is also written to a
memory-mapped file); the second run is a child process, because the mode is chosen at import.
The baseline, measured in the same run, is bench/translate.py's: `orjson.loads` + `orjson.dumps` of
its ~10 KB request, the least any proxy must do.

    .venv/bin/python bench/metrics.py [--requests 200000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import orjson
from translate import small_request

from ccproxy_engine._config import BreakerSettings
from ccproxy_engine._metrics import Metrics
from ccproxy_engine._observe import Observer, Trace
from ccproxy_engine._resilience import Breakers

USAGE = {"input_tokens": 1200, "output_tokens": 85}


def one_request(observer: Observer, metrics: Metrics, breakers: Breakers) -> None:
    trace = Trace("req_bench")
    trace.route = "default"
    trace.provider, trace.model = "openai", "gpt-4.1"
    breakers.allow("openai", "gpt-4.1")
    metrics.upstream_ttfb("openai", "gpt-4.1", 0.2)
    breakers.record("openai", "gpt-4.1", True)
    trace.usage(USAGE)
    observer.finish(trace, 200)


def measure(run: Callable[[], None], requests: int, rounds: int = 5) -> float:
    """Median µs per call of `run` over `rounds` runs of `requests` calls."""
    run()  # label children created outside the timing
    results = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(requests):
            run()
        results.append((time.perf_counter() - started) / requests * 1e6)
    return statistics.median(results)


def observability() -> Callable[[], None]:
    metrics = Metrics(["openai"], ["gpt-4.1"])
    observer = Observer(metrics)
    breakers = Breakers(BreakerSettings(), on_change=metrics.breaker_state)
    return lambda: one_request(observer, metrics, breakers)


def baseline() -> Callable[[], None]:
    raw = orjson.dumps(small_request())
    return lambda: orjson.dumps(orjson.loads(raw)) and None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    mode = "multiprocess" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "in-memory"
    base = measure(baseline(), max(1, args.requests // 10))
    per_request = measure(observability(), args.requests)
    print(f"{mode:>12}: {per_request:6.2f} µs per request, {per_request / base:.2f}x baseline "
          f"({base:.1f} µs); {per_request / 1000:.2%} of a 1 ms request budget")
    if args.child:
        return
    with tempfile.TemporaryDirectory(prefix="ccproxy-bench-metrics-") as directory:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        subprocess.run([sys.executable, __file__, "--child", "--requests", str(args.requests)], env=env, check=True)


if __name__ == "__main__":
    main()
