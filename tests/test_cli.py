"""`validate` and `serve` as a user runs them: exit codes and `file:line:col: message [code]` lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ccproxy_engine._cli import main

ROOT = Path(__file__).resolve().parent.parent

GOOD_RULE = """\
description: Acme (OpenAI-compatible)
extends: openai
defaults:
  base_url: https://api.acme.test/v1
models:
  "*": {context: 32768, max_output: 8192, vision: false}
"""

GOOD_CONFIG = """\
providers:
  acme: {rules: acme, api_key: sk-test}
routes:
  default: acme/acme-large
"""


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_shipped_rules_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", str(ROOT / "rules"))
    assert code == 0
    assert out.startswith("ok:")


def test_validate_a_new_rule_and_its_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "acme.yaml").write_text(GOOD_RULE)
    (tmp_path / "my.yaml").write_text(GOOD_CONFIG)
    code, _, err = run(capsys, "validate", str(tmp_path / "acme.yaml"), str(tmp_path / "my.yaml"))
    assert (code, err) == (0, "")


@pytest.mark.parametrize(
    ("line", "position", "code"),
    [
        # the 6 lines of GOOD_RULE come first; columns are 1-based, inside quotes they skip the quote
        ("request:\n  body:\n    x: \"{{ request.tools | json_encod }}\"\n", "9:9", "unknown-filter"),
        ("request:\n  body:\n    x: \"{{ reqest.model }}\"\n", "9:12", "bad-template"),
        ("response:\n  finish_reason: \"choices[0].finish_reason | uper(@)\"\n", "8:46", "unknown-function"),
        ("response:\n  part:\n    text: \"choices[0\"\n", "9:21", "bad-selector"),
        ("respons:\n  text: content\n", "7:1", "unknown-key"),
    ],
)
def test_validate_reports_the_exact_position(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             line: str, position: str, code: str) -> None:
    rule = tmp_path / "acme.yaml"
    rule.write_text(GOOD_RULE + line)
    exit_code, _, err = run(capsys, "validate", str(rule))
    assert exit_code == 1
    first = err.splitlines()[0]
    assert first.startswith(f"{rule}:{position}: "), err
    assert first.endswith(f"[{code}]")
    assert err.rstrip().endswith("1 error(s)")


def test_validate_reports_a_name_used_outside_the_scope_that_binds_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """openai.yaml binds `msg` inside its messages template; a body key of a child does not see it,
    and at run time it would silently drop the key."""
    rule = tmp_path / "acme.yaml"
    rule.write_text(GOOD_RULE + "request:\n  body:\n    user: \"{{ msg.role }}\"\n")
    exit_code, _, err = run(capsys, "validate", str(rule))
    assert exit_code == 1
    assert err.splitlines() == [f"{rule}:9:15: unknown variable 'msg' [bad-template]", "1 error(s)"]


def test_validate_missing_path_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "validate", "no/such/dir")
    assert code == 1
    assert "no/such/dir:1:1: no such file or directory [io]" in err


def test_validate_config_with_unknown_key_and_bad_route(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "my.yaml"
    config.write_text("providers:\n  openai: {api_key: k}\nroutes:\n  default: nowhere/x\nroutez: {}\n")
    code, _, err = run(capsys, "validate", str(config))
    assert code == 1
    assert ":4:12: " in err and "[bad-route]" in err
    assert ":5:1: unknown key 'routez'" in err


def test_serve_refuses_broken_rules_with_the_same_lines(tmp_path: Path) -> None:
    rule = tmp_path / "openai.yaml"
    rule.write_text((ROOT / "rules" / "openai.yaml").read_text().replace("| json_encode", "| json_encod"))
    config = tmp_path / "my.yaml"
    config.write_text("providers:\n  openai: {api_key: k}\nroutes:\n  default: openai/gpt-4.1\n")
    cli = [sys.executable, "-m", "ccproxy_engine"]
    serve = subprocess.run([*cli, "serve", "--config", str(config), "--rules", str(rule)],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    check = subprocess.run([*cli, "validate", str(rule)], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                           check=False)
    assert serve.returncode == 1 and check.returncode == 1
    diagnostic = next(line for line in check.stderr.splitlines() if "[unknown-filter]" in line)
    assert diagnostic.startswith("openai.yaml:")
    assert diagnostic in serve.stderr.splitlines()


def test_serve_refuses_a_custom_router_it_cannot_import(tmp_path: Path) -> None:
    config = tmp_path / "my.yaml"
    config.write_text("providers:\n  openai: {api_key: k}\nroutes:\n  default: openai/gpt-4.1\n"
                      "  custom: {function: 'no_such_router_mod:route'}\n")
    serve = subprocess.run([sys.executable, "-m", "ccproxy_engine", "serve", "--config", str(config)],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert serve.returncode == 1
    assert "no_such_router_mod:route" in serve.stderr and "[bad-route]" in serve.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "proxy.example.test"])
def test_serve_refuses_a_public_host_without_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   host: str) -> None:
    config = tmp_path / "my.yaml"
    config.write_text("providers:\n  openai: {api_key: k}\nroutes:\n  default: openai/gpt-4.1\n")
    code, _, err = run(capsys, "serve", "--config", str(config), "--host", host)
    assert code == 2
    assert f"refusing to serve on {host} without a key" in err
    assert "server.api_key" in err and "--allow-unauthenticated" in err


@pytest.mark.parametrize(("extra_config", "flags"), [
    ("server: {api_key: a-server-key}\n", []),
    ("server: {allow_unauthenticated: true}\n", []),
    ("", ["--allow-unauthenticated"]),
], ids=["key", "config-opt-in", "flag-opt-in"])
def test_serve_takes_a_public_host_with_a_key_or_an_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           extra_config: str, flags: list[str]) -> None:
    from ccproxy_engine import _serve

    config = tmp_path / "my.yaml"
    config.write_text("providers:\n  openai: {api_key: k}\nroutes:\n  default: openai/gpt-4.1\n" + extra_config)
    served: list[tuple[str, int]] = []
    monkeypatch.setattr(_serve, "ensure_port_free", lambda host, port: None)
    monkeypatch.setattr(_serve, "serve", lambda app, *, host, port, **_: served.append((host, port)) or 0)
    assert main(["serve", "--config", str(config), "--host", "0.0.0.0", "--port", "3999", *flags]) == 0
    assert served == [("0.0.0.0", 3999)]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.3.4.5"])
def test_serve_takes_a_loopback_host_without_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   host: str) -> None:
    from ccproxy_engine import _serve

    config = tmp_path / "my.yaml"
    config.write_text("providers:\n  openai: {api_key: k}\nroutes:\n  default: openai/gpt-4.1\n")
    monkeypatch.setattr(_serve, "ensure_port_free", lambda host, port: None)
    monkeypatch.setattr(_serve, "serve", lambda app, **_: 0)
    assert main(["serve", "--config", str(config), "--host", host]) == 0
