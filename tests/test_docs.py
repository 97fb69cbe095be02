"""The docs cannot lie: generated sections are fresh and every YAML example in them is valid."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from ccproxy_engine._cli import validate

ROOT = Path(__file__).resolve().parent.parent
YAML_BLOCK = re.compile(r"```yaml\n(.*?)```", re.S)


@pytest.mark.parametrize("script", ["gen_docs.py", "gen_config_docs.py"])
def test_generated_sections_are_fresh(script: str) -> None:
    """docs/rules.md and docs/configuration.md match the schemas and functions they are generated from."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def yaml_blocks() -> list[tuple[str, int, str]]:
    found = []
    for doc in ("README.md", "docs/rules.md", "docs/routing.md", "docs/index.md", "docs/configuration.md",
                "docs/deployment.md", "docs/operations.md"):
        text = (ROOT / doc).read_text()
        found.extend((doc, text[: match.start()].count("\n") + 2, match.group(1))
                     for match in YAML_BLOCK.finditer(text))
    return found


@pytest.mark.parametrize(("doc", "line", "block"), yaml_blocks(), ids=lambda v: str(v)[:20])
def test_every_yaml_example_parses(doc: str, line: int, block: str) -> None:
    YAML(typ="safe").load(block)


def test_the_ten_line_vendor_example_validates_with_its_config(tmp_path: Path) -> None:
    """docs/rules.md opens with a new vendor plus a config; both must pass `validate` as shown."""
    blocks = [block for doc, _, block in yaml_blocks() if doc == "docs/rules.md"]
    rule, config = blocks[0], blocks[1]
    (tmp_path / "acme.yaml").write_text(rule)
    (tmp_path / "my.yaml").write_text(config)
    assert validate([tmp_path / "acme.yaml", tmp_path / "my.yaml"]) == []


def test_readme_config_example_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("CCPROXY_API_KEY", "a-server-key")
    block = next(block for doc, _, block in yaml_blocks() if doc == "README.md")
    (tmp_path / "my.yaml").write_text(block)
    errors = [d for d in validate([tmp_path / "my.yaml"]) if d.severity == "error"]
    assert errors == []


@pytest.mark.parametrize("doc", ["docs/index.md", "docs/configuration.md"])
def test_config_examples_of_the_site_validate(doc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "DEEPSEEK_API_KEY", "CCPROXY_API_KEY"):
        monkeypatch.setenv(name, "sk-test")
    block = next(block for page, _, block in yaml_blocks() if page == doc)
    (tmp_path / "my.yaml").write_text(block)
    errors = [d.format() for d in validate([tmp_path / "my.yaml"]) if d.severity == "error"]
    assert errors == []


def troubleshooting_messages() -> list[str]:
    """The messages docs/troubleshooting.md explains: its headings that are one code span."""
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    return re.findall(r"^### `([^`]+)`$", text, re.M)


def _source_text() -> str:
    """Engine and rule source with f-string brace escapes undone, as the messages read."""
    files = [*sorted((ROOT / "engine").glob("*.py")), *sorted((ROOT / "rules").glob("*.yaml"))]
    return "\n".join(f.read_text() for f in files).replace("{{", "{").replace("}}", "}")


@pytest.mark.parametrize("message", troubleshooting_messages())
def test_troubleshooting_explains_messages_the_engine_produces(message: str) -> None:
    """Each fixed part of the message is written in the engine or rules, so the page cannot explain a
    message that was reworded or removed. `…` marks a varying part, a leading `[…]` the provider tag every
    upstream error gets, and a message built from clauses is checked clause by clause (split at `;`)."""
    parts = re.split(r"'?…'?|;", message.removeprefix("[…] "))
    fragments = [part.strip() for part in parts if len(part.strip()) >= 3]
    assert fragments, message
    source = _source_text()
    assert [part for part in fragments if part not in source] == []
