"""Cost of one upstream call through `UpstreamClient`, by HTTP layer, measured in one run.

    .venv/bin/python bench/upstream_transport.py [--requests 2000] [--rounds 3] [--loop uvloop|asyncio]

A minimal keep-alive HTTP/1.1 server runs in a child process (so its CPU is not counted) and answers
every POST with a small JSON body. The client sends the requests one after another, each with a 10 KB
body, and reports wall time and this process's CPU time per request, best of the rounds. Rows:

* ``aiohttp``: `UpstreamClient.send` + `read` as the engine runs it (aiohttp directly);
* ``httpx+aiohttp``: `UpstreamClient` handed httpx-aiohttp's transport (the engine's path before);
* ``httpx-default``: `UpstreamClient` on httpx's own transport;
* ``bare httpx+aiohttp``: a bare ``httpx.AsyncClient`` over the aiohttp transport, no `UpstreamClient`;
* ``aiohttp alone``: a bare ``aiohttp.ClientSession``: the floor. Its difference to ``aiohttp`` is
  what `UpstreamClient` itself costs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import time
from collections.abc import Callable

import httpx
from httpx_aiohttp import AiohttpTransport

from ccproxy_engine._config import Timeouts
from ccproxy_engine._upstream import UpstreamClient, UpstreamRequest

BODY = b'{"model":"m","messages":[{"role":"user","content":"' + b"x" * (10 * 1024 - 60) + b'"}]}'
REPLY = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}'  # noqa: E501
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(REPLY), REPLY)


class _Handler(asyncio.Protocol):
    """Just enough HTTP/1.1: headers, a Content-Length body, one fixed answer, keep-alive."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(RESPONSE)


def _serve(sock: socket.socket) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Handler, sock=sock)
        await server.serve_forever()

    asyncio.run(main())


async def _measure_bare(url: str, count: int) -> tuple[float, float]:
    """The same calls on a bare httpx client with the aiohttp transport: what `_upstream` adds."""
    async with httpx.AsyncClient(transport=AiohttpTransport(), timeout=300) as client:
        for _ in range(100):
            await client.post(url, content=BODY, headers={"content-type": "application/json"})
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            response = await client.post(url, content=BODY, headers={"content-type": "application/json"})
            assert response.status_code == 200
        return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


async def _measure_aiohttp(url: str, count: int) -> tuple[float, float]:
    """The same calls on aiohttp alone (one ClientSession, body read in chunks as the engine does):
    the floor under any httpx layer."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def call() -> None:
            async with session.post(url, data=BODY, headers={"content-type": "application/json"}) as response:
                assert response.status == 200
                b"".join([chunk async for chunk in response.content.iter_any()])

        for _ in range(100):
            await call()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            await call()
        return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


async def _measure(transport: httpx.AsyncBaseTransport | None, url: str, count: int) -> tuple[float, float]:
    request = UpstreamRequest(provider="bench", url=url, headers={"content-type": "application/json"},
                              body=BODY, stream=False, timeouts=Timeouts())
    async with UpstreamClient(["bench"], transport=transport) as client:
        for _ in range(100):  # warm the pool and the code paths
            async with await client.send(request) as response:
                await response.read()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            async with await client.send(request) as response:
                assert response.status == 200
                await response.read()
        return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/chat/completions"
    server = multiprocessing.get_context("fork").Process(target=_serve, args=(sock,), daemon=True)
    server.start()
    run: Callable[..., tuple[float, float]] = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        run = uvloop.run
    try:
        results: dict[str, list[tuple[float, float]]] = {
            "aiohttp": [], "httpx+aiohttp": [], "httpx-default": [], "bare httpx+aiohttp": [], "aiohttp alone": []}
        for _ in range(args.rounds):  # interleaved, so drift hits all alike
            results["aiohttp"].append(run(_measure(None, url, args.requests)))
            results["httpx+aiohttp"].append(run(_measure(AiohttpTransport(), url, args.requests)))
            results["httpx-default"].append(run(_measure(httpx.AsyncHTTPTransport(), url, args.requests)))
            results["bare httpx+aiohttp"].append(run(_measure_bare(url, args.requests)))
            results["aiohttp alone"].append(run(_measure_aiohttp(url, args.requests)))
    finally:
        server.kill()
    best = {name: (min(w for w, _ in rows), min(c for _, c in rows)) for name, rows in results.items()}
    print(f"{args.requests} sequential POSTs of {len(BODY)} B, loop={args.loop}, "
          f"best of {args.rounds} rounds")
    for name, (wall, cpu) in best.items():
        median = statistics.median(w for w, _ in results[name])
        print(f"  {name:18} wall {wall * 1e6:7.0f} µs/req (median {median * 1e6:.0f})   "
              f"client CPU {cpu * 1e6:7.0f} µs/req   {1 / wall:7.0f} req/s")
    for other in ("httpx+aiohttp", "httpx-default"):
        print(f"  {other} / aiohttp: wall x{best[other][0] / best['aiohttp'][0]:.2f}, "
              f"client CPU x{best[other][1] / best['aiohttp'][1]:.2f}")


if __name__ == "__main__":
    main()
