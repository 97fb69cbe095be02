"""The rule loader: YAML with positions, schema diagnostics at the offending spot, `extends:` merging.

Every diagnostic is asserted at its exact ``file:line:col``: a rule author reads these numbers, and
the compiler composes its own positions on top of the ones the loader records.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from ccproxy_engine._errors import Diagnostic, DiagnosticCode, RuleError
from ccproxy_engine._loader import (
    BUILTIN_RULES_DIR,
    RuleSet,
    SourcePosition,
    load_rules,
    read_yaml,
    require_rules,
    rule_file_paths,
)

BUILTIN_OPENAI = BUILTIN_RULES_DIR / "openai.yaml"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(*paths: Path) -> tuple[dict[str, RuleSet], list[Diagnostic]]:
    return load_rules(paths, include_builtin=False)


def spots(diagnostics: list[Diagnostic]) -> list[tuple[str, int, int, DiagnosticCode]]:
    """Each diagnostic as (file name, line, col, code), in file order."""
    return sorted((Path(d.path).name, d.line, d.col, d.code) for d in diagnostics)


def at(pos: SourcePosition) -> tuple[str, int, int]:
    return Path(pos.path).name, pos.line, pos.col


def same_file(shown: str, path: Path) -> bool:
    return Path(shown).resolve() == path.resolve()


# --- YAML syntax ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "col", "problem"),
    [
        pytest.param("description: x\nrequest:\n  url: a: b\n", 3, 9, "mapping values are not allowed",
                     id="second-colon"),
        pytest.param("request:\n\turl: x\n", 2, 1, "'\\t'", id="tab-indent"),
        pytest.param("models:\n  x: {context: 1\nrequest: {}\n", 3, 8, "expected ',' or '}'",
                     id="unclosed-flow-mapping"),
        pytest.param("description: a\nrequest: {}\ndescription: b\n", 3, 1, 'duplicate key "description"',
                     id="duplicate-key"),
        pytest.param("request: *nope\n", 1, 10, "undefined alias 'nope'", id="unknown-alias"),
    ],
)
def test_yaml_syntax_error_is_one_diagnostic_at_its_line_and_column(
        tmp_path: Path, text: str, line: int, col: int, problem: str) -> None:
    path = write(tmp_path, "broken.yaml", text)
    rule_sets, diagnostics = load(path)
    assert rule_sets == {}
    assert spots(diagnostics) == [("broken.yaml", line, col, DiagnosticCode.YAML_SYNTAX)]
    assert diagnostics[0].message.startswith("invalid YAML: ")
    assert problem in diagnostics[0].message
    assert same_file(diagnostics[0].path, path)


def test_unreadable_file_is_an_io_diagnostic(tmp_path: Path) -> None:
    _, diagnostics = load(tmp_path / "missing.yaml")
    assert spots(diagnostics) == [("missing.yaml", 1, 1, DiagnosticCode.IO)]
    assert "cannot read file" in diagnostics[0].message


def test_a_rule_file_must_be_a_mapping(tmp_path: Path) -> None:
    _, diagnostics = load(write(tmp_path, "list.yaml", "- a\n- b\n"))
    assert spots(diagnostics) == [("list.yaml", 1, 1, DiagnosticCode.SCHEMA)]


# --- schema --------------------------------------------------------------------------------------


def test_unknown_keys_are_reported_at_the_key_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "typos.yaml", """\
        description: typos
        modles: {}
        request:
          url: x
          metod: POST
        response:
          part:
            txt: content
    """)
    rule_sets, diagnostics = load(path)
    assert rule_sets == {}
    assert spots(diagnostics) == [
        ("typos.yaml", 2, 1, DiagnosticCode.UNKNOWN_KEY),
        ("typos.yaml", 5, 3, DiagnosticCode.UNKNOWN_KEY),
        ("typos.yaml", 8, 5, DiagnosticCode.UNKNOWN_KEY),
    ]
    messages = sorted(d.message for d in diagnostics)
    assert messages == [
        "unknown key 'metod' in request (did you mean 'method'?)",
        "unknown key 'modles' in (top level) (did you mean 'models'?)",
        "unknown key 'txt' in response.part (did you mean 'text'?)",
    ]


def test_unknown_key_without_a_close_match_has_no_suggestion(tmp_path: Path) -> None:
    _, diagnostics = load(write(tmp_path, "far.yaml", "zzzzzz: 1\n"))
    assert [d.message for d in diagnostics] == ["unknown key 'zzzzzz' in (top level)"]


def test_schema_type_errors_are_reported_at_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, "types.yaml", """\
        description: 5
        finish_reasons: {stop: finished}
        errors:
          status: {"429": many}
    """)
    _, diagnostics = load(path)
    assert spots(diagnostics) == [
        ("types.yaml", 1, 14, DiagnosticCode.SCHEMA),
        ("types.yaml", 2, 24, DiagnosticCode.SCHEMA),
        ("types.yaml", 4, 19, DiagnosticCode.SCHEMA),
    ]
    by_line = {d.line: d.message for d in diagnostics}
    assert by_line[1] == "description: 5 is not of type 'string'"
    assert by_line[2].startswith("finish_reasons.stop: 'finished' is not one of")
    assert by_line[4] == "errors.status.429: 'many' is not of type 'integer'"


def test_capability_row_errors_point_inside_the_row(tmp_path: Path) -> None:
    """A row is "a mapping or null"; the diagnostic names the bad value and the typo'd key, not the row."""
    path = write(tmp_path, "caps.yaml", """\
        models:
          gpt-x: {context: big, visoin: true}
          ok: null
          worse: 7
    """)
    _, diagnostics = load(path)
    assert spots(diagnostics) == [
        ("caps.yaml", 2, 20, DiagnosticCode.SCHEMA),
        ("caps.yaml", 2, 25, DiagnosticCode.UNKNOWN_KEY),
        ("caps.yaml", 4, 10, DiagnosticCode.SCHEMA),
    ]
    by_col = {(d.line, d.col): d.message for d in diagnostics}
    assert by_col[2, 20] == "models.gpt-x.context: 'big' is not of type 'integer'"
    assert by_col[2, 25] == "unknown key 'visoin' in models.gpt-x (did you mean 'vision'?)"
    assert "is not valid under any of the given schemas" in by_col[4, 10]


def test_every_capability_is_accepted_and_typed(tmp_path: Path) -> None:
    path = write(tmp_path, "caps.yaml", """\
        models:
          "*": {context: 8, max_output: 4, tools: true, vision: false, reasoning: false, sampling: true,
                max_tools: 128, cache_control: false, json_schema: true}
          "anthropic/*": {cache_control: true}
          bad: {cache_control: "yes", max_tools: 0, json_schema: 1}
    """)
    _, diagnostics = load(path)
    assert sorted(d.message for d in diagnostics) == [
        "models.bad.cache_control: 'yes' is not of type 'boolean'",
        "models.bad.json_schema: 1 is not of type 'boolean'",
        "models.bad.max_tools: 0 is less than the minimum of 1",
    ]


def test_every_problem_in_a_file_is_reported_not_just_the_first(tmp_path: Path) -> None:
    path = write(tmp_path, "many.yaml", "a: 1\nb: 2\ndescription: 3\n")
    _, diagnostics = load(path)
    assert [(d.line, d.code) for d in sorted(diagnostics)] == [
        (1, DiagnosticCode.UNKNOWN_KEY), (2, DiagnosticCode.UNKNOWN_KEY), (3, DiagnosticCode.SCHEMA)]


def test_require_rules_raises_one_rule_error_with_every_diagnostic(tmp_path: Path) -> None:
    write(tmp_path, "bad.yaml", "modles: {}\ndescription: 1\n")
    with pytest.raises(RuleError) as caught:
        require_rules([tmp_path])
    assert [d.line for d in caught.value.diagnostics] == [1, 2]
    assert "bad.yaml:1:1: unknown key 'modles'" in str(caught.value)


def test_require_rules_returns_the_builtin_rules() -> None:
    rule_sets = require_rules()
    assert "openai" in rule_sets
    assert same_file(rule_sets["openai"].path, BUILTIN_OPENAI)


# --- values and positions ------------------------------------------------------------------------


def test_values_become_plain_python_types(tmp_path: Path) -> None:
    path = write(tmp_path, "plain.yaml", """\
        description: "quoted"
        models:
          "*": {context: 0x10, max_output: 1_000}
        errors:
          status: {503: 529}
        request:
          body: {a: [1, 2.5, true, null, 'x']}
    """)
    rule_sets, diagnostics = load(path)
    assert diagnostics == []
    data = rule_sets["plain"].data
    assert data["request"]["body"] == {"a": [1, 2.5, True, None, "x"]}
    body = data["request"]["body"]["a"]
    assert [type(v) for v in body] == [int, float, bool, type(None), str]
    assert type(data["description"]) is str
    assert type(data["models"]["*"]["context"]) is int
    assert data["models"]["*"] == {"context": 16, "max_output": 1000}
    assert data["errors"]["status"] == {"503": 529}  # keys are strings, as in JSON
    assert type(data) is dict
    assert type(data["request"]["body"]["a"]) is list


def test_boolean_and_null_keys_are_spelled_as_in_yaml(tmp_path: Path) -> None:
    """`$switch` cases written `true:` must match a boolean subject; Python would spell it 'True'."""
    path = write(tmp_path, "keys.yaml", """\
        templates:
          t:
            $switch: x
            cases: {true: yes, false: no, null: missing, 2: two}
    """)
    rule_sets, diagnostics = load(path)
    assert diagnostics == []
    cases = rule_sets["keys"].data["templates"]["t"]["cases"]
    assert list(cases) == ["true", "false", "null", "2"]
    assert at(rule_sets["keys"].key_positions["templates", "t", "cases", "true"]) == ("keys.yaml", 4, 13)


def test_positions_of_values_keys_and_items(tmp_path: Path) -> None:
    path = write(tmp_path, "pos.yaml", """\
        request:
          url: "https://x"
          headers: {x-a: 'one', x-b: two}
          body:
            list:
              - first
              - "second"
    """)
    rule_sets, _ = load(path)
    rules = rule_sets["pos"]
    url = rules.positions["request", "url"]
    assert (at(url), url.quote, url.block) == (("pos.yaml", 2, 8), 1, False)
    assert at(rules.key_positions["request", "url"]) == ("pos.yaml", 2, 3)
    single = rules.positions["request", "headers", "x-a"]
    assert (at(single), single.quote) == (("pos.yaml", 3, 18), 1)
    assert at(rules.positions["request", "headers", "x-b"]) == ("pos.yaml", 3, 30)
    assert at(rules.key_positions["request", "headers", "x-b"]) == ("pos.yaml", 3, 25)
    first = rules.positions["request", "body", "list", 0]
    assert (at(first), first.quote) == (("pos.yaml", 6, 9), 0)
    second = rules.positions["request", "body", "list", 1]
    assert (at(second), second.quote) == (("pos.yaml", 7, 9), 1)


def test_position_falls_back_to_the_nearest_ancestor(tmp_path: Path) -> None:
    rule_sets, _ = load(write(tmp_path, "near.yaml", "request:\n  body: {a: 1}\n"))
    rules = rule_sets["near"]
    assert at(rules.position(("request", "body", "a", "deeper", 3))) == ("near.yaml", 2, 13)
    assert at(rules.position(("nothing",))) == ("near.yaml", 1, 1)
    assert at(rules.key_position(("request", "body", "a"))) == ("near.yaml", 2, 10)
    assert at(rules.key_position(("request", "body", "a", 0))) == ("near.yaml", 2, 13)


def test_block_scalar_positions_point_at_the_text(tmp_path: Path) -> None:
    """ruamel marks the `|`; the text starts on the next line at the block's own indentation."""
    path = write(tmp_path, "block.yaml", """\
        request:
          body:
            a: |
                  deep {{ x }}
                  second
            b:
              - >-
                folded
            c: |

              after a blank line
    """)
    rules = load(path)[0]["block"]
    a = rules.positions["request", "body", "a"]
    assert (at(a), a.block, a.text_col) == (("block.yaml", 3, 8), True, 11)
    assert at(a.shifted()) == ("block.yaml", 4, 11)
    assert at(a.shifted(col_offset=5)) == ("block.yaml", 4, 16)
    assert at(a.shifted(line_offset=1)) == ("block.yaml", 5, 11)
    b = rules.positions["request", "body", "b", 0]
    assert (at(b), b.text_col) == (("block.yaml", 7, 9), 9)
    c = rules.positions["request", "body", "c"]
    assert at(c.shifted(line_offset=1)) == ("block.yaml", 11, 7)


def test_shifted_positions_inside_flow_scalars() -> None:
    quoted = SourcePosition("f.yaml", 3, 10, quote=1)
    assert quoted.shifted() == SourcePosition("f.yaml", 3, 11)
    assert quoted.shifted(col_offset=4) == SourcePosition("f.yaml", 3, 15)
    plain = SourcePosition("f.yaml", 3, 10)
    assert plain.shifted(col_offset=4) == SourcePosition("f.yaml", 3, 14)


# --- extends -------------------------------------------------------------------------------------

BASE = """\
description: base rules
defaults:
  base_url: https://base.example
  api_key: ${BASE_KEY}
models:
  "*": {context: 1000, tools: true}
  "old*": {vision: false}
request:
  url: "{{ provider.base_url }}/chat"
  headers:
    x-one: "1"
    x-two: "2"
  body:
    model: "{{ model }}"
    list: [1, 2, 3]
    choice: {$if: request.tools, then: tools, else: none}
    keep: kept
templates:
  greet: {hello: world, bye: moon}
  other: {a: 1}
finish_reasons: {stop: end_turn, length: max_tokens}
"""

CHILD = """\
extends: base
defaults:
  base_url: https://child.example
models:
  "old*": null
  "new*": {vision: true}
request:
  headers:
    x-two: null
    x-three: "3"
  body:
    model: "{{ model | upper }}"
    list: [9]
    choice: {$if: request.tool_choice, then: chosen}
    extra: added
templates:
  greet: {hello: child}
finish_reasons: {length: end_turn}
"""


@pytest.fixture
def family(tmp_path: Path) -> tuple[RuleSet, Path, Path]:
    base = write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", CHILD)
    rule_sets, diagnostics = load(base, child)
    assert diagnostics == []
    return rule_sets["child"], base, child


def test_extends_merges_mappings_and_replaces_everything_else(family: tuple[RuleSet, Path, Path]) -> None:
    child = family[0]
    data: dict[str, Any] = child.data
    assert "extends" not in data
    assert data["description"] == "base rules"
    assert data["defaults"] == {"base_url": "https://child.example", "api_key": "${BASE_KEY}"}
    assert data["models"] == {"*": {"context": 1000, "tools": True}, "new*": {"vision": True}}
    assert data["request"]["url"] == "{{ provider.base_url }}/chat"
    assert data["request"]["headers"] == {"x-one": "1", "x-three": "3"}
    body = data["request"]["body"]
    assert body["list"] == [9], "a list replaces the parent's list whole"
    assert body["choice"] == {"$if": "request.tool_choice", "then": "chosen"}, "a directive is replaced whole"
    assert body["model"] == "{{ model | upper }}"
    assert data["templates"] == {"greet": {"hello": "child"}, "other": {"a": 1}}, "a named template is replaced whole"
    assert data["finish_reasons"] == {"stop": "end_turn", "length": "end_turn"}
    assert child.lineage == ("child", "base")


def test_extends_keeps_the_parents_key_order(family: tuple[RuleSet, Path, Path]) -> None:
    """An overridden key stays where the parent had it, so upstream bodies keep their shape."""
    data = family[0].data
    assert list(data["request"]["body"]) == ["model", "list", "choice", "keep", "extra"]
    assert list(data["defaults"]) == ["base_url", "api_key"]
    assert list(data["models"]) == ["*", "new*"]


def test_extends_positions_point_into_the_file_each_value_came_from(
        family: tuple[RuleSet, Path, Path]) -> None:
    child, _, _ = family
    inherited = {
        ("request", "url"): 9,
        ("defaults", "api_key"): 4,
        ("request", "headers", "x-one"): 11,
        ("request", "body", "keep"): 17,
        ("templates", "other", "a"): 20,
        ("models", "*", "context"): 6,
    }
    for key_path, line in inherited.items():
        assert (Path(child.position(key_path).path).name, child.position(key_path).line) == ("base.yaml", line)
    overridden = {
        ("defaults", "base_url"): (3, 13),
        ("request", "headers", "x-three"): (10, 14),
        ("request", "body", "model"): (12, 12),
        ("request", "body", "list", 0): (13, 12),
        ("request", "body", "choice", "$if"): (14, 19),
        ("request", "body", "extra"): (15, 12),
        ("templates", "greet", "hello"): (17, 18),
        ("models", "new*", "vision"): (6, 20),
    }
    for key_path, (line, col) in overridden.items():
        assert at(child.position(key_path)) == ("child.yaml", line, col), key_path
    assert at(child.key_position(("request", "body", "model"))) == ("child.yaml", 12, 5)
    assert at(child.key_position(("request", "body", "keep"))) == ("base.yaml", 17, 5)


def test_replaced_values_leave_no_parent_positions_behind(family: tuple[RuleSet, Path, Path]) -> None:
    child = family[0]
    for gone in [("request", "body", "list", 1), ("request", "body", "choice", "else"),
                 ("templates", "greet", "bye"), ("request", "headers", "x-two"), ("models", "old*")]:
        assert gone not in child.positions, gone
    # a position asked for under a replaced value resolves to the child's replacement
    assert at(child.position(("request", "body", "list", 2))) == ("child.yaml", 13, 11)


def test_the_parent_itself_is_unchanged_by_a_child(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", BASE)
    write(tmp_path, "child.yaml", CHILD)
    rule_sets, _ = load(tmp_path)
    assert rule_sets["base"].data["request"]["body"]["list"] == [1, 2, 3]
    assert "old*" in rule_sets["base"].data["models"]
    assert set(rule_sets["base"].data["request"]["headers"]) == {"x-one", "x-two"}
    assert same_file(rule_sets["base"].path, base)


def test_null_for_a_key_the_parent_lacks_is_kept(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", "request:\n  body: {a: 1}\n")
    write(tmp_path, "kid.yaml", "extends: base\nrequest:\n  body: {b: null}\n")
    rule_sets, _ = load(tmp_path)
    assert rule_sets["kid"].data["request"]["body"] == {"a": 1, "b": None}


def test_extends_chains_through_grandparents(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "defaults: {base_url: A, api_key: A}\nrequest: {url: A}\n")
    write(tmp_path, "b.yaml", "extends: a\ndefaults: {base_url: B}\n")
    write(tmp_path, "c.yaml", "extends: b\ndefaults: {api_key: C}\n")
    rule_sets, diagnostics = load(tmp_path)
    assert diagnostics == []
    c = rule_sets["c"]
    assert c.data["defaults"] == {"base_url": "B", "api_key": "C"}
    assert c.lineage == ("c", "b", "a")
    assert Path(c.position(("request", "url")).path).name == "a.yaml"
    assert Path(c.position(("defaults", "base_url")).path).name == "b.yaml"


def test_extends_cycle_is_reported_at_each_extends_value(tmp_path: Path) -> None:
    write(tmp_path, "one.yaml", "description: one\nextends: two\n")
    write(tmp_path, "two.yaml", "extends:   one\n")
    write(tmp_path, "me.yaml", "extends: me\n")
    rule_sets, diagnostics = load(tmp_path)
    assert rule_sets == {}
    assert spots(diagnostics) == [
        ("me.yaml", 1, 10, DiagnosticCode.BAD_EXTENDS),
        ("one.yaml", 2, 10, DiagnosticCode.BAD_EXTENDS),
        ("two.yaml", 1, 12, DiagnosticCode.BAD_EXTENDS),
    ]
    messages = {Path(d.path).name: d.message for d in diagnostics}
    assert messages["me.yaml"] == "'extends' makes a cycle: me -> me"
    assert messages["one.yaml"] == "'extends' makes a cycle: two -> one -> two"
    assert messages["two.yaml"] == "'extends' makes a cycle: one -> two -> one"


def test_extends_unknown_parent_is_reported_with_a_suggestion(tmp_path: Path) -> None:
    write(tmp_path, "openai_like.yaml", "description: x\n")
    write(tmp_path, "typo.yaml", "description: t\nextends: openai_lik\n")
    write(tmp_path, "far.yaml", "extends: zzz\n")
    rule_sets, diagnostics = load(tmp_path)
    assert set(rule_sets) == {"openai_like"}
    assert spots(diagnostics) == [
        ("far.yaml", 1, 10, DiagnosticCode.BAD_EXTENDS),
        ("typo.yaml", 2, 10, DiagnosticCode.BAD_EXTENDS),
    ]
    messages = {Path(d.path).name: d.message for d in diagnostics}
    assert messages["typo.yaml"] == "'extends' names unknown rules 'openai_lik' (did you mean 'openai_like'?)"
    assert messages["far.yaml"].endswith("; known: far, openai_like, typo")


def test_a_child_of_a_broken_parent_is_left_out(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", "extends: nowhere\n")
    write(tmp_path, "kid.yaml", "extends: base\n")
    rule_sets, diagnostics = load(tmp_path)
    assert rule_sets == {}
    assert spots(diagnostics) == [("base.yaml", 1, 10, DiagnosticCode.BAD_EXTENDS)]


# --- built-in rules and user files ---------------------------------------------------------------


def test_builtin_rules_load_without_diagnostics() -> None:
    rule_sets, diagnostics = load_rules()
    assert diagnostics == []
    assert "openai" in rule_sets
    assert rule_sets["openai"].lineage == ("openai",)


def test_user_file_with_a_builtin_name_replaces_it(tmp_path: Path) -> None:
    mine = write(tmp_path, "openai.yaml", "description: my own\nrequest: {url: 'http://mine', body: {}}\n")
    rule_sets, diagnostics = load_rules([tmp_path])
    assert diagnostics == []
    openai = rule_sets["openai"]
    assert openai.data == {"description": "my own", "request": {"url": "http://mine", "body": {}}}
    assert same_file(openai.path, mine)
    assert same_file(openai.position(("request", "url")).path, mine)


def test_user_file_extending_a_builtin_inherits_its_positions(tmp_path: Path) -> None:
    mine = write(tmp_path, "vendor.yaml", """\
        extends: openai
        description: an OpenAI-compatible vendor
        defaults: {base_url: https://vendor.example/v1, api_key: "${VENDOR_KEY}"}
    """)
    rule_sets, diagnostics = load_rules([mine])
    assert diagnostics == []
    vendor = rule_sets["vendor"]
    assert vendor.data["request"] == rule_sets["openai"].data["request"]
    assert vendor.data["defaults"]["base_url"] == "https://vendor.example/v1"
    assert same_file(vendor.position(("request", "url")).path, BUILTIN_OPENAI)
    assert same_file(vendor.position(("defaults", "api_key")).path, mine)
    assert vendor.lineage == ("vendor", "openai")


def test_rule_file_paths_expand_directories_sorted(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.yml", "c.yaml", "notes.txt"):
        (tmp_path / name).write_text("description: x\n")
    single = tmp_path / "notes.txt"
    assert [p.name for p in rule_file_paths([tmp_path, single])] == ["a.yml", "b.yaml", "c.yaml", "notes.txt"]


def test_read_yaml_returns_positions_for_every_value(tmp_path: Path) -> None:
    data, positions, key_positions, diagnostics = read_yaml(write(tmp_path, "r.yaml", "a:\n  b: [x, {c: d}]\n"))
    assert diagnostics == []
    assert data == {"a": {"b": ["x", {"c": "d"}]}}
    assert set(positions) == {("a",), ("a", "b"), ("a", "b", 0), ("a", "b", 1), ("a", "b", 1, "c")}
    assert set(key_positions) == {("a",), ("a", "b"), ("a", "b", 1, "c")}
    assert (positions["a", "b", 1, "c"].line, positions["a", "b", 1, "c"].col) == (2, 14)
