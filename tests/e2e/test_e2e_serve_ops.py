"""Operations through the real `ccproxy-engine serve` (granian, its own process): the shutdown deadline
for streams on SIGTERM, and ``/metrics`` summed over forked workers.

The helpers come from test_e2e_cli.py (free port, the console script, waiting for health).
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e.test_e2e_cli import children, cli_command, free_port, wait_healthy
from fakes import FakeOpenAI, Text
from fakes.openai_upstream import Usage
from fakes.server import serve_app
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

SERVER_KEY = "ccpx-ops-key-0123456789abcdef"
HEADERS = {"x-api-key": SERVER_KEY}


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    with serve_app(fake) as url:
        yield fake, url


def write_config(directory: Path, fake_url: str, server: str = "") -> Path:
    path = directory / "ccproxy.yaml"
    path.write_text(
        f"server: {{api_key: {SERVER_KEY}{', ' + server if server else ''}}}\n"
        "providers:\n"
        f"  openai: {{base_url: '{fake_url}/v1', api_key: sk-ops}}\n"
        "routes:\n"
        "  default: [openai/gpt-4.1]\n",
        encoding="utf-8",
    )
    return path


def start(config: Path, *args: str) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    process = subprocess.Popen([*cli_command(), "serve", "--config", str(config), "--port", str(port), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    wait_healthy(base_url, process)
    return base_url, process


def finish(process: subprocess.Popen[bytes], timeout: float = 15) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate(timeout=5)
        pytest.fail(f"the server did not exit within {timeout} s:\n{output.decode(errors='replace')}")
    return output.decode(errors="replace")


class StreamReader(threading.Thread):
    """One streamed request read to its end in a thread; `started` is set at its first byte."""

    def __init__(self, base_url: str, text: str) -> None:
        super().__init__(daemon=True)
        self.base_url, self.text = base_url, text
        self.started = threading.Event()
        self.body = b""
        self.failure: BaseException | None = None

    def run(self) -> None:
        body = {"model": "claude-x", "max_tokens": 64, "stream": True,
                "messages": [{"role": "user", "content": self.text}]}
        try:
            with httpx.stream("POST", f"{self.base_url}/v1/messages", json=body, headers=HEADERS,
                              timeout=30) as response:
                for chunk in response.iter_raw():
                    self.body += chunk
                    self.started.set()
        except BaseException as exc:  # reported by the test
            self.failure = exc
            self.started.set()


def test_sigterm_lets_streams_finish_within_the_grace_period_and_ends_the_rest(
        upstream: tuple[FakeOpenAI, str], tmp_path: Path) -> None:
    fake, url = upstream
    fake.reset()
    short = Text("short answer", chunks=["short ", "answer"], delay_between_chunks=0.2)  # about 1 s
    long = Text("x" * 60, chunks=["x"] * 60, delay_between_chunks=0.25)
    fake.responder = lambda body: long if "long" in str(body["messages"][-1]["content"]) else short
    base_url, process = start(write_config(tmp_path, url, "shutdown_grace: 3"), "--access-log")
    try:
        readers = [StreamReader(base_url, "short please"), StreamReader(base_url, "long please")]
        for reader in readers:
            reader.start()
            assert reader.started.wait(10)
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        for reader in readers:
            reader.join(15)
        output = finish(process)
    finally:
        if process.poll() is None:
            process.kill()
    short_body, long_body = (reader.body.decode() for reader in readers)
    assert all(reader.failure is None for reader in readers), [reader.failure for reader in readers]
    assert "event: message_stop" in short_body and "event: error" not in short_body
    assert long_body.rstrip().splitlines()[-2:] == [
        "event: error",
        'data: {"type":"error","error":{"type":"overloaded_error","message":"the server is shutting down; '
        'the stream was ended (retry the request)"}}']
    assert "event: message_stop" not in long_body
    assert time.monotonic() - stopped_at >= 3  # the long stream ran on for the grace period
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    access = [json.loads(line.split(" ccproxy_engine.access: ", 1)[1]) for line in output.splitlines()
              if " ccproxy_engine.access: " in line]  # --access-log: one line per request, whatever the level
    assert sorted((entry["status"], entry["stream"], entry["provider"]) for entry in access) == [
        (200, True, "openai"), (200, True, "openai")]


def samples(base_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{base_url}/metrics", headers=HEADERS, timeout=10)
    assert response.status_code == 200, response.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_metrics_cover_every_worker(upstream: tuple[FakeOpenAI, str], tmp_path: Path) -> None:
    fake, url = upstream
    fake.reset()
    fake.default = Text("ok", usage=Usage(prompt=10, completion=1))
    before = set(Path(tempfile.gettempdir()).glob("ccproxy-metrics-*"))
    base_url, process = start(write_config(tmp_path, url), "--workers", "2")
    served_by: set[int] = set()
    try:
        workers = children(process.pid)
        assert len(workers) == 2
        made = set(Path(tempfile.gettempdir()).glob("ccproxy-metrics-*")) - before
        assert len(made) == 1, made  # the supervisor's directory
        metrics_dir = made.pop()
        body = {"model": "claude-x", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(12):  # a new connection each time: the kernel spreads them over the workers
            assert httpx.post(f"{base_url}/v1/messages", json=body, headers=HEADERS, timeout=10).status_code == 200
        served_by = {int(p.stem.rsplit("_", 1)[1]) for p in metrics_dir.glob("counter_*.db")}
        key = ("ccproxy_requests_total", frozenset({"provider": "openai", "model": "gpt-4.1", "route": "default",
                                                    "status": "200"}.items()))
        for _ in range(4):  # whichever worker answers, it counts all of them
            found = samples(base_url)
            assert found[key] == 12
            assert found[("ccproxy_tokens_total", frozenset({"provider": "openai", "model": "gpt-4.1",
                                                             "direction": "in"}.items()))] == 120
    finally:
        process.send_signal(signal.SIGTERM)
        output = finish(process)
    assert process.returncode == 0, output
    assert len(served_by & set(workers)) == 2, "both workers should have served (and counted) requests"
    assert not metrics_dir.exists()  # the supervisor cleaned up
