"""The real `ccproxy-engine serve` (granian's embedded server, its own process) as users run it.

The other e2e modules serve `create_app` on uvicorn in-process; this one proves the path users run:
the console script, argument parsing, the serving model of `_serve.py` (one process per worker, a
busy port refused, SIGTERM stops every process).
"""

from __future__ import annotations

import contextlib
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


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


@contextlib.contextmanager
def serving(config_path: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`ccproxy-engine serve` on a free port; afterwards it must stop cleanly on SIGTERM."""
    port = free_port()
    process = subprocess.Popen(
        [*cli_command(), "serve", "--config", str(config_path), "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url, process)
        yield base_url, process
    except BaseException:
        stop(process)
        raise
    output = stop(process)
    assert process.returncode == 0, output
    assert f"serving on {base_url}" in output
    assert "Traceback" not in output, output


@pytest.fixture
def served_cli(config_path: Path) -> Iterator[str]:
    with serving(config_path) as (base_url, _):
        yield base_url


def test_serve_answers_a_streamed_call(served_cli: str, fake: FakeOpenAI) -> None:
    fake.queue(Text(chunks=["Served ", "by ", "granian."]))
    with anthropic.Anthropic(base_url=served_cli, api_key=CLIENT_KEY, max_retries=0, timeout=20) as sdk, \
            sdk.messages.stream(model=MODEL, max_tokens=64, messages=user("Hi")) as stream:
        assert stream.response.headers["x-ccproxy-route"] == ROUTE_HEADER
        message = stream.get_final_message()
    assert message.content[0].text == "Served by granian."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert fake.last.body["stream"] is True


def test_one_worker_is_one_process(config_path: Path) -> None:
    with serving(config_path) as (_, process):
        assert children(process.pid) == []


def test_a_busy_port_is_refused(served_cli: str, config_path: Path) -> None:
    port = served_cli.rsplit(":", 1)[1]
    second = subprocess.run([*cli_command(), "serve", "--config", str(config_path), "--port", port],
                            check=False, capture_output=True, text=True, timeout=STARTUP_TIMEOUT)
    assert second.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: another process is listening there" in second.stderr
    assert "Traceback" not in second.stderr


def test_workers_share_the_port_and_stop_together(config_path: Path, fake: FakeOpenAI) -> None:
    with serving(config_path, "--workers", "2") as (base_url, process):
        workers = children(process.pid)
        assert len(workers) == 2
        fake.queue(*(Text(chunks=["ok"]) for _ in range(4)))
        with anthropic.Anthropic(base_url=base_url, api_key=CLIENT_KEY, max_retries=0, timeout=20) as sdk:
            for _ in range(4):
                message = sdk.messages.create(model=MODEL, max_tokens=16, messages=user("Hi"))
                assert message.content[0].text == "ok"  # type: ignore[union-attr]
        # each worker keeps its own dashboard records, and says which worker it is
        shown = {httpx.get(f"{base_url}/ui/api/summary", timeout=10).json()["worker"] for _ in range(6)}
        assert shown <= set(workers)
    assert all(not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
               for pid in workers)
