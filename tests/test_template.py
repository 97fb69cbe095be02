"""The rule language: Jinja expressions and text, JMESPath selectors, the `$` directives, diagnostics.

Templates are written as YAML in a rule file under `tmp_path` (so positions are real), loaded with
the loader and compiled with a `CompileContext`. Diagnostics are asserted at their exact
``line:col``: a planted error must be reported where the author typed it, inside the scalar.
"""

from __future__ import annotations

import random
import textwrap
from pathlib import Path
from typing import Any

import jmespath
import pytest

from ccproxy_engine._compiler import fail
from ccproxy_engine._errors import DiagnosticCode, RequestError, RuleRuntimeError
from ccproxy_engine._functions import JMESPATH_OPTIONS
from ccproxy_engine._loader import RuleSet, load_rules
from ccproxy_engine._template import (
    ENVIRONMENT,
    CompileContext,
    Compiled,
    Selector,
    bound_names,
    compile_expression,
    compile_selector,
    compile_template,
    named_template,
)

NAMES = frozenset({"request", "x", "y", "fail"})

Spot = tuple[int, int, DiagnosticCode, str]


def load_one(tmp_path: Path, text: str, name: str = "t") -> RuleSet:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    rule_sets, diagnostics = load_rules([path], include_builtin=False)
    assert diagnostics == []
    return rule_sets[name]


def compile_file(tmp_path: Path, text: str, names: frozenset[str] = NAMES) -> tuple[CompileContext,
                                                                                      dict[str, Compiled]]:
    """Compile every named template of a rule file, as the compiler does."""
    rule_set = load_one(tmp_path, text)
    ctx = CompileContext(rule_set, names | frozenset(bound_names(rule_set.data)))
    compiled = {name: named_template(name, ctx) for name in rule_set.data.get("templates") or {}}
    return ctx, compiled


def template(tmp_path: Path, body: str, names: frozenset[str] = NAMES) -> Compiled:
    """`body` (YAML) compiled as ``templates.t``; the test fails on any diagnostic."""
    text = "templates:\n  t:\n" + textwrap.indent(textwrap.dedent(body), "    ")
    ctx, compiled = compile_file(tmp_path, text, names)
    assert [d.format() for d in ctx.diagnostics] == []
    return compiled["t"]


def spots(ctx: CompileContext) -> list[Spot]:
    return sorted((d.line, d.col, d.code, d.message) for d in ctx.diagnostics)


def run(fn: Compiled, **scope: Any) -> Any:
    return fn({"fail": fail, **scope})


# --- expressions and text ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "x", "expected"),
    [
        pytest.param("'{{ x }}'", 5, 5, id="int-stays-int"),
        pytest.param("'{{ x }}'", 1.5, 1.5, id="float-stays-float"),
        pytest.param("'{{ x }}'", True, True, id="bool-stays-bool"),
        pytest.param("'{{ x }}'", "12345", "12345", id="digit-string-stays-string"),
        pytest.param("'{{ x ~ \"\" }}'", "007", "007", id="computed-digit-string-stays-string"),
        pytest.param("\"{{ '12345' }}\"", None, "12345", id="literal-digit-string-stays-string"),
        pytest.param("'{{ x }}'", {"a": [1, {"b": None}]}, {"a": [1, {"b": None}]}, id="dict-stays-dict"),
        pytest.param("'{{ x + 1 }}'", 41, 42, id="arithmetic-gives-int"),
        pytest.param("'{{ [x, x * 2] }}'", 2, [2, 4], id="list-literal"),
        pytest.param("\"{{ {'k': x} }}\"", "v", {"k": "v"}, id="dict-literal"),
        pytest.param("'{{ x is none }}'", None, True, id="test-gives-bool"),
        pytest.param("'{{ x | json_encode }}'", {"a": "é"}, '{"a":"é"}', id="filter"),
        pytest.param("'  {{ x }}  '", 7, 7, id="surrounding-space-is-still-an-expression"),
        pytest.param("'{{ none }}'", 1, None, id="none"),
    ],
)
def test_a_single_expression_keeps_its_native_type(tmp_path: Path, source: str, x: Any, expected: Any) -> None:
    value = run(template(tmp_path, source), x=x)
    assert value == expected
    assert type(value) is type(expected)


def test_an_expression_returns_the_object_itself(tmp_path: Path) -> None:
    payload = {"a": [1, 2]}
    assert run(template(tmp_path, "'{{ x }}'"), x=payload) is payload


@pytest.mark.parametrize(
    ("source", "x", "expected"),
    [
        pytest.param("'n={{ x }}'", 5, "n=5", id="text-and-int"),
        pytest.param("'{{ x }}{{ x }}'", 5, "55", id="two-expressions"),
        pytest.param("'{% if x %}yes{% else %}no{% endif %}'", 0, "no", id="statement"),
        pytest.param("'{{ x.a }}-{{ x.b }}'", {"a": 1, "b": "2"}, "1-2", id="paths"),
        pytest.param("|\n  line {{ x }}\n", 3, "line 3\n", id="block-keeps-trailing-newline"),
    ],
)
def test_mixed_text_renders_a_string(tmp_path: Path, source: str, x: Any, expected: str) -> None:
    value = run(template(tmp_path, source), x=x)
    assert value == expected
    assert type(value) is str


def test_none_renders_as_nothing_in_mixed_text(tmp_path: Path) -> None:
    fn = template(tmp_path, """\
        auth: "Bearer {{ x.key }}"
        title: "{{ x.title }} ({{ x.source }})"
        falsy: "{{ x.zero }}/{{ x.no }}"
    """)
    assert run(fn, x={"key": None, "source": "web", "zero": 0, "no": False}) == {
        "auth": "Bearer ", "title": " (web)", "falsy": "0/False"}


def test_plain_strings_are_literals(tmp_path: Path) -> None:
    fn = template(tmp_path, "{a: plain text, b: 'x.y', c: 3, d: [true, 2.5]}")
    assert run(fn) == {"a": "plain text", "b": "x.y", "c": 3, "d": [True, 2.5]}


def test_computed_none_drops_a_key_or_item_but_a_literal_null_stays(tmp_path: Path) -> None:
    fn = template(tmp_path, """\
        computed: "{{ x.missing }}"
        literal: null
        empty_string: "{{ '' }}"
        zero: "{{ 0 }}"
        falsy: "{{ false }}"
        items: [1, "{{ x.missing }}", null, "{{ none }}", 2]
        nested: {a: "{{ none }}"}
    """)
    assert run(fn, x={}) == {"literal": None, "empty_string": "", "zero": 0, "falsy": False,
                             "items": [1, None, 2], "nested": {}}


def test_dict_keys_win_over_dict_methods(tmp_path: Path) -> None:
    fn = template(tmp_path, "[\"{{ x.items }}\", \"{{ x.values | length }}\", \"{{ x.get }}\"]")
    assert run(fn, x={"items": [1], "values": [1, 2]}) == [[1], 2]


def test_missing_paths_are_none_with_or_without_filters(tmp_path: Path) -> None:
    """`a.b.c` with no `a.b` is none whether Jinja or the plain-path fast path evaluates it."""
    fn = template(tmp_path, """\
        plain: "{{ x.a.b.c }}"
        filtered: "{{ x.a.b.c | default('fallback') }}"
        tested: "{{ x.a.b.c is defined }}"
        encoded: "{{ x.a.b | json_encode }}"
        conditional: "{{ x.a.b.c if x.a.b.c else 'no' }}"
    """)
    assert run(fn, x={"a": {}}) == {"filtered": "fallback", "tested": False, "encoded": "null",
                                    "conditional": "no"}


# --- directives ----------------------------------------------------------------------------------


def test_each_maps_a_list_and_splices_into_the_parent_list(tmp_path: Path) -> None:
    fn = template(tmp_path, """\
        - first
        - $each: x
          as: n
          do: "{{ n * 10 }}"
        - last
    """)
    assert run(fn, x=[1, 2, 3]) == ["first", 10, 20, 30, "last"]
    assert run(fn, x=[]) == ["first", "last"]
    assert run(fn, x=None) == ["first", "last"]


def test_each_filters_with_if_and_drops_none_results(tmp_path: Path) -> None:
    fn = template(tmp_path, """\
        $each: x
        as: n
        if: "n % 2 == 1"
        do: "{{ none if n == 3 else n }}"
    """)
    assert run(fn, x=[1, 2, 3, 4, 5]) == [1, 5]


def test_each_defaults_to_item_and_returns_the_item(tmp_path: Path) -> None:
    fn = template(tmp_path, "{out: {$each: x}}")
    out = run(fn, x=["a", "b"])
    assert out == {"out": ["a", "b"]}
    assert type(out["out"]) is list, "a spread list stored under a key is a plain list"


def test_each_over_a_mapping_yields_key_and_value(tmp_path: Path) -> None:
    fn = template(tmp_path, """\
        $each: x
        as: entry
        do: "{{ entry.key }}={{ entry.value }}"
    """)
    assert run(fn, x={"a": 1, "b": 2}) == ["a=1", "b=2"]


def test_each_do_can_build_mappings_and_see_the_outer_scope(tmp_path: Path) -> None:
    fn = template(tmp_path, """\
        $each: x.items
        as: it
        do: {name: "{{ it }}", owner: "{{ x.owner }}"}
    """)
    assert run(fn, x={"items": ["a", "b"], "owner": "me"}) == [{"name": "a", "owner": "me"},
                                                                {"name": "b", "owner": "me"}]


def test_nested_each_splices_into_one_list(tmp_path: Path) -> None:
    fn = template(tmp_path, """\
        $each: x
        as: row
        do: {$each: row, as: cell, do: "{{ cell }}"}
    """)
    assert run(fn, x=[[1, 2], [], [3]]) == [1, 2, 3]


def test_each_with_a_list_do_keeps_one_list_per_item(tmp_path: Path) -> None:
    fn = template(tmp_path, """\
        $each: x
        as: n
        do: ["{{ n }}", "{{ n + 1 }}"]
    """)
    assert run(fn, x=[1, 5]) == [[1, 2], [5, 6]]


def test_if_then_else(tmp_path: Path) -> None:
    fn = template(tmp_path, """\
        a: {$if: x, then: yes, else: no}
        b: {$if: "x and x > 1", then: {big: "{{ x }}"}}
        c: {$if: "{{ x == 2 }}", then: [1, 2]}
    """)
    assert run(fn, x=2) == {"a": "yes", "b": {"big": 2}, "c": [1, 2]}
    assert run(fn, x=1) == {"a": "yes"}
    assert run(fn, x=0) == {"a": "no"}


def test_switch_on_strings_with_default(tmp_path: Path) -> None:
    fn = template(tmp_path, """\
        $switch: x.type
        cases:
          auto: auto
          any: required
          none: none
          tool: {type: function, name: "{{ x.name }}"}
        default: "{{ 'unknown ' ~ x.type }}"
    """)
    assert run(fn, x={"type": "any"}) == "required"
    assert run(fn, x={"type": "none"}) == "none"
    assert run(fn, x={"type": "tool", "name": "f"}) == {"type": "function", "name": "f"}
    assert run(fn, x={"type": "other"}) == "unknown other"


def test_switch_on_booleans_numbers_and_none(tmp_path: Path) -> None:
    fn = template(tmp_path, """\
        $switch: x
        cases:
          true: yes
          false: no
          null: missing
          2: two
          "text": text
    """)
    assert run(fn, x=True) == "yes"
    assert run(fn, x=False) == "no"
    assert run(fn, x=None) == "missing"
    assert run(fn, x=2) == "two"
    assert run(fn, x="text") == "text"
    assert run(fn, x="True") is None, "no default: none"


def test_let_binds_names_in_order(tmp_path: Path) -> None:
    fn = template(tmp_path, """\
        $let:
          double: "{{ x * 2 }}"
          quad: "{{ double * 2 }}"
          evens: [{$each: "[1, 2, 3, 4]", as: n, if: "n % 2 == 0"}]
        in: {d: "{{ double }}", q: "{{ quad }}", e: "{{ evens }}"}
    """)
    assert run(fn, x=3) == {"d": 6, "q": 12, "e": [2, 4]}


def test_use_with_arguments_and_recursion(tmp_path: Path) -> None:
    ctx, compiled = compile_file(tmp_path, """\
        templates:
          t: {$use: tree, with: {node: "{{ x }}", depth: 0}}
          tree:
            name: "{{ node.name }}"
            depth: "{{ depth }}"
            children:
              - $each: node.children
                as: child
                do: {$use: tree, with: {node: "{{ child }}", depth: "{{ depth + 1 }}"}}
          labels:
            - $each: x
              as: item
              do: {$use: label}
          label: "<{{ item }}>"
    """)
    assert ctx.diagnostics == []
    doc = {"name": "root", "children": [{"name": "a", "children": [{"name": "a1"}]}, {"name": "b"}]}
    assert run(compiled["t"], x=doc) == {
        "name": "root", "depth": 0, "children": [
            {"name": "a", "depth": 1, "children": [{"name": "a1", "depth": 2, "children": []}]},
            {"name": "b", "depth": 1, "children": []},
        ]}
    assert run(compiled["labels"], x=["p", "q"]) == ["<p>", "<q>"]


def test_select_with_and_without_from(tmp_path: Path) -> None:
    fn = template(tmp_path, """\
        scope: {$select: "x.items[?price > `2`].name"}
        source: {$select: "[?price > `2`].name", from: x.items}
        expression_source: {$select: "length(@)", from: "{{ x.items | map(attribute='name') | list }}"}
    """)
    items = [{"name": "a", "price": 1}, {"name": "b", "price": 3}, {"name": "c", "price": 5}]
    assert run(fn, x={"items": items}) == {"scope": ["b", "c"], "source": ["b", "c"], "expression_source": 3}
    # a number has no length: jmespath raises, which is a rule failure with a position
    with pytest.raises(RuleRuntimeError, match=r"t\.yaml:3:15 failed"):
        run(template(tmp_path, "{$select: 'length(@)', from: x}"), x=5)


def test_merge_later_mappings_win_and_none_values_are_skipped(tmp_path: Path) -> None:
    fn = template(tmp_path, """\
        $merge:
          - {a: 1, b: 1}
          - "{{ x }}"
          - {b: 3, c: "{{ none }}"}
          - "{{ 'not a mapping' }}"
    """)
    assert run(fn, x={"a": 2, "d": None, "e": 5}) == {"a": 2, "b": 3, "e": 5}
    assert run(fn, x=None) == {"a": 1, "b": 3}


def test_flatten_one_level(tmp_path: Path) -> None:
    fn = template(tmp_path, """\
        - 0
        - $flatten:
            - [1, 2]
            - 3
            - "{{ none }}"
            - [[4]]
            - "{{ x }}"
        - 9
    """)
    assert run(fn, x=[5, 6]) == [0, 1, 2, 3, [4], 5, 6, 9]
    assert run(template(tmp_path, "{$flatten: '{{ x }}'}"), x=[[1], [2, [3]], None, 4]) == [1, 2, [3], 4]


# --- directive diagnostics -----------------------------------------------------------------------


def test_unknown_directive_and_stray_keys_are_reported_at_the_key(tmp_path: Path) -> None:
    ctx, _ = compile_file(tmp_path, """\
        templates:
          a: {$iff: x, then: 1}
          b:
            $if: x
            then: 1
            els: 2
          c:
            $each: x
            as: n
            filter: n
          d: {$nope: 1}
    """)
    assert spots(ctx) == [
        (2, 7, DiagnosticCode.BAD_DIRECTIVE, "unknown directive '$iff' (did you mean '$if'?)"),
        (6, 5, DiagnosticCode.BAD_DIRECTIVE, "'els' is not a key of $if (allowed: $if, else, then)"),
        (10, 5, DiagnosticCode.BAD_DIRECTIVE, "'filter' is not a key of $each (allowed: $each, as, do, if)"),
        (11, 7, DiagnosticCode.BAD_DIRECTIVE,
         "unknown directive '$nope'; known: $each, $if, $switch, $let, $use, $select, $merge, $flatten"),
    ]


def test_directive_arguments_of_the_wrong_shape(tmp_path: Path) -> None:
    ctx, _ = compile_file(tmp_path, """\
        templates:
          a: {$switch: x, cases: [1, 2]}
          b: {$let: [x], in: 1}
          c: {$merge: {a: 1}}
          d: {$select: 5}
          e: {$use: mesages}
          f: {$use: messages, with: [x]}
          g: {$each: x, as: 5}
          messages: []
    """)
    assert spots(ctx) == [
        (2, 26, DiagnosticCode.BAD_DIRECTIVE, "$switch 'cases' must be a mapping of value → template"),
        (3, 13, DiagnosticCode.BAD_DIRECTIVE, "$let must be a mapping of name → value"),
        (4, 15, DiagnosticCode.BAD_DIRECTIVE, "$merge needs a list of mappings"),
        (5, 16, DiagnosticCode.BAD_SELECTOR, "$select needs a JMESPath expression"),
        (6, 13, DiagnosticCode.UNKNOWN_TEMPLATE, "unknown template 'mesages' (did you mean 'messages'?)"),
        (7, 29, DiagnosticCode.BAD_DIRECTIVE, "$use 'with' must be a mapping of name → value"),
        (8, 21, DiagnosticCode.BAD_DIRECTIVE, "$each 'as' must be a variable name, not 5"),
    ]


# --- Jinja diagnostics ---------------------------------------------------------------------------


def test_unknown_filter_with_a_suggestion(tmp_path: Path) -> None:
    ctx, _ = compile_file(tmp_path, """\
        templates:
          a: "{{ x | json_encod }}"
          b: "text {{ x | zzzz }}"
    """)
    assert spots(ctx) == [
        (2, 7, DiagnosticCode.UNKNOWN_FILTER, "unknown filter 'json_encod' (did you mean 'json_encode'?)"),
        (3, 7, DiagnosticCode.UNKNOWN_FILTER, "unknown filter 'zzzz'"),
    ]


def test_unknown_variable_with_a_suggestion(tmp_path: Path) -> None:
    ctx, _ = compile_file(tmp_path, """\
        templates:
          a: "{{ reqest.model }}"
          b: "model {{ requets.model }} and {{ x }}"
          c: "{% for m in request.messages %}{{ m }}{% endfor %}"
          d: {$each: x, as: item, do: "{{ item }} {{ zzzzzz }}"}
          e: "{{ reqest }}"
          f: {$if: reqest, then: 1}
    """, names=frozenset({"request", "x"}))
    assert spots(ctx) == [
        # at the name itself, not at the `{{` around it
        (2, 10, DiagnosticCode.BAD_TEMPLATE, "unknown variable 'reqest' (did you mean 'request'?)"),
        (3, 16, DiagnosticCode.BAD_TEMPLATE, "unknown variable 'requets' (did you mean 'request'?)"),
        (5, 46, DiagnosticCode.BAD_TEMPLATE, "unknown variable 'zzzzzz'"),
        (6, 10, DiagnosticCode.BAD_TEMPLATE, "unknown variable 'reqest' (did you mean 'request'?)"),
        (7, 12, DiagnosticCode.BAD_TEMPLATE, "unknown variable 'reqest' (did you mean 'request'?)"),
    ]


BROKEN_TEMPLATES = """\
request:
  url: https://x/{{ provider.base_url + }}
  body:
    plain: Hello {{ request.x | nope }}
    double: "{{ request.x | json_encod }}"
    single: '  {{ request.x ++ }}'
    bare: {$each: request.a +, do: x}
    text_after_expression: "{{ request.a request.b }}"
    statement: "{% if request.x %}yes"
    escaped_newline: "{{ 'a\\nb' }}{{ request.x + }}"
    block: |
      line one {{ request.a }}
      line two {{ request.b + }}
    block_expression: |-
        {{ request.a
           | json_encode
           | bogus }}
    block_in_list:
      - |
        {% for item in request.items %}
          {{ item + }}
        {% endfor %}
    block_unknown_variable: |
      first
      second {{ requst }}
"""

# (key path, line, col, code): where each planted error must be reported
JINJA_SPOTS = [
    (("request", "url"), 2, 8, DiagnosticCode.BAD_TEMPLATE),  # plain scalar: its first character
    (("request", "body", "plain"), 4, 12, DiagnosticCode.UNKNOWN_FILTER),
    (("request", "body", "double"), 5, 14, DiagnosticCode.UNKNOWN_FILTER),  # after the quote
    (("request", "body", "single"), 6, 16, DiagnosticCode.BAD_TEMPLATE),  # at `{{`, after the spaces
    (("request", "body", "bare"), 7, 19, DiagnosticCode.BAD_TEMPLATE),  # a bare expression
    (("request", "body", "text_after_expression"), 8, 29, DiagnosticCode.BAD_TEMPLATE),
    (("request", "body", "statement"), 9, 17, DiagnosticCode.BAD_TEMPLATE),
    (("request", "body", "escaped_newline"), 10, 23, DiagnosticCode.BAD_TEMPLATE),  # one file line
    (("request", "body", "block"), 13, 7, DiagnosticCode.BAD_TEMPLATE),  # the text's second line
    (("request", "body", "block_expression"), 17, 9, DiagnosticCode.UNKNOWN_FILTER),  # third line
    (("request", "body", "block_in_list", 0), 21, 9, DiagnosticCode.BAD_TEMPLATE),
    (("request", "body", "block_unknown_variable"), 25, 17, DiagnosticCode.BAD_TEMPLATE),  # the name
]


def test_jinja_errors_are_reported_inside_the_scalar(tmp_path: Path) -> None:
    """Positions compose: the scalar's position, plus Jinja's line (block scalars), plus the quote."""
    rule_set = load_one(tmp_path, BROKEN_TEMPLATES)
    for key_path, line, col, code in JINJA_SPOTS:
        ctx = CompileContext(rule_set, frozenset({"request", "provider", "x"}))
        node: Any = rule_set.data
        for part in key_path:
            node = node[part]
        compile_template(node, key_path, ctx)
        found = [(Path(d.path).name, d.line, d.col, d.code) for d in ctx.diagnostics]
        assert found == [("t.yaml", line, col, code)], key_path


def test_jinja_syntax_error_has_the_source_as_detail(tmp_path: Path) -> None:
    ctx, _ = compile_file(tmp_path, "templates:\n  a: |\n    one {{ x }}\n    two {{ x + }}\n")
    (diagnostic,) = ctx.diagnostics
    assert diagnostic.code is DiagnosticCode.BAD_TEMPLATE
    assert (diagnostic.line, diagnostic.col) == (4, 5)
    assert diagnostic.detail == "  one {{ x }}\n  two {{ x + }}"
    assert diagnostic.format().startswith(f"{diagnostic.path}:4:5: ")


# --- JMESPath diagnostics ------------------------------------------------------------------------

BROKEN_SELECTORS = """\
response:
  part:
    text: foo bar
    thinking: "foo[?a ==]"
    refusal: 'a ||'
    tool_calls: "choices[0].delta["
  tool_call:
    key: foo..bar
    id: |-
      choices[0]
        .delta[
"""

# (key path, line, col, lex position)
JMESPATH_SPOTS = [
    (("response", "part", "text"), 3, 15, 4),  # plain: col + lex_position
    (("response", "part", "thinking"), 4, 25, 9),  # quoted: + 1 for the quote
    (("response", "part", "refusal"), 5, 19, 4),
    (("response", "part", "tool_calls"), 6, 35, 17),
    (("response", "tool_call", "key"), 8, 14, 4),
    (("response", "tool_call", "id"), 11, 16, 20),  # block: the text's own line and column
]


def test_jmespath_parse_errors_compose_the_lex_position(tmp_path: Path) -> None:
    rule_set = load_one(tmp_path, BROKEN_SELECTORS)
    for key_path, line, col, lex_position in JMESPATH_SPOTS:
        ctx = CompileContext(rule_set, NAMES)
        node: Any = rule_set.data
        for part in key_path:
            node = node[part]
        selector = compile_selector(node, key_path, ctx)
        (diagnostic,) = ctx.diagnostics
        assert (diagnostic.line, diagnostic.col, diagnostic.code) == (line, col, DiagnosticCode.BAD_SELECTOR), \
            key_path
        assert diagnostic.message.startswith("invalid JMESPath: ")
        assert diagnostic.detail == f"  {node}\n  {' ' * lex_position}^"
        assert selector({"a": 1}) is None


def test_unknown_jmespath_function_with_a_suggestion(tmp_path: Path) -> None:
    rule_set = load_one(tmp_path, """\
        response:
          part:
            text: "choices[0].message.content || json_decod(x)"
            thinking: sort_by(a, &b) | lenght(@)
            refusal: zzzzzzzz(@)
    """)
    ctx = CompileContext(rule_set, NAMES)
    for key in ("text", "thinking", "refusal"):
        compile_selector(rule_set.data["response"]["part"][key], ("response", "part", key), ctx)
    assert spots(ctx) == [
        (3, 42, DiagnosticCode.UNKNOWN_FUNCTION, "unknown function 'json_decod' (did you mean 'json_decode'?)"),
        (4, 32, DiagnosticCode.UNKNOWN_FUNCTION, "unknown function 'lenght' (did you mean 'length'?)"),
        (5, 14, DiagnosticCode.UNKNOWN_FUNCTION, "unknown function 'zzzzzzzz'"),
    ]


@pytest.mark.parametrize(
    ("expression", "col", "message"),
    [
        ("length(a, b)", 10, "function 'length' takes 1 argument(s), got 2"),
        ("a.join(',')", 12, "function 'join' takes 2 argument(s), got 1"),
        ("short_name()", 10, "function 'short_name' takes 1 argument(s), got 0"),
    ],
)
def test_wrong_arity_is_a_bad_selector(tmp_path: Path, expression: str, col: int, message: str) -> None:
    rule_set = load_one(tmp_path, f"errors:\n  code: \"{expression}\"\n")
    ctx = CompileContext(rule_set, NAMES)
    compile_selector(expression, ("errors", "code"), ctx)
    assert spots(ctx) == [(2, col, DiagnosticCode.BAD_SELECTOR, message)]


def test_variadic_functions_accept_their_optional_argument(tmp_path: Path) -> None:
    rule_set = load_one(tmp_path, "errors:\n  code: x\n")
    ctx = CompileContext(rule_set, NAMES)
    select = compile_selector("[short_name(a), short_name(a, `12`), text_of(b, ' ')]", ("errors", "code"), ctx)
    assert ctx.diagnostics == []
    blocks = [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]
    assert select({"a": "tool", "b": blocks}) == ["tool", "tool", "x y"]


# --- selectors: the fast path --------------------------------------------------------------------

KEYS = ("a", "b", "c")


def random_document(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 4 and roll < 0.4:
        return {key: random_document(rng, depth + 1) for key in rng.sample(KEYS, rng.randint(0, 3))}
    if depth < 4 and roll < 0.7:
        return [random_document(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return rng.choice([None, 0, 1, True, False, "", "abc", 2.5, [], {}])


def random_path(rng: random.Random) -> str:
    """A plain JMESPath path: fields (one quoted) and indexes, e.g. ``a[0]."quoted key"[-1]``."""
    text = ""
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.35:
            text += f"[{rng.randint(-3, 3)}]"
        else:
            name = rng.choice((*KEYS, "d", '"quoted key"'))
            text += f".{name}" if text else name
    return text


def test_random_path_builds_valid_jmespath() -> None:
    rng = random.Random(7)
    for _ in range(500):
        jmespath.compile(random_path(rng))


def test_fast_path_selectors_agree_with_jmespath(tmp_path: Path) -> None:
    """Plain paths and multiselects of plain paths skip the interpreter; they must not change results."""
    rule_set = load_one(tmp_path, "errors:\n  code: x\n")
    ctx = CompileContext(rule_set, NAMES)
    rng = random.Random(20260101)
    documents = [random_document(rng) for _ in range(300)] + [None, [], {}, "a", 3]
    for _ in range(250):
        expressions = [random_path(rng)]
        expressions.append(f"[{expressions[0]}, {random_path(rng)}]")
        for expression in expressions:
            select = compile_selector(expression, ("errors", "code"), ctx)
            assert select.__name__ != "select", f"{expression} should take the fast path"
            reference = jmespath.compile(expression)
            for document in documents:
                assert select(document) == reference.search(document, JMESPATH_OPTIONS), (expression, document)
    assert ctx.diagnostics == []


@pytest.mark.parametrize(
    ("expression", "document", "expected"),
    [
        ("a.b", {"a": {"b": 1}}, 1),
        ("a.b", {"a": [1]}, None),
        ("a[0]", {"a": "abc"}, None),
        ("a[-1]", {"a": [1, 2]}, 2),
        ("a[5]", {"a": [1, 2]}, None),
        ("[0].a", [{"a": 1}], 1),
        ("a[0][1]", {"a": [[1, 2]]}, 2),
        ("[1][0].b", [[0], [{"b": 5}]], 5),
        ("[a, b.c]", None, None),
        ("[a, b.c]", "text", [None, None]),
        ("[a, b.c]", {"a": 1, "b": {"c": 2}}, [1, 2]),
        ('"quoted key".x', {"quoted key": {"x": 1}}, 1),
    ],
)
def test_fast_path_examples(tmp_path: Path, expression: str, document: Any, expected: Any) -> None:
    rule_set = load_one(tmp_path, "errors:\n  code: x\n")
    select: Selector = compile_selector(expression, ("errors", "code"), CompileContext(rule_set, NAMES))
    assert select(document) == expected == jmespath.search(expression, document)


def test_other_selectors_use_the_engine_functions(tmp_path: Path) -> None:
    rule_set = load_one(tmp_path, "errors:\n  code: x\n")
    ctx = CompileContext(rule_set, NAMES)
    select = compile_selector("json_decode(a).k || `\"none\"`", ("errors", "code"), ctx)
    assert select({"a": '{"k": 5}'}) == 5
    assert select({"a": "broken"}) == "none"


def test_selector_runtime_error_names_the_rule_position(tmp_path: Path) -> None:
    rule_set = load_one(tmp_path, "errors:\n  code: \"length(a)\"\n")
    select = compile_selector("length(a)", ("errors", "code"), CompileContext(rule_set, NAMES))
    assert select({"a": "abc"}) == 3
    with pytest.raises(RuleRuntimeError, match=r"^selector .*t\.yaml:2:9 failed: ") as caught:
        select({"a": 5})
    assert caught.value.status == 500


# --- Jinja plain paths: the fast path ------------------------------------------------------------


def jinja_path(rng: random.Random) -> str:
    parts = ["x"]
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if roll < 0.3:
            parts.append(f"[{rng.randint(-3, 3)}]")
        elif roll < 0.5:
            parts.append(f"['{rng.choice(KEYS)}']")
        else:
            parts.append(f".{rng.choice((*KEYS, 'd'))}")
    return "".join(parts)


@pytest.mark.parametrize(
    ("expression", "x", "expected"),
    [
        ("{{ x[0] }}", "abc", "a"),
        ("{{ x[-1] }}", [1, 2], 2),
        ("{{ x.a[1].b }}", {"a": [None, {"b": 3}]}, 3),
        ("{{ x['a'] }}", {"a": 1}, 1),
        ("{{ x.a.b }}", {"a": "text"}, None),
        ("{{ x[0] }}", {"0": 1}, None),
        ("{{ x[5] }}", [1], None),
    ],
)
def test_jinja_plain_path_examples(tmp_path: Path, expression: str, x: Any, expected: Any) -> None:
    assert run(template(tmp_path, f'"{expression}"'), x=x) == expected


def test_jinja_plain_paths_agree_with_jinja(tmp_path: Path) -> None:
    """``{{ x.a[0] }}`` skips Jinja; the same path inside a larger expression goes through Jinja."""
    rule_set = load_one(tmp_path, "request:\n  url: x\n")
    ctx = CompileContext(rule_set, NAMES)
    rng = random.Random(99)
    documents = [random_document(rng) for _ in range(200)] + [None, "abc", [1, 2, 3]]
    for _ in range(300):
        path = jinja_path(rng)
        fast = compile_expression(f"{{{{ {path} }}}}", ("request", "url"), ctx)
        slow = compile_expression(f"{{{{ {path} if true else none }}}}", ("request", "url"), ctx)
        assert slow.__name__ == "guarded"
        assert fast.__name__ == ("guarded" if "-" in path else "get"), "negative indexes are not plain"
        for document in documents:
            assert fast({"x": document}) == slow({"x": document}), (path, document)
    assert ctx.diagnostics == []


# --- runtime errors ------------------------------------------------------------------------------


def test_runtime_error_in_an_expression_names_the_rule_position(tmp_path: Path) -> None:
    ctx, compiled = compile_file(tmp_path, """\
        templates:
          t:
            ok: 1
            ratio: "{{ x.a / x.b }}"
          text: "ratio {{ x.a / x.b }}"
    """)
    assert ctx.diagnostics == []
    assert run(compiled["t"], x={"a": 1, "b": 2}) == {"ok": 1, "ratio": 0.5}
    with pytest.raises(RuleRuntimeError) as caught:
        run(compiled["t"], x={"a": 1, "b": 0})
    assert caught.value.message.startswith(f"rule {ctx.rule_set.path}:4:12 failed: ZeroDivisionError")
    assert caught.value.status == 500
    assert caught.value.error_type == "api_error"
    with pytest.raises(RuleRuntimeError, match=r"t\.yaml:5:9 failed: ZeroDivisionError"):
        run(compiled["text"], x={"a": 1, "b": 0})


def test_fail_raises_a_request_error_that_is_not_wrapped(tmp_path: Path) -> None:
    ctx, compiled = compile_file(tmp_path, """\
        templates:
          expression: "{{ fail('model ' ~ x ~ ' does not accept images') }}"
          text: "prefix {{ fail('no ' ~ x) }}"
          nested: [{$if: "x == 'bad'", then: "{{ fail('bad value') }}", else: ok}]
    """)
    assert ctx.diagnostics == []
    with pytest.raises(RequestError) as caught:
        run(compiled["expression"], x="gpt-3.5")
    assert type(caught.value) is RequestError
    assert caught.value.message == "model gpt-3.5 does not accept images"
    assert (caught.value.status, caught.value.error_type) == (400, "invalid_request_error")
    with pytest.raises(RequestError, match=r"^no thing$"):
        run(compiled["text"], x="thing")
    with pytest.raises(RequestError, match=r"^bad value$"):
        run(compiled["nested"], x="bad")
    assert run(compiled["nested"], x="good") == ["ok"]


def test_a_fragment_that_did_not_compile_fails_if_it_ever_runs(tmp_path: Path) -> None:
    ctx, compiled = compile_file(tmp_path, "templates:\n  t: {a: \"{{ x + }}\", b: \"{{ nobody }}\"}\n")
    assert len(ctx.diagnostics) == 2
    with pytest.raises(RuleRuntimeError, match=r"t\.yaml:2:\d+ did not compile"):
        run(compiled["t"], x=1)


# --- helpers -------------------------------------------------------------------------------------


def test_bound_names_collects_as_let_and_with() -> None:
    data = {"a": {"$each": "x", "as": "msg", "do": {"$let": {"blocks": 1, "text": 2}, "in": 1}},
            "b": [{"$use": "t", "with": {"image": 1}}, {"$each": "y"}]}
    assert bound_names(data) == {"msg", "blocks", "text", "image", "item"}


def test_environment_has_the_engine_filters() -> None:
    for name in ("json_encode", "json_decode", "strip_keys", "short_name", "text_of", "blocks", "data_url",
                 "effort_from_budget"):
        assert name in ENVIRONMENT.filters
