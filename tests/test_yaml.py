"""`_yaml`: YAML with positions, plain-scalar typing, ``${VAR}`` expansion and schema-error wording.

Rule files and the config both go through this module; test_loader.py and test_config.py check what
each makes of it, this file checks the shared pieces on their own, with the real shipped schemas.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from ccproxy_engine._config import CONFIG_WORDING
from ccproxy_engine._errors import Diagnostic, DiagnosticCode
from ccproxy_engine._yaml import (
    Interpolation,
    KeyPath,
    ParsedYaml,
    SourcePosition,
    did_you_mean,
    dotted,
    expand_references,
    interpolate,
    nearest_position,
    parse_yaml,
    read_yaml,
    schema_diagnostics,
    type_plain,
)


def parse(text: str) -> ParsedYaml:
    return parse_yaml(textwrap.dedent(text), "doc.yaml")


def at(pos: SourcePosition) -> tuple[int, int]:
    return pos.line, pos.col


# --- positions -----------------------------------------------------------------------------------


def test_every_value_and_key_has_its_position() -> None:
    parsed = parse("""\
        a:
          b: [x, "y"]
          c: {d: 'e'}
    """)
    assert parsed.diagnostics == []
    assert parsed.data == {"a": {"b": ["x", "y"], "c": {"d": "e"}}}
    assert {path: at(pos) for path, pos in parsed.positions.items()} == {
        ("a",): (2, 3), ("a", "b"): (2, 6), ("a", "b", 0): (2, 7), ("a", "b", 1): (2, 10),
        ("a", "c"): (3, 6), ("a", "c", "d"): (3, 10),
    }
    assert {path: at(pos) for path, pos in parsed.key_positions.items()} == {
        ("a",): (1, 1), ("a", "b"): (2, 3), ("a", "c"): (3, 3), ("a", "c", "d"): (3, 7),
    }
    assert {pos.path for pos in parsed.positions.values()} == {"doc.yaml"}


def test_positions_say_how_each_scalar_is_written() -> None:
    parsed = parse("""\
        plain: x
        double: "x"
        single: 'x'
        block: |
          x
    """)
    flags = {path[0]: (pos.quote, pos.block, pos.plain) for path, pos in parsed.positions.items()}
    assert flags == {"plain": (0, False, True), "double": (1, False, False), "single": (1, False, False),
                     "block": (0, True, False)}


def test_merged_keys_stand_where_the_anchor_wrote_them() -> None:
    """A ``<<:`` key has no place in the mapping that merges it; its text, quotes included, is at the anchor."""
    parsed = parse("""\
        base: &base
          url: "https://x"
          port: 1
        other:
          <<: *base
          port: 2
    """)
    assert parsed.data["other"] == {"port": 2, "url": "https://x"}
    url = parsed.positions["other", "url"]
    assert (at(url), url.quote) == ((2, 8), 1)
    assert at(parsed.key_positions["other", "url"]) == (2, 3)
    assert at(parsed.positions["other", "port"]) == (6, 9)


def test_nearest_position_walks_up_to_an_enclosing_value_or_the_file_start() -> None:
    parsed = parse("request:\n  body: {a: 1}\n")
    assert at(nearest_position(parsed.positions, ("request", "body", "a", "deeper", 0), "doc.yaml")) == (2, 13)
    assert nearest_position(parsed.positions, ("missing", "x"), "doc.yaml") == SourcePosition("doc.yaml", 1, 1)
    assert nearest_position({}, (), "other.yaml") == SourcePosition("other.yaml", 1, 1)


# --- scalar typing -------------------------------------------------------------------------------


def test_values_become_plain_python_types() -> None:
    parsed = parse("""\
        int: 0x10
        big: 1_000
        float: 2.5
        yes: true
        none: ~
        day: 2025-01-31
        text: "007"
        true: boolean key
        null: null key
    """)
    data = parsed.data
    assert data == {"int": 16, "big": 1000, "float": 2.5, "yes": True, "none": None, "day": "2025-01-31",
                    "text": "007", "true": "boolean key", "null": "null key"}
    assert [type(data[key]) for key in ("int", "big", "float", "text")] == [int, int, float, str]
    assert type(data) is dict


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None), ("~", None), ("null", None), ("NULL", None),
        ("true", True), ("False", False), ("yes", "yes"),
        ("42", 42), ("-7", -7), ("+3", 3),
        ("2.5", 2.5), (".5", 0.5), ("1e3", 1000.0), ("-1.5E-2", -0.015),
        ("1.2.3", "1.2.3"), ("0x10", "0x10"), ("sk-abc", "sk-abc"), ("3456 ", "3456 "),
    ],
)
def test_type_plain_follows_yaml_core_schema(text: str, expected: Any) -> None:
    typed = type_plain(text)
    assert typed == expected
    assert type(typed) is type(expected)


# --- reading errors ------------------------------------------------------------------------------


def test_syntax_error_names_the_construct_it_interrupts() -> None:
    [error] = parse("providers: {openai: {}\nroutes: {}\n").diagnostics
    assert (error.line, error.col, error.code) == (2, 1, DiagnosticCode.YAML_SYNTAX)
    assert error.message == ("invalid YAML: expected ',' or '}', but got '<scalar>' "
                             "(while parsing a flow mapping started at 1:12)")
    [error] = parse_yaml("providers: {openai: {}\nroutes: {}\n", "c.yaml", CONFIG_WORDING).diagnostics
    assert error.message.startswith("expected ',' or '}'")


def test_duplicate_key_is_a_syntax_error_at_the_second_key() -> None:
    parsed = parse("a: 1\nb: 2\na: 3\n")
    assert parsed.data is None
    [error] = parsed.diagnostics
    assert (error.line, error.col, error.code) == (3, 1, DiagnosticCode.YAML_SYNTAX)
    assert 'duplicate key "a"' in error.message


def test_unreadable_and_undecodable_files_are_io_diagnostics(tmp_path: Path) -> None:
    missing = read_yaml(tmp_path / "nope.yaml", "nope.yaml")
    [error] = missing.diagnostics
    assert (error.path, error.code, error.message) == ("nope.yaml", DiagnosticCode.IO,
                                                       "cannot read file: No such file or directory")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("description: caf\xe9\n".encode("latin-1"))
    [error] = read_yaml(latin1).diagnostics
    assert error.code is DiagnosticCode.IO
    assert "can't decode byte 0xe9" in error.message


# --- environment references ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "env", "expected", "missing", "malformed"),
    [
        pytest.param("${KEY}", {"KEY": "k"}, "k", [], False, id="set"),
        pytest.param("${KEY}", {"KEY": ""}, "", ["KEY"], False, id="empty-is-unset"),
        pytest.param("${KEY:-d}", {"KEY": ""}, "d", [], False, id="empty-takes-default"),
        pytest.param("${KEY:-}", {}, "", [], False, id="empty-default"),
        pytest.param("a ${A} b ${B} c", {"B": "2"}, "a  b 2 c", ["A"], False, id="inside-text"),
        pytest.param("${A}${A}", {}, "", ["A", "A"], False, id="each-use-counts"),
        pytest.param("$${HOME} ${HOME}", {"HOME": "/root"}, "${HOME} /root", [], False, id="escaped"),
        pytest.param("$$${HOME}", {"HOME": "/root"}, "$${HOME}", [], False, id="dollar-before-escape"),
        pytest.param("cost $5 or $X", {}, "cost $5 or $X", [], False, id="lone-dollars"),
        pytest.param("${A:-${B}}", {"B": "b"}, "${B}", [], False, id="default-ends-at-first-brace"),
        pytest.param("${A}", {"A": "${B}"}, "${B}", [], False, id="env-text-not-expanded-again"),
        pytest.param("${1BAD}", {}, "${1BAD}", [], True, id="bad-name"),
        pytest.param("${OPEN", {}, "${OPEN", [], True, id="unclosed"),
        pytest.param("${A:default}", {"A": "a"}, "${A:default}", [], True, id="default-without-dash"),
    ],
)
def test_expand_references(text: str, env: dict[str, str], expected: str, missing: list[str],
                           malformed: bool) -> None:
    assert expand_references(text, env) == (expected, missing, malformed)


def test_interpolate_types_plain_scalars_and_keeps_quoted_ones_strings() -> None:
    parsed = parse("""\
        port: ${PORT:-3456}
        quoted: "${PORT:-3456}"
        key: ${KEY:-}
        flag: ${FLAG}
        block: |
          ${PORT:-3456}
        untouched: 007
        ${NAME}: key
        list:
          - ${PORT:-1}
          - "${PORT:-1}"
    """)
    found = Interpolation()
    data = interpolate(parsed.data, parsed.positions, {"FLAG": "true", "NAME": "x"}, found)
    assert data == {"port": 3456, "quoted": "3456", "key": None, "flag": True, "block": "3456\n",
                    "untouched": 7, "${NAME}": "key", "list": [1, "1"]}
    assert found == Interpolation()


def test_interpolate_reports_missing_variables_and_malformed_references_by_path() -> None:
    parsed = parse("""\
        a: {b: "${B}"}
        c: [ok, "${C} and ${D:-d}", "${bad"]
    """)
    found = Interpolation()
    data = interpolate(parsed.data, parsed.positions, {}, found)
    assert data == {"a": {"b": ""}, "c": ["ok", " and d", "${bad"]}
    assert found.missing == [(("a", "b"), "B"), (("c", 1), "C")]
    assert found.malformed == [(("c", 2), "${bad")]


# --- schema errors -------------------------------------------------------------------------------


def check(text: str, schema: str, **kwargs: Any) -> list[Diagnostic]:
    parsed = parse(text)
    return sorted(schema_diagnostics(parsed.data, schema, "doc.yaml", parsed.positions,
                                     parsed.key_positions, **kwargs))


def spots(diagnostics: list[Diagnostic]) -> list[tuple[int, int, DiagnosticCode, str]]:
    return [(d.line, d.col, d.code, d.message) for d in diagnostics]


def test_unknown_keys_are_worded_alike_in_rules_and_config_but_for_the_top_level_name() -> None:
    rule = check("modles: {}\nrequest: {metod: POST}\n", "rule.schema.json")
    config = check("""\
        providers: {openai: {base_ur: x}}
        routes: {default: openai/gpt-4.1}
        logging: {}
    """, "config.schema.json", wording=CONFIG_WORDING)
    assert spots(rule) == [
        (1, 1, DiagnosticCode.UNKNOWN_KEY, "unknown key 'modles' in (top level) (did you mean 'models'?)"),
        (2, 11, DiagnosticCode.UNKNOWN_KEY, "unknown key 'metod' in request (did you mean 'method'?)"),
    ]
    assert spots(config) == [
        (1, 22, DiagnosticCode.UNKNOWN_KEY,
         "unknown key 'base_ur' in providers.openai (did you mean 'base_url'?)"),
        (3, 1, DiagnosticCode.UNKNOWN_KEY, "unknown key 'logging' in the top level"),
    ]


def test_keys_matching_a_pattern_are_known() -> None:
    diagnostics = check("errors:\n  status: {'503': 529, 'abc': 400, '600': 400}\n", "rule.schema.json")
    assert [d.message for d in diagnostics] == ["unknown key 'abc' in errors.status",
                                                "unknown key '600' in errors.status"]


def test_a_wrong_value_is_reported_at_the_value_with_its_path() -> None:
    diagnostics = check("description: 5\nfinish_reasons: {stop: done}\n", "rule.schema.json")
    assert spots(diagnostics)[0] == (1, 14, DiagnosticCode.SCHEMA, "description: 5 is not of type 'string'")
    assert (diagnostics[1].line, diagnostics[1].col) == (2, 24)
    assert diagnostics[1].message.startswith("finish_reasons.stop: 'done' is not one of")


def test_a_pattern_is_explained_by_the_schemas_example_not_its_regex() -> None:
    diagnostics = check("""\
        providers: {openai: {}}
        routes: {default: openai/gpt-4.1, think: [openai/o3, o3]}
    """, "config.schema.json", wording=CONFIG_WORDING)
    assert spots(diagnostics) == [(2, 54, DiagnosticCode.SCHEMA, "routes.think[1]: 'o3' does not have the "
                                   "expected form (for example 'openai/gpt-4.1')")]


def test_alternatives_report_the_one_of_the_values_type() -> None:
    """A capability row is a mapping or null: a bad mapping gets the mapping's errors, not "none matched"."""
    diagnostics = check("models:\n  x: {context: big, visoin: true}\n", "rule.schema.json")
    assert spots(diagnostics) == [
        (2, 16, DiagnosticCode.SCHEMA, "models.x.context: 'big' is not of type 'integer'"),
        (2, 21, DiagnosticCode.UNKNOWN_KEY, "unknown key 'visoin' in models.x (did you mean 'vision'?)"),
    ]


def test_no_matching_alternative_says_what_the_schema_describes() -> None:
    config = check("providers: {openai: {}}\nroutes: {default: 5}\n", "config.schema.json", wording=CONFIG_WORDING)
    assert spots(config) == [(2, 19, DiagnosticCode.SCHEMA, "routes.default: expected one target, or a "
                              "non-empty list of targets tried in order, got 5")]
    rule = check("models:\n  x: 7\n", "rule.schema.json")  # the row's alternatives have no description
    assert spots(rule) == [(2, 6, DiagnosticCode.SCHEMA, "models.x: 7 is not valid under any of the given schemas")]


def test_required_and_bad_names_point_at_the_key() -> None:
    diagnostics = check("""\
        providers:
          team/openai: {}
        routes:
          think: team/o3
    """, "config.schema.json", wording=CONFIG_WORDING)
    assert spots(diagnostics) == [
        (2, 3, DiagnosticCode.SCHEMA,
         "providers: bad name 'team/openai'; provider name: letters, digits, '.', '_' and '-'."),
        (3, 1, DiagnosticCode.SCHEMA, "routes: 'default' is a required property"),
    ]
    [top] = check("routes: {default: a/b}\n", "config.schema.json", wording=CONFIG_WORDING)
    assert (top.line, top.col, top.message) == (1, 1, "the config: 'providers' is a required property")


def test_skipped_paths_and_everything_under_them_are_left_out() -> None:
    text = """\
        providers: {openai: {}}
        routes: {default: "", think: [openai/o3, ""]}
    """
    assert len(check(text, "config.schema.json")) == 2
    skipped: list[KeyPath] = [("routes", "default"), ("routes", "think", 1)]
    assert check(text, "config.schema.json", skip=skipped) == []


# --- wording helpers -----------------------------------------------------------------------------


def test_dotted_paths_index_lists() -> None:
    assert dotted(()) == ""
    assert dotted(("routes", "models", "claude-*", 0, "x")) == "routes.models.claude-*[0].x"


def test_did_you_mean() -> None:
    assert did_you_mean("backgroud", ["default", "background"]) == " (did you mean 'background'?)"
    assert did_you_mean("zzz", ["default"]) == ""
    assert did_you_mean("x", []) == ""
