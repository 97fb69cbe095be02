"""Template libraries: files in a `common/` directory that rule sets `imports:`. Their templates are
used as the importer's own, positions keep pointing into the library, and a library is never a
provider."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ccproxy_engine._cli import main, validate
from ccproxy_engine._compiler import compile_rules
from ccproxy_engine._errors import DiagnosticCode
from ccproxy_engine._loader import BUILTIN_RULES_DIR, load_rules, rule_file_paths

SHARED = BUILTIN_RULES_DIR / "common" / "chat.yaml"

LIBRARY = """\
description: greetings
templates:
  greeting: "Hello {{ who }}"
  farewell: Bye
"""

IMPORTER = """\
imports: [greet]
request:
  url: https://x.test
  body:
    hello: {$use: greeting, with: {who: "{{ request.model }}"}}
    bye: {$use: farewell}
templates:
  farewell: See you
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_an_imported_template_is_used_as_the_importers_own_which_wins(tmp_path: Path) -> None:
    write(tmp_path / "common" / "greet.yaml", LIBRARY)
    write(tmp_path / "acme.yaml", IMPORTER)
    rule_sets, diagnostics = load_rules([tmp_path], include_builtin=False)
    assert diagnostics == []
    assert set(rule_sets) == {"acme"}, "a library is no rule set"
    providers, problems = compile_rules(rule_sets)
    assert problems == []
    body = providers["acme"].build_request({"model": "m1"}, model="m", provider_vars={}, stream=False).body
    assert body == {"hello": "Hello m1", "bye": "See you"}
    assert "imports" not in rule_sets["acme"].data


def test_a_child_inherits_what_its_parent_imported(tmp_path: Path) -> None:
    rule_sets, diagnostics = load_rules()
    assert diagnostics == []
    for name in ("openai", "gemini", "mistral", "deepseek"):
        assert rule_sets[name].position(("templates", "refuse_prefill")).path == rule_sets["openai"].position(
            ("templates", "refuse_prefill")).path
        assert Path(rule_sets[name].position(("templates", "client_tools")).path).resolve() == SHARED.resolve()


def test_the_shipped_library_is_not_a_provider_and_not_loadable_as_rules(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    rule_sets, _ = load_rules()
    providers, _ = compile_rules(rule_sets)
    assert "chat" not in rule_sets and "chat" not in providers
    config = write(tmp_path / "my.yaml", """\
        providers:
          shared: {rules: chat, api_key: k, base_url: https://x.test}
        routes:
          default: shared/m
    """)
    monkeypatch.chdir(tmp_path)
    found = [(d.line, d.code, d.message) for d in validate([config])]
    assert found and all(code is DiagnosticCode.UNKNOWN_RULES for _, code, _ in found), found
    assert found[0][0] == 2


def test_an_error_in_a_library_is_reported_in_the_library(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A user library with the shipped name replaces it: openai and gemini then compile its
    templates, and the error is at its line and column in the library, reported once."""
    text = SHARED.read_text(encoding="utf-8")
    assert text.count("' cannot run') }}") == 1
    text = text.replace("' cannot run') }}", "' cannot run', reason) }}")
    write(tmp_path / "rules" / "common" / "chat.yaml", text)
    line = next(n for n, t in enumerate(text.splitlines(), 1) if "reason)" in t)
    col = text.splitlines()[line - 1].index("reason)") + 1
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "rules"]) == 1
    _, err = capsys.readouterr()
    message, detail, total = err.splitlines()
    assert (message, total) == (f"rules/common/chat.yaml:{line}:{col}: unknown variable 'reason' [bad-template]",
                                "1 error(s)")
    # the detail names one importer's call site (the first compiled); the message is shared by both
    assert detail.startswith("  not bound where template 'client_tools' is used, at ")
    assert detail.endswith((_call_site("openai.yaml"), _call_site("gemini.yaml"))), detail


def _call_site(name: str) -> str:
    """``file:line:col`` of the shipped rule file's ``$use: client_tools`` (found, not pinned, so an edit
    elsewhere in the file does not move this test)."""
    for number, text in enumerate((BUILTIN_RULES_DIR / name).read_text(encoding="utf-8").splitlines(), 1):
        if "$use: client_tools" in text:
            return f"{name}:{number}:{text.index('$use: client_tools') + 1}"
    raise AssertionError(f"{name} no longer uses client_tools")


def test_validate_reports_an_unknown_import_and_a_library_with_provider_keys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "common" / "greet.yaml", LIBRARY + "request: {url: https://x.test}\n")
    write(tmp_path / "acme.yaml", IMPORTER.replace("[greet]", "[greet, gret]"))
    assert main(["validate", str(tmp_path)]) == 1
    _, err = capsys.readouterr()
    lines = err.splitlines()
    assert lines == [
        f"{tmp_path}/acme.yaml:1:18: 'imports' names unknown template library 'gret' (did you mean 'greet'?) "
        "[bad-import]",
        f"{tmp_path}/common/greet.yaml:5:1: 'request' does not belong in a template library (it holds only "
        "description and templates) [unknown-key]",
        "2 error(s)",
    ]


def test_the_shipped_library_validates_alone(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(SHARED)]) == 0


def test_a_rules_directory_includes_its_libraries(tmp_path: Path) -> None:
    for path in (tmp_path / "a.yaml", tmp_path / "common" / "lib.yaml"):
        write(path, "description: x\n")
    assert rule_file_paths([tmp_path]) == [tmp_path / "a.yaml", tmp_path / "common" / "lib.yaml"]


def test_between_two_libraries_the_first_listed_wins(tmp_path: Path) -> None:
    write(tmp_path / "common" / "greet.yaml", LIBRARY)
    write(tmp_path / "common" / "polite.yaml", "templates:\n  greeting: Good day\n  farewell: Farewell\n")
    write(tmp_path / "acme.yaml", IMPORTER.replace("[greet]", "[polite, greet]"))
    rule_sets, diagnostics = load_rules([tmp_path], include_builtin=False)
    assert diagnostics == []
    providers, problems = compile_rules(rule_sets)
    assert problems == []
    body = providers["acme"].build_request({"model": "m1"}, model="m", provider_vars={}, stream=False).body
    assert body == {"hello": "Good day", "bye": "See you"}
    assert rule_sets["acme"].position(("templates", "greeting")).path.endswith("polite.yaml")
