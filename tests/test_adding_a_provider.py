"""docs/adding-a-provider.md stays true: its rule file is short and valid, the mistakes it shows give
exactly the output it shows, its rule case holds, and its config validates with the rule file."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from ruamel.yaml import YAML

from ccproxy_engine._cli import main, validate
from ccproxy_engine._compiler import compile_rules
from ccproxy_engine._config import ProviderSettings
from ccproxy_engine._endpoint import Endpoint
from ccproxy_engine._loader import load_rules

DOC = Path(__file__).resolve().parent.parent / "docs" / "adding-a-provider.md"
TEXT = DOC.read_text(encoding="utf-8")
YAML_BLOCKS = re.findall(r"```yaml\n(.*?)```", TEXT, re.S)
CONSOLE_BLOCKS = re.findall(r"```console\n(.*?)```", TEXT, re.S)
RULE, CASE, CONFIG = YAML_BLOCKS[:3]
MISTAKES = {  # the edit each documented validate failure makes to the rule file
    1: ("| min }}", "| mn }}"),
    2: ("{context: 1048576, vision: true}", "{context: 1048576, visoin: true}"),
}


def shown_output(block: str) -> list[str]:
    """The lines a console block shows after its `$ ccproxy-engine validate ...` line."""
    lines = block.rstrip("\n").splitlines()
    assert lines[0] == "$ ccproxy-engine validate rules/together.yaml"
    return lines[1:]


def run_validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                 rule: str) -> tuple[int, list[str]]:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "together.yaml").write_text(rule, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code = main(["validate", "rules/together.yaml"])
    out, err = capsys.readouterr()
    return code, (err + out).splitlines()


def test_the_rule_file_is_under_30_lines_and_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert len(RULE.splitlines()) < 30
    assert "the whole provider (21 lines)" in TEXT and len(RULE.splitlines()) == 21
    assert run_validate(tmp_path, monkeypatch, capsys, RULE) == (0, shown_output(CONSOLE_BLOCKS[0]))


@pytest.mark.parametrize("block", sorted(MISTAKES))
def test_each_documented_mistake_gives_the_documented_output(block: int, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    old, new = MISTAKES[block]
    assert RULE.count(old) == 1
    code, output = run_validate(tmp_path, monkeypatch, capsys, RULE.replace(old, new))
    assert (code, output) == (1, shown_output(CONSOLE_BLOCKS[block]))


def test_the_rule_case_holds(tmp_path: Path) -> None:
    (tmp_path / "together.yaml").write_text(RULE, encoding="utf-8")
    rule_sets, problems = load_rules([tmp_path / "together.yaml"])
    providers, more = compile_rules(rule_sets)
    assert [d for d in (*problems, *more) if d.severity == "error"] == []
    settings = ProviderSettings(name="together", rules="together", base_url="https://api.together.test/v1",
                                api_key="sk-test")
    together = Endpoint(settings, providers["together"], env={})
    [case] = YAML(typ="safe").load(CASE)
    body = {"model": "claude-sonnet-4-5", **case["request"]}
    call = together.prepare(body, model=case["model"])
    assert call.request.url == "https://api.together.test/v1/chat/completions"
    assert call.body is not None
    assert call.body["model"] == case["expect_upstream"]["model"]
    assert call.body["max_tokens"] == case["expect_upstream"]["max_tokens"] == 8192
    assert "max_completion_tokens" not in call.body
    answer = together.message(call, orjson.dumps(case["upstream_reply"]["body"]))
    assert answer["content"] == case["expect_anthropic"]["content"]
    assert answer["stop_reason"] == case["expect_anthropic"]["stop_reason"]


def test_the_config_validates_with_the_rule_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", "sk-test")
    (tmp_path / "together.yaml").write_text(RULE, encoding="utf-8")
    (tmp_path / "ccproxy.yaml").write_text(CONFIG, encoding="utf-8")
    assert validate([tmp_path / "together.yaml", tmp_path / "ccproxy.yaml"]) == []
