"""The background server and the launcher as users run them: start, status, stop, reload, code.

Every command runs as its own process (the console script), with XDG_STATE_HOME in a scratch
directory, against a config whose only provider is the module's fake OpenAI upstream. `code` runs a
stand-in `claude` that records the environment and arguments it was given. A foreground `serve`
with two workers is reloaded by SIGHUP, as a service manager would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest
from e2e.support import CLIENT_KEY, MODEL, user
from e2e.test_e2e_cli import STARTUP_TIMEOUT, cli_command, free_port, serving
from fakes import FakeOpenAI, Text

from ccproxy_engine._daemon import Instance

pytestmark = pytest.mark.e2e

RELOAD_TIMEOUT = 20.0


def config_text(upstream_config: Path, port: int, default: str = "openai/gpt-4.1") -> str:
    """The module's upstream config on `port`, routing everything to `default`."""
    text = upstream_config.read_text().replace("[openai/gpt-4.1]", f"[{default}]")
    return f"server: {{host: 127.0.0.1, port: {port}}}\n{text}"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def env(state: Path) -> dict[str, str]:
    return {**os.environ, "XDG_STATE_HOME": str(state)}


@pytest.fixture
def my_config(tmp_path: Path, config_path: Path) -> tuple[Path, str]:
    port = free_port()
    path = tmp_path / "ccproxy.yaml"
    path.write_text(config_text(config_path, port))
    return path, f"http://127.0.0.1:{port}"


def cli(env: dict[str, str], *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*cli_command(), *args], env=env, capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


@pytest.fixture
def started(my_config: tuple[Path, str], env: dict[str, str]) -> Iterator[tuple[Path, str]]:
    """A background server for `my_config`, stopped afterwards whatever the test did."""
    config, url = my_config
    result = cli(env, "start", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"ccproxy-engine started on {url}" in result.stderr
    yield config, url
    cli(env, "stop", "--config", str(config))


def route_of(url: str, fake: FakeOpenAI) -> str:
    fake.queue(Text("ok"))
    with anthropic.Anthropic(base_url=url, api_key=CLIENT_KEY, max_retries=0, timeout=20) as sdk:
        response = sdk.messages.with_raw_response.create(model=MODEL, max_tokens=16, messages=user("Hi"))
    assert response.parse().content[0].text == "ok"  # type: ignore[union-attr]
    return response.headers["x-ccproxy-route"]


def test_start_status_stop(started: tuple[Path, str], env: dict[str, str], state: Path, fake: FakeOpenAI) -> None:
    config, url = started
    assert route_of(url, fake) == "openai/gpt-4.1; reason=default"
    instance = Instance.for_config(config, env)
    assert instance.directory == state / "ccproxy-engine"
    assert instance.pid_file.exists() and instance.log_file.exists()

    status = cli(env, "status", "--config", str(config))
    assert status.returncode == 0
    lines = status.stdout.splitlines()
    assert lines[0].startswith(f"ccproxy-engine: running (pid {instance.pid()}, up ")
    assert f"address:   {url}" in lines
    assert f"config:    {config}" in lines
    assert "providers: openai" in lines
    assert "  default: openai/gpt-4.1" in lines
    assert "health:    ok" in lines

    again = cli(env, "start", "--config", str(config))
    assert again.returncode == 0
    assert f"already running for {config} (pid {instance.pid()}) on {url}" in again.stderr

    stopped = cli(env, "stop", "--config", str(config))
    assert stopped.returncode == 0
    assert "ccproxy-engine stopped" in stopped.stderr
    assert not instance.pid_file.exists()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=2)
    after = cli(env, "status", "--config", str(config))
    assert (after.returncode, after.stdout.strip()) == (3, f"ccproxy-engine: not running for {config}")


def test_a_stale_pid_file_is_detected_and_replaced(my_config: tuple[Path, str], env: dict[str, str]) -> None:
    config, url = my_config
    instance = Instance.for_config(config, env)
    instance.directory.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    instance.pid_file.write_text(f"{dead.pid}\n")
    status = cli(env, "status", "--config", str(config))
    assert status.returncode == 3
    assert "stale PID file" in status.stdout
    try:
        result = cli(env, "start", "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert "removed a stale PID file" in result.stderr
        assert instance.pid() not in {None, dead.pid}
        assert httpx.get(f"{url}/health", timeout=2).status_code == 200
    finally:
        cli(env, "stop", "--config", str(config))


def test_start_with_a_broken_config_says_why(tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("providers:\n  openai: {api_key: x}\nroutes:\n  default: nobody/x\n")
    result = cli(env, "start", "--config", str(config))
    assert result.returncode == 1
    assert f"{config}:4:" in result.stderr


def test_reload_applies_a_change_and_keeps_running_on_an_invalid_one(
        started: tuple[Path, str], env: dict[str, str], config_path: Path, fake: FakeOpenAI) -> None:
    config, url = started
    port = int(url.rsplit(":", 1)[1])
    config.write_text(config_text(config_path, port, "openai/gpt-4.1-mini"))
    result = cli(env, "reload", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"reloaded {config}: providers openai" in result.stderr
    assert route_of(url, fake) == "openai/gpt-4.1-mini; reason=default"

    config.write_text(config.read_text() + "surprise: true\n")
    result = cli(env, "reload", "--config", str(config))
    assert result.returncode == 1
    assert "reload failed; still serving the previous config" in result.stderr
    assert f"{config}:" in result.stderr and "surprise" in result.stderr
    assert route_of(url, fake) == "openai/gpt-4.1-mini; reason=default"

    config.write_text(config_text(config_path, free_port(), "openai/o3"))
    result = cli(env, "reload", "--config", str(config))
    assert result.returncode == 0
    assert f"restart to listen there (still on 127.0.0.1:{port})" in result.stderr
    assert route_of(url, fake) == "openai/o3; reason=default"
    status = cli(env, "status", "--config", str(config))
    assert "  default: openai/o3" in status.stdout.splitlines()
    assert "last reload: " in status.stdout
    log = Instance.for_config(config, env).log_file.read_text()
    assert "reload failed; still serving the previous config" in log


def test_reload_and_stop_when_nothing_runs(my_config: tuple[Path, str], env: dict[str, str]) -> None:
    config, _ = my_config
    assert cli(env, "reload", "--config", str(config)).returncode == 1
    stopped = cli(env, "stop", "--config", str(config))
    assert (stopped.returncode, stopped.stderr.strip()) == (0, f"ccproxy-engine is not running for {config}")


def test_sighup_reloads_every_worker_of_a_foreground_server(tmp_path: Path, config_path: Path,
                                                             fake: FakeOpenAI) -> None:
    config = tmp_path / "ccproxy.yaml"
    config.write_text(config_path.read_text())
    with serving(config, "--workers", "2", "--log-level", "info") as (base_url, process):
        config.write_text(config_path.read_text().replace("[openai/gpt-4.1]", "[openai/gpt-4.1-mini]"))
        os.kill(process.pid, signal.SIGHUP)
        fake.default = Text("ok")
        deadline = time.monotonic() + RELOAD_TIMEOUT
        routes: list[str] = []
        while time.monotonic() < deadline:
            # a new connection per request: the kernel spreads them over both workers
            routes = [httpx.post(f"{base_url}/v1/messages", headers={"x-api-key": CLIENT_KEY},
                                 json={"model": MODEL, "max_tokens": 8, "messages": user("Hi")},
                                 timeout=10).headers["x-ccproxy-route"] for _ in range(12)]
            if set(routes) == {"openai/gpt-4.1-mini; reason=default"}:
                break
            time.sleep(0.2)
        assert set(routes) == {"openai/gpt-4.1-mini; reason=default"}


# --- code --------------------------------------------------------------------------------------

STAND_IN = """\
#!{python}
import json, os, sys
with open({record!r}, "w") as out:
    json.dump({{"args": sys.argv[1:], "env": dict(os.environ)}}, out)
sys.exit(7)
"""


@pytest.fixture
def stand_in_claude(tmp_path: Path) -> tuple[Path, Path]:
    """A `claude` on PATH that records its arguments and environment, then exits 7."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "claude-run.json"
    script = bin_dir / "claude"
    script.write_text(STAND_IN.format(python=sys.executable, record=str(record)))
    script.chmod(0o755)
    return bin_dir, record


def test_code_starts_the_proxy_and_runs_claude(my_config: tuple[Path, str], env: dict[str, str],
                                               stand_in_claude: tuple[Path, Path]) -> None:
    config, url = my_config
    bin_dir, record = stand_in_claude
    env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "ANTHROPIC_API_KEY": "sk-ant-should-go"}
    try:
        result = cli(env, "code", "--config", str(config), "-p", "hello there", "--config", "claude's own")
        assert result.returncode == 7, result.stderr
        assert f"ccproxy-engine started on {url}" in result.stderr
        run = json.loads(record.read_text())
        assert run["args"] == ["-p", "hello there", "--config", "claude's own"]
        seen = run["env"]
        assert seen["ANTHROPIC_BASE_URL"] == url
        assert seen["ANTHROPIC_AUTH_TOKEN"] == "ccproxy-engine"
        assert seen["API_TIMEOUT_MS"] == "600000"
        assert seen["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
        assert "ANTHROPIC_API_KEY" not in seen
        assert httpx.get(f"{url}/health", timeout=2).status_code == 200

        again = cli(env, "code", "--config", str(config), "--version")
        assert again.returncode == 7
        assert "started" not in again.stderr  # the running server is reused
        assert json.loads(record.read_text())["args"] == ["--version"]
    finally:
        cli(env, "stop", "--config", str(config))


def test_code_passes_the_server_key(tmp_path: Path, config_path: Path, env: dict[str, str],
                                    stand_in_claude: tuple[Path, Path]) -> None:
    port = free_port()
    config = tmp_path / "keyed.yaml"
    config.write_text(config_text(config_path, port).replace("server: {", "server: {api_key: sk-server-key, "))
    bin_dir, record = stand_in_claude
    env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}
    try:
        assert cli(env, "code", "--config", str(config)).returncode == 7
        assert json.loads(record.read_text())["env"]["ANTHROPIC_AUTH_TOKEN"] == "sk-server-key"
    finally:
        cli(env, "stop", "--config", str(config))


def test_code_without_claude_says_how_to_install_it(my_config: tuple[Path, str], env: dict[str, str],
                                                    tmp_path: Path) -> None:
    config, url = my_config
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {**env, "PATH": f"{empty}{os.pathsep}{Path(sys.executable).parent}"}
    result = cli(env, "code", "--config", str(config))
    assert result.returncode == 127
    assert "npm install -g @anthropic-ai/claude-code" in result.stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=STARTUP_TIMEOUT / 10)


def test_a_stream_in_flight_finishes_across_a_reload(tmp_path: Path, config_path: Path, fake: FakeOpenAI) -> None:
    """The request that started before SIGHUP keeps its pipeline (and the upstream connection it
    reads) to the end, while the next request already takes the new route."""
    config = tmp_path / "ccproxy.yaml"
    config.write_text(config_path.read_text())
    with serving(config, "--log-level", "info") as (base_url, process), \
            anthropic.Anthropic(base_url=base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30) as sdk:
        fake.queue(Text(chunks=["one ", "two ", "three ", "four"], delay_between_chunks=1.5))
        with sdk.messages.stream(model=MODEL, max_tokens=64, messages=user("Hi")) as stream:
            pieces = iter(stream.text_stream)
            first = next(pieces)
            config.write_text(config_path.read_text().replace("[openai/gpt-4.1]", "[openai/gpt-4.1-mini]"))
            os.kill(process.pid, signal.SIGHUP)
            fake.default = Text("ok")
            deadline = time.monotonic() + RELOAD_TIMEOUT
            while route_of(base_url, fake) != "openai/gpt-4.1-mini; reason=default":
                assert time.monotonic() < deadline, "the reload did not happen"
                time.sleep(0.1)
            rest = "".join(pieces)
            message = stream.get_final_message()
        assert first + rest == "one two three four"
        assert message.stop_reason == "end_turn"
        assert stream.response.headers["x-ccproxy-route"] == "openai/gpt-4.1; reason=default"


def test_start_on_a_busy_port_says_so_and_leaves_no_files(my_config: tuple[Path, str], env: dict[str, str]) -> None:
    config, url = my_config
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = cli(env, "start", "--config", str(config))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: another process is listening there" in result.stderr
    instance = Instance.for_config(config, env)
    assert not instance.pid_file.exists() and not instance.is_running()
