"""The real Codex CLI completes an agentic turn through `ccproxy-engine serve`'s ``/v1/responses``.

Codex speaks only the Responses API (``wire_api = "responses"``); the proxy turns its requests into
the engine's form and routes them to a scripted fake upstream of another wire format (Anthropic,
Gemini). The pinned CLI (tests/codex/VERSION, installed by scripts/install-codex into a cache outside
the checkout; the npm package ships its own binary) runs ``codex exec`` in a scratch directory with a
fresh HOME and CODEX_HOME whose config.toml is the one docs/codex.md gives. The scripted model first
calls ``exec_command`` to write a file, then answers with text once it sees that call's output. The
test asserts what a user sees (exit code, the final message, the file) and what the provider saw.

Without the CLI it skips, except under ``CI=true``: there it fails, so CI cannot
pass by not running it (.ci/run installs the CLI first).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e.test_claude_code_cli import (
    CONTENT,
    DONE_TEXT,
    SIDE_TEXT,
    UPSTREAM_KEY,
    AnthropicUpstream,
    GeminiUpstream,
    Provider,
    Say,
    Turn,
    WriteFile,
    serve_proxy,
    write_config,
)
from fakes import serve_app

REPO = Path(__file__).resolve().parents[2]
VERSION_FILE = REPO / "tests" / "codex" / "VERSION"
INSTALL_DIR = Path(os.environ.get("CCPROXY_CODEX_DIR") or Path.home() / ".cache/ccproxy-engine/codex")
TASK = "Create hello.txt in the current directory containing the line 'hello from ccproxy'."
CLIENT_KEY = "sk-codex-dummy"
CLI_TIMEOUT = 180.0


def pinned_version() -> str:
    lines = [line.strip() for line in VERSION_FILE.read_text(encoding="utf-8").splitlines()]
    return next(line for line in lines if line and not line.startswith("#"))


VERSION = pinned_version()
CODEX = INSTALL_DIR / VERSION / "node_modules" / ".bin" / "codex"


@dataclass(frozen=True)
class ExecCommand(WriteFile):
    """The file written by one shell command, as Codex's exec_command takes it (a `cmd` string)."""

    tool: str = "exec_command"

    def arguments(self) -> dict[str, Any]:
        return {"cmd": f"printf '{self.content.rstrip()}\\n' > {self.path.name}"}


@dataclass(frozen=True)
class CodexModel:
    """Writes `target` with one exec_command call, then says DONE_TEXT once its output is back;
    requests without exec_command (none expected) get SIDE_TEXT."""

    target: Path
    call_id: str = "call_ccproxyExec01"

    @property
    def write(self) -> ExecCommand:
        return ExecCommand(self.call_id, self.target, CONTENT)

    def answer(self, turn: Turn) -> Say | WriteFile:
        if "exec_command" not in turn.tools:
            return Say(SIDE_TEXT)
        if self.call_id in turn.results:
            return Say(DONE_TEXT)
        return self.write


PROVIDERS = [
    Provider("anthropic", "claude-sonnet-4-5", "", AnthropicUpstream),  # type: ignore[arg-type]
    Provider("gemini", "gemini-2.5-flash", "/v1beta", GeminiUpstream),  # type: ignore[arg-type]
]


@pytest.fixture(scope="module")
def codex() -> Path:
    if not os.access(CODEX, os.X_OK):
        message = f"Codex {VERSION} is not installed at {CODEX}: run scripts/install-codex (needs npm)"
        if os.environ.get("CI") == "true":  # .ci/run installs it: missing there is a failure, never a skip
            pytest.fail(message)
        pytest.skip(message)
    return CODEX


def codex_config(proxy_url: str) -> str:
    """The config.toml of docs/codex.md: the proxy as a Responses provider, no approvals, Codex's
    workspace-write sandbox (the command may write only in the scratch project), no start-up calls
    to the network."""
    return (
        'model = "gpt-5-codex"\n'
        'model_provider = "proxy"\n'
        'approval_policy = "never"\n'
        'sandbox_mode = "workspace-write"\n'
        "[features]\n"
        "plugins = false\n"
        "[model_providers.proxy]\n"
        'name = "ccproxy-engine"\n'
        f'base_url = "{proxy_url}/v1"\n'
        'wire_api = "responses"\n'
        'env_key = "CCPROXY_API_KEY"\n'
    )


def run_codex(codex: Path, proxy_url: str, project: Path, home: Path) -> subprocess.CompletedProcess[str]:
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True)
    (codex_home / "config.toml").write_text(codex_config(proxy_url), encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "CODEX_HOME": str(codex_home),
           "LANG": "C.UTF-8", "TERM": "dumb", "CCPROXY_API_KEY": CLIENT_KEY, "NO_COLOR": "1"}
    command = [str(codex), "exec", "--skip-git-repo-check", TASK]
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT,
                          check=False, stdin=subprocess.DEVNULL)


@pytest.mark.e2e
@pytest.mark.codex
@pytest.mark.parametrize("provider", PROVIDERS, ids=[p.name for p in PROVIDERS])
def test_codex_runs_a_tool_through_the_proxy(codex: Path, provider: Provider, tmp_path: Path) -> None:
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    model = CodexModel(project / "hello.txt")
    upstream = provider.fake(model)  # type: ignore[arg-type]
    with serve_app(upstream.app) as fake_url, serve_proxy(write_config(tmp_path, provider, fake_url)) as proxy:
        run = run_codex(codex, proxy.url, project, home)
    context = f"CLI exit {run.returncode}\nstdout: {run.stdout}\nstderr: {run.stderr[-4000:]}\nproxy:\n{proxy.output}"

    assert run.returncode == 0, context
    assert DONE_TEXT in run.stdout, context
    assert model.target.read_text(encoding="utf-8") == CONTENT, context
    assert "Traceback" not in proxy.output, proxy.output
    assert UPSTREAM_KEY not in run.stdout + run.stderr

    upstream.assert_valid()
    turns = upstream.turns()
    assert all(turn.streamed for turn in turns)
    answered = [turn for turn in turns if model.call_id in turn.results]
    assert answered, f"no request carried the exec_command output: {turns}"
    assert answered[0].calls[model.call_id] == ("exec_command", model.write.arguments())
    assert "web_search" not in answered[0].tools, "a hosted tool never reaches a provider that cannot run it"
