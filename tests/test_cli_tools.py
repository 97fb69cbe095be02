"""The CLI's offline commands as a user runs them: --version, translate, route, init, import-ccr.

They print what `serve` would do without sending anything; each test checks the printed result
against the real wire formats (the `openai` SDK's request types, the `anthropic` SDK's answer types).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from anthropic.types import Message
from e2e.support import read_events
from fakes import Text, check_sdk_types, completion_body, encode_stream

from ccproxy_engine._cli import main
from ccproxy_engine._import_ccr import convert
from ccproxy_engine._launch import claude_environment, split_code_args

KEY = "sk-acme-secret-4242"
CONFIG = """\
providers:
  openai: {base_url: "https://api.openai.test/v1", api_key: "${ACME_OPENAI_KEY}"}
  gemini: {api_key: "${ACME_GEMINI_KEY}"}
routes:
  default: [openai/gpt-4.1, gemini/gemini-2.5-flash]
  long_context: openai/gpt-4.1-long
  long_context_threshold: 50
  models:
    "claude-haiku-*": gemini/gemini-2.5-flash
"""
REQUEST: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 256,
                           "messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`main()` configures the root logger on pytest's captured stderr; undo it after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ACME_OPENAI_KEY", KEY)
    monkeypatch.delenv("ACME_GEMINI_KEY", raising=False)
    path = tmp_path / "ccproxy.yaml"
    path.write_text(CONFIG)
    return path


def request_file(tmp_path: Path, body: dict[str, Any] | None = None, name: str = "request.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(body or REQUEST))
    return path


def split_output(out: str) -> tuple[str, dict[str, str], str]:
    """translate's output: request line, headers, body text (up to an answer section)."""
    head, _, rest = out.partition("\n\n")
    first, *header_lines = head.splitlines()
    headers = dict(line.split(": ", 1) for line in header_lines)
    return first, headers, rest.split("\n\n--- answer", 1)[0]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == "ccproxy-engine 0.1.0"


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("code", "serve", "start", "stop", "status", "reload", "validate", "translate", "route",
                    "init", "import-ccr"):
        assert f"    {command}" in out, command


# --- translate ---------------------------------------------------------------------------------


def test_translate_prints_the_upstream_request_with_the_key_masked(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "translate", "--config", str(config), "--model", "openai/gpt-4.1",
                       str(request_file(tmp_path)))
    assert code == 0
    first, headers, body_text = split_output(out)
    assert first == "POST https://api.openai.test/v1/chat/completions"
    assert headers["authorization"] == "Bearer ***"
    assert headers["content-type"] == "application/json"
    assert KEY not in out
    body = json.loads(body_text)
    assert int(headers["content-length"]) == len(orjson.dumps(body))
    assert check_sdk_types(body) == []
    assert (body["model"], body["messages"]) == ("gpt-4.1", [{"role": "user", "content": "Hello"}])


def test_translate_works_when_the_key_variable_is_unset(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "translate", "--config", str(config), "--model", "gemini/gemini-2.5-flash",
                         str(request_file(tmp_path, {**REQUEST, "stream": True})))
    assert code == 0, err
    first, headers, body_text = split_output(out)
    assert first.startswith("POST https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:")
    assert headers["x-goog-api-key"] == "***"
    assert "ACME_GEMINI_KEY" in err
    assert json.loads(body_text)["contents"] == [{"role": "user", "parts": [{"text": "Hello"}]}]


def test_translate_without_model_takes_the_route(config: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    haiku = request_file(tmp_path, {**REQUEST, "model": "claude-haiku-4-5"})
    code, out, _ = run(capsys, "translate", "--config", str(config), str(haiku))
    assert code == 0
    assert "/models/gemini-2.5-flash:generateContent" in out.splitlines()[0]


def test_translate_reads_a_recorded_claude_code_request(config: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    recorded = {"path": "/v1/messages?beta=true", "headers": {"anthropic-beta": "x"},
                "body": {**REQUEST, "stream": True}}
    code, out, _ = run(capsys, "translate", "--config", str(config), "--model", "openai/gpt-4.1",
                       str(request_file(tmp_path, recorded)))
    assert code == 0
    body = json.loads(split_output(out)[2])
    assert body["stream"] is True
    assert check_sdk_types(body) == []


def test_translate_a_recorded_answer(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answer = tmp_path / "answer.json"
    answer.write_bytes(orjson.dumps(completion_body(Text("Hi there."), {"model": "gpt-4.1"})))
    code, out, _ = run(capsys, "translate", "--config", str(config), "--model", "openai/gpt-4.1",
                       str(request_file(tmp_path)), "--response", str(answer))
    assert code == 0
    message = Message.model_validate_json(out.split("---\n", 1)[1])
    assert message.content[0].text == "Hi there."  # type: ignore[union-attr]
    assert (message.model, message.stop_reason) == ("claude-sonnet-4-5", "end_turn")


def test_translate_a_recorded_stream(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = {**REQUEST, "stream": True}
    stream = tmp_path / "answer.sse"
    stream.write_bytes(b"".join(encode_stream(Text(chunks=["Hi ", "there."]), {"model": "gpt-4.1", "stream": True})))
    code, out, _ = run(capsys, "translate", "--config", str(config), "--model", "openai/gpt-4.1",
                       str(request_file(tmp_path, body)), "--response", str(stream))
    assert code == 0
    events = read_events([out.split("---\n", 1)[1].encode()])
    assert events[0][0] == "message_start"
    assert events[-1][0] == "message_stop"
    text = "".join(e["delta"]["text"] for name, e in events if name == "content_block_delta")
    assert text == "Hi there."


def test_translate_an_error_answer(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answer = tmp_path / "error.json"
    answer.write_bytes(orjson.dumps({"error": {"message": "slow down", "type": "rate_limit", "code": None}}))
    code, out, _ = run(capsys, "translate", "--config", str(config), "--model", "openai/gpt-4.1",
                       str(request_file(tmp_path)), "--response", str(answer), "--status", "429")
    assert code == 1
    status, _, envelope = out.split("---\n", 1)[1].partition("\n")
    assert status == "HTTP 429"
    assert json.loads(envelope)["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(("content", "expected"), [
    ("{not json", "not valid JSON"),
    (json.dumps({**REQUEST, "max_tokens": -1}), "max_tokens"),
])
def test_translate_refuses_a_bad_request_clearly(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 content: str, expected: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    code, out, err = run(capsys, "translate", "--config", str(config), "--model", "openai/gpt-4.1", str(bad))
    assert code == 1
    assert expected in out
    assert "Traceback" not in out + err


def test_translate_names_an_unknown_provider(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "translate", "--config", str(config), "--model", "nope/x", str(request_file(tmp_path)))
    assert code == 1
    assert "provider 'nope' is not configured (configured: openai, gemini)" in out


# --- route -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "expected"), [
    (REQUEST, ["openai/gpt-4.1", "reason: default", "tokens: 8 (estimate)", "fallbacks: gemini/gemini-2.5-flash"]),
    ({**REQUEST, "messages": [{"role": "user", "content": "word " * 100}]},
     ["openai/gpt-4.1-long", "reason: long_context", "tokens: 108 (estimate)"]),
    ({**REQUEST, "model": "claude-haiku-4-5"}, ["gemini/gemini-2.5-flash", "reason: model"]),
])
def test_route_prints_target_reason_and_tokens(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               body: dict[str, Any], expected: list[str]) -> None:
    code, out, _ = run(capsys, "route", "--config", str(config), str(request_file(tmp_path, body)))
    assert code == 0
    assert out.splitlines()[:len(expected)] == expected


# --- init --------------------------------------------------------------------------------------


def test_init_writes_a_valid_config_that_refers_to_the_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("OPENAI_API_KEY", "DEEPSEEK_API_KEY", "GEMINI_API_KEY", "OPENROUTER_API_KEY", "GROQ_API_KEY",
                 "MISTRAL_API_KEY", "XAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEEPSEEK_API_KEY", KEY)
    monkeypatch.setenv("GROQ_API_KEY", KEY + "-groq")
    output = tmp_path / "ccproxy.yaml"
    code, _, err = run(capsys, "init", "--output", str(output))
    assert code == 0
    text = output.read_text()
    assert KEY not in text
    assert '"${DEEPSEEK_API_KEY}"' in text and '"${GROQ_API_KEY}"' in text
    assert "\n  openai:" not in text
    assert "DEEPSEEK_API_KEY, GROQ_API_KEY" in err
    assert run(capsys, "validate", str(output))[0] == 0
    code, out, _ = run(capsys, "route", "--config", str(output), str(request_file(tmp_path)))
    assert out.splitlines()[0] == "deepseek/deepseek-chat"


def test_init_never_overwrites_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "ccproxy.yaml"
    output.write_text("mine\n")
    code, _, err = run(capsys, "init", "--output", str(output))
    assert (code, output.read_text()) == (1, "mine\n")
    assert "pass --force" in err
    assert run(capsys, "init", "--output", str(output), "--force")[0] == 0
    assert output.read_text().startswith("# ccproxy-engine config")


def test_init_without_any_key_falls_back_to_ollama(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("OPENAI_API_KEY", "DEEPSEEK_API_KEY", "GEMINI_API_KEY", "OPENROUTER_API_KEY", "GROQ_API_KEY",
                 "MISTRAL_API_KEY", "XAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    output = tmp_path / "ccproxy.yaml"
    assert run(capsys, "init", "--output", str(output))[0] == 0
    assert 'default: ["ollama/llama3.1"]' in output.read_text()
    assert run(capsys, "validate", str(output))[0] == 0


# --- import-ccr --------------------------------------------------------------------------------

CCR_CONFIG: dict[str, Any] = {
    "LOG": True,
    "HOST": "127.0.0.1",
    "PORT": 3457,
    "APIKEY": "$CCR_SERVER_KEY",
    "Providers": [
        {"name": "openrouter", "api_base_url": "https://openrouter.ai/api/v1/chat/completions",
         "api_key": "sk-or-literal-1234", "models": ["anthropic/claude-sonnet-4"],
         "transformer": {"use": ["openrouter"]}},
        {"name": "deepseek", "api_base_url": "https://api.deepseek.com/chat/completions", "api_key": "${DS_KEY}",
         "models": ["deepseek-chat", "deepseek-reasoner"],
         "transformer": {"use": ["deepseek"], "deepseek-chat": {"use": ["tooluse"]}}},
        {"name": "gemini", "api_base_url": "https://generativelanguage.googleapis.com/v1beta/models/",
         "api_key": "$GEMINI_API_KEY", "models": ["gemini-2.5-pro"], "transformer": {"use": ["gemini"]}},
        {"name": "ollama", "api_base_url": "http://localhost:11434/v1/chat/completions", "api_key": "ollama",
         "models": ["qwen2.5-coder:latest"]},
        {"name": "siliconflow", "api_base_url": "https://api.siliconflow.cn/v1/chat/completions",
         "api_key": "$SF_KEY", "models": ["moonshotai/Kimi-K2-Instruct"],
         "transformer": {"use": [["maxtoken", {"max_tokens": 16384}], "enhancetool", "cleancache"]}},
    ],
    "Router": {"default": "deepseek,deepseek-chat", "background": "ollama,qwen2.5-coder:latest",
               "think": "deepseek,deepseek-reasoner", "longContext": "openrouter,anthropic/claude-sonnet-4",
               "longContextThreshold": 60000, "webSearch": "gemini,gemini-2.5-pro", "image": ""},
    "CUSTOM_ROUTER_PATH": "/home/me/router.js",
}


def test_import_ccr_converts_providers_and_router(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "config.json"
    source.write_text(json.dumps(CCR_CONFIG))
    output = tmp_path / "ccproxy.yaml"
    code, _, err = run(capsys, "import-ccr", str(source), "--output", str(output))
    assert code == 0, err
    text = output.read_text()
    assert "sk-or-literal-1234" not in text
    assert '"${OPENROUTER_API_KEY}"' in text and "export OPENROUTER_API_KEY" in err
    assert '"${DS_KEY}"' in text and '"${GEMINI_API_KEY}"' in text and '"${CCR_SERVER_KEY}"' in text
    for line in ("deepseek: {base_url: \"https://api.deepseek.com\"",
                 "gemini: {base_url: \"https://generativelanguage.googleapis.com/v1beta\"",
                 "ollama: {base_url: \"http://localhost:11434/v1\"",
                 "siliconflow: {rules: openai-compatible, base_url: \"https://api.siliconflow.cn/v1\"",
                 'default: "deepseek/deepseek-chat"', 'long_context: "openrouter/anthropic/claude-sonnet-4"',
                 'web_search: "gemini/gemini-2.5-pro"', "long_context_threshold: 60000", "port: 3457"):
        assert line in text, line
    not_mapped, _, covered = err.split("not mapped:\n", 1)[1].partition("covered by the rule sets:\n")
    for what in ("'enhancetool' has no equivalent", "transformer[deepseek-chat]", "CUSTOM_ROUTER_PATH",
                 "LOG: not mapped"):
        assert what in not_mapped, what
    assert "'maxtoken' is covered" in covered and "'cleancache' is covered" in covered
    assert "[missing-env]" not in err  # unset key variables are expected in a fresh import
    env = {"OPENROUTER_API_KEY": "a", "DS_KEY": "b", "GEMINI_API_KEY": "c", "SF_KEY": "d", "CCR_SERVER_KEY": "e"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        assert run(capsys, "validate", str(output))[0] == 0
        code, out, _ = run(capsys, "route", "--config", str(output), str(request_file(tmp_path)))
    assert out.splitlines()[:2] == ["deepseek/deepseek-chat", "reason: default"]


def test_import_ccr_prints_without_output_and_refuses_bad_json(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "config.json"
    source.write_text(json.dumps({"Providers": [], "Router": {}}))
    code, out, _ = run(capsys, "import-ccr", str(source))
    assert code == 0
    assert out.startswith("# converted from a claude-code-router config")
    source.write_text('{"Providers": [], // a comment\n}')
    code, _, err = run(capsys, "import-ccr", str(source))
    assert code == 1
    assert f"{source}:1:" in err and "comments" in err


def test_convert_keeps_the_order_and_reports_a_bad_router_value() -> None:
    conversion = convert({"Router": {"default": "no-comma"}})
    assert conversion.unmapped == ["Router.default: 'no-comma' is not \"provider,model\""]


# --- code: argument handling and the environment (the launch itself is in tests/e2e) ----------


@pytest.mark.parametrize(("argv", "expected"), [
    ([], (None, [])),
    (["--config", "my.yaml", "-p", "hi"], ("my.yaml", ["-p", "hi"])),
    (["--config=my.yaml", "--", "--config", "x"], ("my.yaml", ["--config", "x"])),
    (["--resume", "--config", "x"], (None, ["--resume", "--config", "x"])),
])
def test_code_splits_its_arguments(argv: list[str], expected: tuple[str | None, list[str]]) -> None:
    assert split_code_args(argv) == expected


def test_code_environment_points_claude_at_the_proxy() -> None:
    env = claude_environment({"ANTHROPIC_API_KEY": "sk-ant-real", "PATH": "/bin"}, "http://127.0.0.1:1", None)
    assert env == {"PATH": "/bin", "ANTHROPIC_BASE_URL": "http://127.0.0.1:1", "ANTHROPIC_AUTH_TOKEN": "ccproxy-engine",
                   "API_TIMEOUT_MS": "600000", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    assert claude_environment({}, "http://h:2", "server-key")["ANTHROPIC_AUTH_TOKEN"] == "server-key"



# --- scripts/setup: installs only when the checkout changed -------------------------------------


def test_setup_skips_an_install_that_is_current(tmp_path: Path) -> None:
    """The stamp names the mode and pyproject.toml's hash: when both match, nothing runs (no pip);
    when pyproject.toml changed, setup installs (here: `python3` is a stand-in that records the call)."""
    root = Path(__file__).resolve().parent.parent
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    (checkout / ".venv" / "bin").mkdir(parents=True)
    (checkout / "scripts" / "setup").write_bytes((root / "scripts" / "setup").read_bytes())
    (checkout / "scripts" / "setup").chmod(0o755)
    (checkout / "pyproject.toml").write_bytes((root / "pyproject.toml").read_bytes())
    script = checkout / ".venv" / "bin" / "ccproxy-engine"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    digest = hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()
    (checkout / ".venv" / ".ccproxy-install").write_text(f"editable {digest}\n")
    current = subprocess.run([str(checkout / "scripts" / "setup")], capture_output=True, text=True, check=False)
    assert (current.returncode, current.stdout, current.stderr) == (0, "", "")

    (checkout / "pyproject.toml").write_text("# changed\n")
    calls = tmp_path / "calls"
    stand_in = tmp_path / "bin"
    stand_in.mkdir()
    python3 = stand_in / "python3"
    python3.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n"
                       f"case \"$1\" in -c) exec {sys.executable} \"$@\";; esac\n")
    python3.chmod(0o755)
    changed = subprocess.run([str(checkout / "scripts" / "setup")], capture_output=True, text=True, check=False,
                             env={**os.environ, "PATH": f"{stand_in}{os.pathsep}{os.environ['PATH']}"})
    assert "installing ccproxy-engine into .venv (editable)" in changed.stderr
    assert "-m venv .venv" in calls.read_text()


def test_translate_and_route_name_a_missing_file(config: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.json"
    for command in (["translate", "--model", "openai/gpt-4.1"], ["route"]):
        code, out, err = run(capsys, *command, "--config", str(config), str(missing))
        assert (code, out) == (1, "")
        assert err.strip().endswith(f"ccproxy-engine: {missing}: No such file or directory")


def test_translate_refuses_a_model_without_provider(config: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "translate", "--config", str(config), "--model", "gpt-4.1", str(request_file(tmp_path)))
    assert code == 2
    assert "--model: expected provider/model, got 'gpt-4.1'" in err


def test_docs_cli_md_covers_every_command() -> None:
    """docs/cli.md has a section for every command the parser knows (one per heading word)."""
    from ccproxy_engine._cli import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions if action.dest == "command").choices
    assert commands is not None
    root = Path(__file__).resolve().parent.parent
    headings = [line[3:] for line in (root / "docs" / "cli.md").read_text().splitlines() if line.startswith("## ")]
    covered = {word.strip(",") for heading in headings for word in heading.split()}
    assert set(commands) <= covered, set(commands) - covered
