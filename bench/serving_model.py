"""What the serving model costs, for a minimal Litestar app: start-up, idle memory, throughput.

    .venv/bin/python bench/serving_model.py [--seconds 5] [--runs 3]

Servers compared, each serving the same two-route Litestar app (``POST /v1/messages`` reads the
body and answers a small JSON; ``GET /health``) on core 1, with wrk on core 0:

* ``granian workers=1``: ``Granian(...).serve()`` as ``ccproxy-engine serve`` runs it today: a parent
  process that forks one worker (the parent imports the app's stack too);
* ``granian embedded``: ``granian.server.embed.Server`` awaited inside the one process's own event
  loop (granian marks it experimental);
* ``uvicorn``: one process, uvloop + httptools (``pip install httptools`` into the venv; h11 without it).

Per server: start-up (process start to the first 200 from /health), idle RSS and PSS of the process
tree, then requests/s and p50 of a 10 KB POST at c=32 and c=1 (medians of the rounds), and CPU per
request. All in one run, so the ratios hold even on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from litestar import Litestar, Request, Response, get, post

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ["granian-workers-1", "granian-embedded", "uvicorn"]


def build_app() -> Any:
    """The minimal app: Litestar with the engine's settings (no OpenAPI, no logging config)."""

    @post("/v1/messages", status_code=200)
    async def messages(request: Request[Any, Any, Any]) -> Response[bytes]:
        body = orjson.loads(await request.body())
        return Response(orjson.dumps({"type": "message", "n": len(body)}), media_type="application/json")

    @get("/health")
    async def health() -> Response[bytes]:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Litestar(route_handlers=[messages, health], openapi_config=None, logging_config=None, debug=False)


def serve(mode: str, port: int) -> None:
    """Run one server in this process (the child side of `measure`)."""
    if mode == "granian-workers-1":
        from granian import Granian
        from granian.constants import Interfaces

        Granian("serving_model:build_app", factory=True, address="127.0.0.1", port=port, interface=Interfaces.ASGI,
                workers=1, log_level="error", log_access=False).serve()  # type: ignore[arg-type]
    elif mode == "granian-embedded":
        import asyncio

        import uvloop
        from granian.constants import Interfaces
        from granian.server.embed import Server

        async def main() -> None:
            server = Server(build_app(), address="127.0.0.1", port=port, interface=Interfaces.ASGI,
                            log_enabled=False)
            await server.serve()

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(main())
    elif mode == "uvicorn":
        import uvicorn

        uvicorn.run(build_app(), host="127.0.0.1", port=port, log_level="error", access_log=False,
                    loop="uvloop", http="auto", lifespan="on")  # httptools when installed
    else:
        raise SystemExit(f"unknown mode {mode}")


def wait_health(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                connection.close()
                return
        except (ConnectionError, OSError):
            time.sleep(0.003)
    raise RuntimeError("no answer in time")


def measure(mode: str, body_file: Path, seconds: float, runs: int) -> dict[str, Any]:
    # imported here, not at the top: the server child must load only what its mode needs
    from onecore import PROXY_CORE, free_port, stop, tree_cpu_seconds, tree_memory_mb, tree_pids, wrk

    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(["taskset", "-c", str(PROXY_CORE), sys.executable, __file__, "--serve", mode,
                                "--port", str(port)], start_new_session=True,
                               stderr=subprocess.DEVNULL)
    try:
        wait_health(port, process)
        result: dict[str, Any] = {"mode": mode, "startup_s": time.perf_counter() - started}
        time.sleep(1.5)
        result["rss_mb"], result["pss_mb"] = tree_memory_mb(process.pid)
        result["processes"] = len(tree_pids(process.pid))
        wrk(port, "/v1/messages", body_file, 32, 1)  # warm-up
        rows: dict[str, list[dict[str, float]]] = {"c32": [], "c1": []}
        for _ in range(runs):
            for name, concurrency in (("c32", 32), ("c1", 1)):
                cpu = tree_cpu_seconds(process.pid)
                row = wrk(port, "/v1/messages", body_file, concurrency, seconds)
                row["cpu_us_per_request"] = (tree_cpu_seconds(process.pid) - cpu) * 1e6 / row["requests"]
                rows[name].append(row)
        for name, measured in rows.items():
            result[name] = {key: statistics.median(r[key] for r in measured) for key in measured[0]}
        return result
    finally:
        stop(process)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    from onecore import LOAD_CORE, anthropic_bodies

    os.sched_setaffinity(0, {LOAD_CORE})
    bodies = anthropic_bodies(Path(tempfile.mkdtemp(prefix="serving-model-")))
    results = [measure(mode, bodies.small, args.seconds, args.runs) for mode in MODES]
    print("| server | processes | start-up to first /health | idle RSS (PSS) | req/s c=32 | p50 c=1 | "
          "CPU / request c=32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['mode']} | {r['processes']} | {r['startup_s']:.2f} s | {r['rss_mb']:.0f} ({r['pss_mb']:.0f}) MB | "
              f"{r['c32']['rps']:,.0f} | {r['c1']['p50_ms']:.2f} ms | {r['c32']['cpu_us_per_request']:.0f} µs |")


if __name__ == "__main__":
    main()
