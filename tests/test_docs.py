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


def test_generated_sections_of_rules_md_are_fresh() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def yaml_blocks() -> list[tuple[str, int, str]]:
    found = []
    for doc in ("README.md", "docs/rules.md", "docs/routing.md", "docs/operations.md"):
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
    block = next(block for doc, _, block in yaml_blocks() if doc == "README.md")
    (tmp_path / "my.yaml").write_text(block)
    errors = [d for d in validate([tmp_path / "my.yaml"]) if d.severity == "error"]
    assert errors == []
