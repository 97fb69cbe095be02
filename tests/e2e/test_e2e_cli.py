"""The real `ccproxy-engine serve` (granian, its own process) answers a streamed SDK call.

The other e2e modules serve `create_app` on uvicorn in-process; this one proves the path users run:
the console script, argument parsing, the environment hand-off to granian's worker, its app factory.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest
from e2e.support import CLIENT_KEY, MODEL, ROUTE_HEADER, user
from fakes import FakeOpenAI, Text

pytestmark = pytest.mark.e2e

STARTUP_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cli_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m ccproxy_engine`."""
    script = Path(sys.executable).with_name("ccproxy-engine")
    if script.exists():
        return [str(script)]
    found = shutil.which("ccproxy-engine")
    return [found] if found else [sys.executable, "-m", "ccproxy_engine"]


def wait_healthy(base_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            pytest.fail(f"ccproxy-engine serve exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"ccproxy-engine serve was not healthy within {STARTUP_TIMEOUT} s")


def stop(process: subprocess.Popen[bytes]) -> str:
    """SIGTERM, as a service manager would; returns everything the server printed."""
    process.terminate()
    try:
        output, _ = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate(timeout=5)
    return output.decode(errors="replace")


@pytest.fixture
def served_cli(config_path: Path) -> Iterator[str]:
    """`ccproxy-engine serve` on a free port; after the test it must stop cleanly on SIGTERM."""
    port = free_port()
    process = subprocess.Popen(
        [*cli_command(), "serve", "--config", str(config_path), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url, process)
        yield base_url
    except BaseException:
        stop(process)
        raise
    output = stop(process)
    assert process.returncode == 0, output
    assert f"serving on {base_url}" in output
    assert "Traceback" not in output, output


def test_serve_answers_a_streamed_call(served_cli: str, fake: FakeOpenAI) -> None:
    fake.queue(Text(chunks=["Served ", "by ", "granian."]))
    with anthropic.Anthropic(base_url=served_cli, api_key=CLIENT_KEY, max_retries=0, timeout=20) as sdk, \
            sdk.messages.stream(model=MODEL, max_tokens=64, messages=user("Hi")) as stream:
        assert stream.response.headers["x-ccproxy-route"] == ROUTE_HEADER
        message = stream.get_final_message()
    assert message.content[0].text == "Served by granian."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert fake.last.body["stream"] is True
