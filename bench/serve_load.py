"""Requests per second and added latency of the served proxy, against its upstream as baseline.

Starts, on this machine only (127.0.0.1):
  * the canned upstream (bench/upstream.py) under granian, 1 worker;
  * `ccproxy-engine serve` (`--workers N`, default 1) routed to it;
and drives both with the same closed-loop load (aiohttp, N concurrent connections, a ~10 KB or
~100 KB Anthropic request), so the proxy's figures come as ratios to the upstream measured in the
same run. The load generator runs in this process; pin it to the other core (taskset) for cleaner
numbers on a 2-core machine.

    .venv/bin/python bench/serve_load.py [--seconds 5] [--concurrency 32] [--size 10|100] [--stream] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from translate import large_request, small_request  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 15.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def load(url: str, body: bytes, seconds: float, concurrency: int, is_stream: bool) -> tuple[int, list[float]]:
    latencies: list[float] = []
    done = 0
    deadline = time.perf_counter() + seconds
    headers = {"content-type": "application/json", "x-api-key": "bench", "anthropic-version": "2023-06-01",
               "authorization": "Bearer sk-bench"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url}: HTTP {response.status}")
                latencies.append(time.perf_counter() - start)
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, latencies


def openai_body(anthropic: dict[str, object], is_stream: bool) -> bytes:
    """What the upstream alone is sent in the baseline: a body of the same size."""
    return orjson.dumps({"model": "gpt-4.1", "stream": is_stream,
                         "messages": [{"role": "user", "content": orjson.dumps(anthropic).decode()}]})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--size", choices=["10", "100"], default="10")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="ccproxy-engine serve --workers (default 1)")
    args = parser.parse_args()
    request = small_request() if args.size == "10" else large_request()
    request["stream"] = args.stream
    request["model"] = "claude-sonnet-4-5"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench")}
    up_port, proxy_port = free_port(), free_port()
    processes = []
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config:
        config.write(f"providers:\n  openai: {{base_url: 'http://127.0.0.1:{up_port}/v1', api_key: sk-bench}}\n"
                     "routes:\n  default: openai/gpt-4.1\n")
    try:
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "granian", "--interface", "asgi", "--port", str(up_port), "--workers", "1",
             "--log-level", "error", "upstream:app"], env=env, cwd=ROOT / "bench"))
        started = time.perf_counter()
        processes.append(subprocess.Popen(
            [str(Path(sys.executable).parent / "ccproxy-engine"), "serve", "--config", config.name,
             "--port", str(proxy_port), "--workers", str(args.workers)], env=env, stderr=subprocess.DEVNULL))
        wait_ready(f"http://127.0.0.1:{proxy_port}/health")
        startup = time.perf_counter() - started
        wait_ready(f"http://127.0.0.1:{up_port}/")
        body = orjson.dumps(request)
        results = {}
        for label, url, payload in (
            ("upstream alone (baseline)", f"http://127.0.0.1:{up_port}/v1/chat/completions",
             openai_body(request, args.stream)),
            ("through ccproxy-engine", f"http://127.0.0.1:{proxy_port}/v1/messages", body),
        ):
            asyncio.run(load(url, payload, 1.0, args.concurrency, args.stream))  # warm-up
            count, latencies = asyncio.run(load(url, payload, args.seconds, args.concurrency, args.stream))
            results[label] = (count / args.seconds, statistics.median(latencies) * 1000)
        base_rps, base_ms = results["upstream alone (baseline)"]
        print(json.dumps({"size_kb": len(body) // 1000, "stream": args.stream, "concurrency": args.concurrency,
                          "workers": args.workers, "startup_to_healthy_s": round(startup, 2)}))
        for label, (rps, ms) in results.items():
            print(f"{label:<28} {rps:>8.0f} req/s  median {ms:>6.2f} ms  ({rps / base_rps:.2f}x baseline rps)")
        _, proxy_ms = results["through ccproxy-engine"]
        print(f"added median latency under load: {proxy_ms - base_ms:.2f} ms")
    finally:
        for process in processes:
            process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        os.unlink(config.name)


if __name__ == "__main__":
    main()
