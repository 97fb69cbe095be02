"""Tests for `_upstream`: error mapping (MockTransport) and real-socket streaming, timeouts and cancel.

The real-socket tests run against both the aiohttp transport the engine uses and httpx's default
transport, because each reports failures differently and `_upstream` must map both the same way.
"""

from __future__ import annotations

import asyncio
import gzip
import queue
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import httpx
import pytest
from fakes import serve_app
from fakes.server import Receive, Scope, Send

from ccproxy_engine._config import Timeouts
from ccproxy_engine._errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeoutError
from ccproxy_engine._upstream import UpstreamClient, UpstreamRequest, UpstreamResponse

SHORT = 0.3  # a time limit a test is meant to hit
SURE = 5.0  # how long a test waits for something that must happen
SECRET = "sk-live-0123456789abcdef"


def request(url: str, *, stream: bool = True, timeouts: Timeouts | None = None,
            headers: dict[str, str] | None = None, body: bytes = b'{"model":"m"}') -> UpstreamRequest:
    return UpstreamRequest(provider="local", url=url, headers=headers or {"content-type": "application/json"},
                           body=body, stream=stream, timeouts=timeouts or Timeouts())


# -- MockTransport: mapping ---------------------------------------------------------------------------


async def mock_client(handler: Any) -> UpstreamClient:
    client = UpstreamClient(["mock"], transport=httpx.MockTransport(handler))
    await client.open()
    return client


def mock_request(**kwargs: Any) -> UpstreamRequest:
    base = request("https://api.example.com/v1/chat/completions", **kwargs)
    base.provider = "mock"
    return base


async def test_request_goes_out_as_given_and_streams_ask_for_identity_encoding() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(201, headers={"x-upstream": "yes"}, content=b"created")

    async with await mock_client(handler) as client:
        async with await client.send(mock_request(headers={"authorization": "Bearer k"}, body=b"{}")) as resp:
            assert (resp.status, resp.headers["X-Upstream"], await resp.read()) == (201, "yes", b"created")
        await (await client.send(mock_request(stream=False))).aclose()
    streamed, whole = seen
    assert (streamed.method, str(streamed.url), streamed.content) == (
        "POST", "https://api.example.com/v1/chat/completions", b"{}")
    assert streamed.headers["authorization"] == "Bearer k"
    assert streamed.headers["user-agent"] == "ccproxy-engine"
    assert streamed.headers["content-type"] == "application/json"  # FastAPI-based servers need it
    assert streamed.headers["accept-encoding"] == "identity"
    assert "gzip" in whole.headers["accept-encoding"]


async def test_compressed_body_is_decoded() -> None:
    payload = b'{"id":"x"}' * 100

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-encoding": "gzip"}, content=gzip.compress(payload))

    async with await mock_client(handler) as client:
        response = await client.send(mock_request(stream=False))
        assert await response.read() == payload
        assert response.is_closed


@pytest.mark.parametrize(("raised", "expected", "words"), [
    (httpx.ConnectError("[Errno 111] Connection refused"), UpstreamConnectError,
     "cannot connect to api.example.com: [Errno 111] Connection refused"),
    (httpx.ConnectTimeout(""), UpstreamTimeoutError,
     "connect timeout: no connection to api.example.com within 10 s"),
    (httpx.PoolTimeout(""), UpstreamTimeoutError, "pool timeout"),
    (httpx.ReadTimeout(""), UpstreamTimeoutError,
     "first-byte timeout: api.example.com sent no response headers within 300 s"),
    (httpx.WriteTimeout(""), UpstreamTimeoutError, "write timeout"),
    (httpx.RemoteProtocolError("Server disconnected without sending a response."), UpstreamConnectError,
     "api.example.com closed the connection before answering (Server disconnected"),
    (httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."), UpstreamConnectError,
     "cannot connect to api.example.com"),
])
async def test_send_errors_are_mapped(raised: Exception, expected: type[Exception], words: str) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise raised

    async with await mock_client(handler) as client:
        with pytest.raises(expected) as caught:
            await client.send(mock_request())
    assert words in str(caught.value)
    assert str(caught.value).startswith("[mock] ")
    assert caught.value.__cause__ is raised


async def test_aiohttp_cause_decides_over_the_coarse_httpx_class() -> None:
    """httpx-aiohttp reports a server hang-up as ConnectTimeout; it is a cut connection."""
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("Server disconnected") from aiohttp.ServerDisconnectedError()

    async with await mock_client(handler) as client:
        with pytest.raises(UpstreamConnectError, match="closed the connection before answering"):
            await client.send(mock_request())


async def test_messages_never_carry_credentials() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"failed: https://api.example.com/v1/x?key={SECRET}&alt=sse "
                                 f"token={SECRET} header Bearer {SECRET}")

    async with await mock_client(handler) as client:
        req = mock_request(headers={"Authorization": f"Bearer {SECRET}"})
        req.url = f"https://api.example.com/v1/x?key={SECRET}"
        with pytest.raises(UpstreamConnectError) as caught:
            await client.send(req)
    message = str(caught.value)
    assert SECRET not in message
    assert "key=" not in message
    assert "cannot connect to api.example.com: failed: https://api.example.com/v1/x token=***" in message


async def test_read_error_mid_body_is_a_cut_stream_and_closes_the_response() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        raise httpx.ReadError("peer reset")

    async with await mock_client(lambda req: httpx.Response(200, content=body())) as client:
        response = await client.send(mock_request())
        received = []
        with pytest.raises(UpstreamConnectError, match="mid-response; the stream was cut") as caught:
            async for chunk in response.aiter_bytes():
                received.append(chunk)  # noqa: PERF401 -- the chunks before the error are the point
        assert received == [b"data: 1\n\n"]
        assert isinstance(caught.value.__cause__, httpx.ReadError)
        assert response.is_closed


async def test_undecodable_body_is_a_protocol_error() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"not gzip at all"

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-encoding": "gzip"}, content=body())

    async with await mock_client(handler) as client:
        response = await client.send(mock_request(stream=False))
        with pytest.raises(UpstreamProtocolError, match="undecodable body"):
            await response.read()


async def slow_body(pause: float, count: int = 100) -> AsyncIterator[bytes]:
    for index in range(count):
        yield b"%d\n" % index
        await asyncio.sleep(pause)


async def test_idle_limit_shorter_than_first_byte_is_enforced_per_chunk() -> None:
    async with await mock_client(lambda req: httpx.Response(200, content=slow_body(SURE))) as client:
        response = await client.send(mock_request(timeouts=Timeouts(first_byte=SURE, idle=SHORT)))
        idle = r"idle timeout: api\.example\.com sent nothing for 0\.3 s"
        with pytest.raises(UpstreamTimeoutError, match=idle):
            await response.read()
        assert response.is_closed


async def test_total_limit_applies_to_non_streamed_calls_only() -> None:
    limits = Timeouts(first_byte=SURE, idle=SURE, total=SHORT)

    async with await mock_client(lambda req: httpx.Response(200, content=slow_body(0.05))) as client:
        response = await client.send(mock_request(stream=False, timeouts=limits))
        with pytest.raises(UpstreamTimeoutError, match=r"total timeout: .* within 0\.3 s"):
            await response.read()

        async with await client.send(mock_request(stream=True, timeouts=limits)) as streamed:
            chunks = streamed.aiter_bytes()
            received = [await anext(chunks) for _ in range(12)]  # 0.6 s: twice the total limit
        assert received[-1] == b"11\n"


async def test_client_lifecycle_errors() -> None:
    client = UpstreamClient(["mock"], transport=httpx.MockTransport(lambda req: httpx.Response(204)))
    with pytest.raises(RuntimeError, match=r"open\(\) has not been called"):
        await client.send(mock_request())
    async with client:
        late = mock_request()
        late.provider = "added-later"  # pools for providers not named up front open on first use
        async with await client.send(late) as response:
            assert response.status == 204
    with pytest.raises(RuntimeError, match=r"open\(\) has not been called"):
        await client.send(mock_request())


# -- a real local upstream ----------------------------------------------------------------------------


class Probe:
    """What one test's requests did, seen from the upstream's side (thread-safe: the app runs on the
    server's thread)."""

    def __init__(self) -> None:
        self.acks: queue.Queue[None] = queue.Queue()  # the test read a chunk; the app may send the next
        self.disconnected = threading.Event()
        self.headers: dict[str, str] = {}


class ScriptedUpstream:
    """A raw ASGI upstream; the path picks the behaviour. Each request reports to the probe that was
    current when it arrived, so a module-wide server serves every test."""

    def __init__(self) -> None:
        self.probe = Probe()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        probe = self.probe
        probe.headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        while (await receive()).get("more_body"):
            pass
        query = {k: float(v[0]) for k, v in parse_qs(scope["query_string"].decode()).items()}
        behaviour = getattr(self, scope["path"].strip("/").replace("-", "_"))
        await behaviour(probe, receive, send, **query)

    @staticmethod
    async def start(send: Send, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": headers or [(b"content-type", b"text/event-stream")]})

    @staticmethod
    async def hung_up(probe: Probe, receive: Receive, within: float) -> bool:
        try:
            message = await asyncio.wait_for(receive(), within)
        except TimeoutError:
            return False
        if message["type"] == "http.disconnect":
            probe.disconnected.set()
            return True
        return False

    async def gated(self, probe: Probe, receive: Receive, send: Send) -> None:
        await self.start(send)
        for index in range(1, 4):
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % index, "more_body": True})
            await asyncio.to_thread(probe.acks.get, timeout=SURE)
        await send({"type": "http.response.body", "body": b""})

    async def error(self, probe: Probe, receive: Receive, send: Send) -> None:
        await self.start(send, 429, [(b"content-type", b"application/json"), (b"retry-after", b"7")])
        await send({"type": "http.response.body", "body": b'{"error":{"message":"slow down"}}'})

    async def slow_headers(self, probe: Probe, receive: Receive, send: Send, delay: float) -> None:
        if await self.hung_up(probe, receive, delay):
            return
        await self.start(send)
        await send({"type": "http.response.body", "body": b"late but fine"})

    async def stall(self, probe: Probe, receive: Receive, send: Send) -> None:
        await self.start(send)
        await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
        await self.hung_up(probe, receive, 30)

    async def cut(self, probe: Probe, receive: Receive, send: Send) -> None:
        await self.start(send)
        await send({"type": "http.response.body", "body": b"data: partial\n\n", "more_body": True})
        raise ConnectionAbortedError("the scripted upstream drops the connection here")

    async def gzipped(self, probe: Probe, receive: Receive, send: Send, broken: float = 0) -> None:
        body = b"not gzip at all" if broken else gzip.compress(b'{"ok":true}')
        await self.start(send, 200, [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")])
        await send({"type": "http.response.body", "body": body})

    async def slow_stream(self, probe: Probe, receive: Receive, send: Send) -> None:
        await self.start(send)
        for _ in range(600):
            await send({"type": "http.response.body", "body": b"data: tick\n\n", "more_body": True})
            if await self.hung_up(probe, receive, 0.05):
                return
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def upstream_app() -> Iterator[tuple[ScriptedUpstream, str]]:
    app = ScriptedUpstream()
    with serve_app(app) as base_url:
        yield app, base_url


@pytest.fixture
def server(upstream_app: tuple[ScriptedUpstream, str]) -> tuple[Probe, str]:
    """The module's upstream with a fresh probe for this test."""
    app, base_url = upstream_app
    app.probe = Probe()
    return app.probe, base_url


@pytest.fixture(params=["aiohttp", "httpx-default"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[UpstreamClient]:
    transport = None if request.param == "aiohttp" else httpx.AsyncHTTPTransport()
    async with UpstreamClient(["local"], transport=transport) as upstream:
        yield upstream


async def test_chunks_arrive_as_sent_without_buffering(server: tuple[Probe, str],
                                                       client: UpstreamClient) -> None:
    probe, base_url = server
    received = []
    async with await client.send(request(f"{base_url}/gated")) as response:
        assert response.status == 200
        chunks = response.aiter_bytes()
        for _ in range(3):
            # the app sends the next chunk only after this one was read: nothing can sit in a buffer
            received.append(await asyncio.wait_for(anext(chunks), SURE))
            probe.acks.put(None)
        assert [chunk async for chunk in chunks] == []
    assert received == [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"]
    assert probe.headers["accept-encoding"] == "identity"


async def test_error_status_body_and_headers_are_readable(server: tuple[Probe, str],
                                                          client: UpstreamClient) -> None:
    _, base_url = server
    async with await client.send(request(f"{base_url}/error", stream=False)) as response:
        assert (response.status, response.headers["retry-after"]) == (429, "7")
        assert await response.read() == b'{"error":{"message":"slow down"}}'


async def test_gzip_bodies_are_decoded_and_broken_ones_are_protocol_errors(
        server: tuple[Probe, str], client: UpstreamClient) -> None:
    _, base_url = server
    async with await client.send(request(f"{base_url}/gzipped", stream=False)) as response:
        assert await response.read() == b'{"ok":true}'
    async with await client.send(request(f"{base_url}/gzipped?broken=1", stream=False)) as response:
        with pytest.raises(UpstreamProtocolError, match="undecodable body"):
            await response.read()


async def test_refused_connection_is_a_connect_error(client: UpstreamClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed at once: nothing listens there
    url = f"http://127.0.0.1:{port}/v1/chat?key={SECRET}"
    with pytest.raises(UpstreamConnectError) as caught:
        await client.send(request(url, headers={"authorization": f"Bearer {SECRET}"}))
    assert str(caught.value).startswith(f"[local] cannot connect to 127.0.0.1:{port}: ")
    assert SECRET not in str(caught.value)


async def test_first_byte_timeout(server: tuple[Probe, str], client: UpstreamClient) -> None:
    _, base_url = server
    expected = r"first-byte timeout: 127\.0\.0\.1:[0-9]+ sent no response headers within 0\.3 s"
    with pytest.raises(UpstreamTimeoutError, match=expected):
        await client.send(request(f"{base_url}/slow-headers?delay=3", timeouts=Timeouts(first_byte=SHORT)))


async def test_a_short_idle_limit_does_not_cut_the_wait_for_headers(
        server: tuple[Probe, str], client: UpstreamClient) -> None:
    _, base_url = server
    limits = Timeouts(first_byte=SURE, idle=SHORT)
    async with await client.send(request(f"{base_url}/slow-headers?delay=0.6", timeouts=limits)) as response:
        assert await response.read() == b"late but fine"


@pytest.mark.parametrize("first_byte", [SHORT, SURE], ids=["transport-enforced", "timer-enforced"])
async def test_idle_timeout_mid_stream(server: tuple[Probe, str], client: UpstreamClient,
                                       first_byte: float) -> None:
    probe, base_url = server
    async with await client.send(request(f"{base_url}/stall",
                                         timeouts=Timeouts(first_byte=first_byte, idle=SHORT))) as response:
        chunks = response.aiter_bytes()
        assert await anext(chunks) == b"data: first\n\n"
        with pytest.raises(UpstreamTimeoutError, match=r"idle timeout: .* sent nothing for 0\.3 s"):
            await anext(chunks)
        assert response.is_closed
    assert await asyncio.to_thread(probe.disconnected.wait, SURE)


async def test_server_closing_mid_body_is_a_cut_stream(server: tuple[Probe, str],
                                                       client: UpstreamClient) -> None:
    _, base_url = server
    received = []
    async with await client.send(request(f"{base_url}/cut")) as response:
        with pytest.raises(UpstreamConnectError, match="mid-response; the stream was cut"):
            async for chunk in response.aiter_bytes():
                received.append(chunk)  # noqa: PERF401 -- the chunks before the error are the point
    assert received == [b"data: partial\n\n"]


async def test_cancelling_the_consumer_closes_the_upstream(server: tuple[Probe, str],
                                                           client: UpstreamClient) -> None:
    probe, base_url = server
    response = await client.send(request(f"{base_url}/slow-stream"))
    first = asyncio.Event()

    async def consume(response: UpstreamResponse) -> None:
        async for _ in response.aiter_bytes():  # no async with: cancellation alone must free it
            first.set()

    task = asyncio.create_task(consume(response))
    await asyncio.wait_for(first.wait(), SURE)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert response.is_closed
    assert await asyncio.to_thread(probe.disconnected.wait, SURE)


async def test_cancelling_while_waiting_for_headers_closes_the_upstream(
        server: tuple[Probe, str], client: UpstreamClient) -> None:
    probe, base_url = server
    task = asyncio.create_task(client.send(request(f"{base_url}/slow-headers?delay=30")))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(probe.disconnected.wait, SURE)
