"""Names are checked by lexical scope: a name is known only where the section provides it or an
enclosing binding form (`$each ... as`, `$let`, `$use ... with`, a named template's call site) binds
it, never because some other part of the file binds the same name.

Each rule file is written under `tmp_path` and compiled as a provider (`compile_rule_set`), so the
scope is the one a request runs with and positions are real (line, column of the name itself).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ccproxy_engine._compiler import compile_rule_set
from ccproxy_engine._errors import DiagnosticCode
from ccproxy_engine._loader import load_rules

Spot = tuple[int, int, str]

HEAD = """\
request:
  url: https://x.test
"""


def problems(tmp_path: Path, text: str) -> list[Spot]:
    """(line, col, message) of every diagnostic of a rule file that is `HEAD` + `text`."""
    path = tmp_path / "t.yaml"
    path.write_text(HEAD + re.sub(r"^ {8}", "", text, flags=re.MULTILINE), encoding="utf-8")
    rule_sets, diagnostics = load_rules([path], include_builtin=False)
    assert diagnostics == []
    provider, found = compile_rule_set(rule_sets["t"])
    assert all(d.code is DiagnosticCode.BAD_TEMPLATE or d.code is DiagnosticCode.BAD_DIRECTIVE for d in found)
    assert (provider is None) == bool(found)
    return sorted((d.line, d.col, d.message + (d.detail or "").replace(f"{tmp_path}/", "")) for d in found)


def build(tmp_path: Path, text: str, **request: Any) -> Any:
    """The body a clean rule file builds for `request`."""
    path = tmp_path / "t.yaml"
    path.write_text(HEAD + re.sub(r"^ {8}", "", text, flags=re.MULTILINE), encoding="utf-8")
    rule_sets, _ = load_rules([path], include_builtin=False)
    provider, found = compile_rule_set(rule_sets["t"])
    assert provider is not None, [d.format() for d in found]
    return provider.build_request(request, model="m", provider_vars={"name": "t"}, stream=False).body


def test_each_binds_its_name_in_do_and_if_only(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
          body:
            ok: {$each: request.messages, as: msg, if: "msg.role", do: "{{ msg.role }}"}
            source: {$each: "msg.content", as: msg}
            after: "{{ msg }}"
    """) == [
        (5, 22, "unknown variable 'msg'"),  # the $each value is outside the binding
        (6, 16, "unknown variable 'msg'"),
    ]


def test_each_default_name_is_item(tmp_path: Path) -> None:
    assert build(tmp_path, """\
          body: {roles: {$each: request.messages, do: "{{ item.role }}"}}
    """, messages=[{"role": "user"}]) == {"roles": ["user"]}


def test_let_bindings_see_earlier_ones_only_and_end_with_in(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
          body:
            a:
              $let:
                early: "{{ late }}"
                late: 1
                sum: "{{ late + 1 }}"
              in: "{{ early ~ late ~ sum }}"
            b: "{{ sum }}"
    """) == [
        (6, 20, "unknown variable 'late'"),
        (10, 12, "unknown variable 'sum'"),
    ]


def test_sibling_branches_do_not_share_bindings(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
          body:
            - {$let: {x: 1}, in: "{{ x }}"}
            - {$if: true, then: "{{ x }}"}
            - $switch: request.model
              cases: {a: {$let: {y: 1}, in: "{{ y }}"}}
              default: "{{ y }}"
    """) == [
        (5, 29, "unknown variable 'x'"),
        (8, 20, "unknown variable 'y'"),
    ]


def test_a_named_template_sees_what_its_call_site_binds_and_passes(tmp_path: Path) -> None:
    text = """\
          body:
            roles: {$each: request.messages, as: msg, do: {$use: role}}
            model: {$use: shout, with: {word: "{{ request.model }}"}}
        templates:
          role: "{{ msg.role }}"
          shout: "{{ word | upper }}"
    """
    assert problems(tmp_path, text) == []
    assert build(tmp_path, text, model="m1", messages=[{"role": "user"}]) == {"roles": ["user"], "model": "M1"}


def test_a_call_site_that_binds_too_little_is_named_at_the_name_in_the_template(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
          body:
            good: {$each: request.messages, as: msg, do: {$use: role}}
            bad: {$use: role}
        templates:
          role: {$use: inner}
          inner: "{{ msg.role }}"
    """) == [
        # reported once, at the use, naming the outermost call that leaves it unbound
        (8, 14, "unknown variable 'msg'  not bound where template 'inner' is used, at t.yaml:7:10"),
    ]


def test_a_with_value_is_computed_in_the_callers_scope(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
          body: {$use: pair, with: {a: 1, b: "{{ a }}"}}
        templates:
          pair: "{{ a ~ b }}"
    """) == [(3, 42, "unknown variable 'a'")]


def test_a_typo_in_a_template_is_reported_once_whatever_its_callers(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
          body:
            - {$each: request.messages, as: msg, do: {$use: role}}
            - {$each: request.system, as: msg, do: {$use: role}}
        templates:
          role: "{{ mgs.role }}"
    """) == [(7, 13, "unknown variable 'mgs' (did you mean 'msg'?)  not bound where template 'role' is used, "
                     "at t.yaml:4:47")]


def test_an_unused_template_is_checked_against_the_names_the_file_binds(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
          body: {$each: request.messages, as: msg}
        templates:
          spare: "{{ msg.role }} {{ zzz }}"
    """) == [(5, 29, "unknown variable 'zzz'")]


def test_recursive_templates_are_checked_and_run(tmp_path: Path) -> None:
    text = """\
          body: {$use: depth, with: {node: "{{ request.tree }}"}}
        templates:
          depth:
            $if: node
            then: {$let: {below: {$use: depth, with: {node: "{{ node.child }}"}}}, in: "{{ 1 + below }}"}
            else: 0
    """
    assert problems(tmp_path, text) == []
    assert build(tmp_path, text, tree={"child": {"child": None}}) == 2


def test_tool_name_sees_name_and_model_only(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
          tool_name: "{{ name ~ model ~ request.model }}"
          body: {}
    """) == [(3, 33, "unknown variable 'request'")]


def test_a_misspelt_directive_key_hides_the_names_it_would_have_bound(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
          body:
            a: {$each: request.messages, ass: msg, do: "{{ msg.role }}"}
            b: {$let: {x: 1}, inn: "{{ x }}"}
            c: "{{ msg }}"
    """) == [
        (4, 34, "'ass' is not a key of $each (allowed: $each, as, do, if)"),
        (5, 23, "'inn' is not a key of $let (allowed: $let, in)"),
        (6, 12, "unknown variable 'msg'"),  # outside the broken directive: still reported
    ]


def test_jinja_statements_bind_their_own_names(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
          body: "{% for m in request.messages %}{{ m.role }}{% endfor %}{% set n = 1 %}{{ n }}"
    """) == []
    # the loop variable ends with the loop (Jinja gives no column: the name's first occurrence)
    assert problems(tmp_path, """\
          body: "{% for m in request.messages %}{% endfor %}{{ m }}"
    """) == [(3, 17, "unknown variable 'm'")]


def test_tool_id_sees_id_and_model_only(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
          tool_id: "{{ id ~ model ~ name }}"
          body: {id: "{{ tool_id('x') }}"}
    """) == [(3, 29, "unknown variable 'name'")]
