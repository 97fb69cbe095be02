"""Native closures agree with Jinja's own evaluation on every expression form the rules use."""

from __future__ import annotations

import random
from typing import Any

import jmespath
import pytest
from jinja2 import Undefined, nodes
from jinja2.parser import Parser

from ccproxy_engine._expressions import compile_jmespath, compile_native, compile_native_text
from ccproxy_engine._functions import JMESPATH_OPTIONS
from ccproxy_engine._template import ENVIRONMENT

EXPRESSIONS = [
    "request.max_tokens",
    "[request.max_tokens, caps.max_output or request.max_tokens] | min",
    "request.temperature if caps.sampling else none",
    "request.stop_sequences[:4] if request.stop_sequences and caps.sampling else none",
    "{'include_usage': true} if stream else none",
    "false if request.tools and request.tool_choice and request.tool_choice.disable_parallel_tool_use else none",
    "msg.content | text_of('\\n\\n')",
    "msg.content | blocks | selectattr('type', 'eq', 'text') | map(attribute='text') | join('')",
    "('Error: ' if block.is_error else '') ~ (block.content | text_of)",
    "block.type == 'tool_result' and block.content | blocks | rejectattr('type', 'eq', 'text') | list",
    "block.type != 'tool_result'",
    "not caps.vision",
    "request.messages[-1].role == 'assistant'",
    "block.text.startswith('x-')",
    "(request.output_config or {}).effort or 'medium'",
    "request.thinking.type if request.thinking else 'absent'",
    "request.metadata.user_id | short_name(64) if request.metadata and request.metadata.user_id else none",
    "1 < caps.max_output <= 100000",
    "request.max_tokens // 2 + 1 - -3",
    "block.content is string",
    "block.content is not defined",
    "'tool' in (block.type or '')",
    "{'a': [1, (2, 3)], 'b': request.model}",
    "request.missing.deeper | default('x')",
    "request.missing",
]


def random_scope(rng: random.Random) -> dict[str, Any]:
    def maybe(value: Any) -> Any:
        return value if rng.random() < 0.7 else None

    blocks = [{"type": "text", "text": "hi"}, {"type": "image", "source": {}}, {"type": "tool_result", "content": "x"}]
    content = rng.choice(["plain", [], rng.sample(blocks, k=rng.randint(1, 3)), None])
    optional = (("temperature", 0.5), ("stop_sequences", ["a", "b", "c", "d", "e"]), ("tools", [{}]),
                       ("tool_choice", {"type": "auto", "disable_parallel_tool_use": rng.random() < 0.5}),
                       ("metadata", {"user_id": "u" * rng.randint(1, 90)}), ("output_config", {"effort": "high"}),
                       ("thinking", {"type": "enabled"}),
                       ("messages", [{"role": rng.choice(["user", "assistant"]), "content": "c"}]))
    request: dict[str, Any] = {"model": "m", "max_tokens": rng.randint(1, 200000),
                               **{key: value for key, value in optional if rng.random() < 0.6}}
    return {
        "request": request, "stream": rng.random() < 0.5, "none": None, "true": True, "false": False,
        "caps": {"sampling": maybe(True), "vision": maybe(False), "max_output": maybe(rng.randint(1, 200000))},
        "msg": {"content": content},
        "block": {"type": rng.choice(["text", "tool_result", None]), "is_error": maybe(True), "content": content,
                  "text": rng.choice(["x-abc", "hello"])},
    }


def parse(text: str) -> nodes.Expr:
    return Parser(ENVIRONMENT, text, state="variable").parse_expression()


def jinja_value(text: str, scope: dict[str, Any]) -> Any:
    return ENVIRONMENT.compile_expression(text, undefined_to_none=False)(**scope)


def outcome(fn: Any) -> tuple[str, Any]:
    try:
        value = fn()
    except Exception as exc:
        return "error", type(exc).__name__
    if isinstance(value, Undefined):
        return "undefined", None
    return "value", value


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_native_matches_jinja_on_random_scopes(text: str) -> None:
    native = compile_native(parse(text), ENVIRONMENT)
    assert native is not None, f"{text} fell back to Jinja"
    rng = random.Random(text)
    for _ in range(200):
        scope = random_scope(rng)
        assert outcome(lambda s=scope: native(s)) == outcome(lambda s=scope: jinja_value(text, s)), (text, scope)


@pytest.mark.parametrize("text", ["x | default(*args)", "f(**kwargs)", "x | no_such_filter"])
def test_forms_it_does_not_cover_fall_back_to_jinja(text: str) -> None:
    assert compile_native(parse(text), ENVIRONMENT) is None


@pytest.mark.parametrize("text", [
    "Bearer {{ provider.api_key }}",
    "{{ provider.base_url }}/chat/completions",
    "Output of tool call {{ block.tool_use_id }}:",
    "{{ block.title }} ({{ block.source }})\n{{ block.content | text_of }}",
    "x{{ none }}y{{ missing.deep }}z{{ 3 + 4 }}",
])
def test_native_text_matches_jinja(text: str) -> None:
    native = compile_native_text(ENVIRONMENT.parse(text), ENVIRONMENT)
    assert native is not None
    rng = random.Random(text)
    for _ in range(50):
        scope = random_scope(rng)
        scope["provider"] = {"api_key": rng.choice(["sk-1", None]), "base_url": "http://x"}
        scope["block"] |= {"tool_use_id": rng.choice(["toolu_1", None]), "title": "T", "source": "s"}
        assert native(scope) == ENVIRONMENT.from_string(text).render(scope)


def test_text_with_statements_falls_back() -> None:
    assert compile_native_text(ENVIRONMENT.parse("{% if x %}a{% endif %}"), ENVIRONMENT) is None


SELECTORS = [
    "choices[0].delta.content", "[choices[0].delta]", "error || (object == 'error' && @ || `null`)",
    "reasoning_content || reasoning", "!thought && text", "thought && text", "a[1][0]", "a | [0]",
    "usage.prompt_tokens == `10`", "n > `0`", "n <= `0.5`", "n != `true`", "!n", "`{\"k\": [1]}`",
    "length(a)", "json_encode(a)", "integers(s)", "@",
    "{x: a, y: n}", "a.{x: k}", "n && [{i: n, t: text}]", "json_encode({k: s})",
    "object == 'error'", "text != 'x'", "text == `\"x\"`", "'x' == text", "n == ''",
]


def random_document(rng: random.Random) -> Any:
    atoms = [None, True, False, 0, 1, 0.5, -3, "", "x", "error", [], {}, [1, [2]], {"k": 1}]
    doc: dict[str, Any] = {}
    for key in ("choices", "error", "object", "reasoning_content", "reasoning", "thought", "text", "a",
                "usage", "n", "s"):
        if rng.random() < 0.7:
            doc[key] = rng.choice(atoms)
    if rng.random() < 0.5:
        doc["choices"] = [{"delta": {"content": rng.choice(atoms)}}]
    if rng.random() < 0.3:
        doc["usage"] = {"prompt_tokens": rng.choice([10, 10.0, True, None])}
    return rng.choice([doc, doc, doc, None, [doc], "text"])


@pytest.mark.parametrize("expression", SELECTORS)
def test_native_selectors_match_jmespath(expression: str) -> None:
    parsed = jmespath.compile(expression)
    native = compile_jmespath(parsed.parsed, JMESPATH_OPTIONS.custom_functions)
    assert native is not None, f"{expression} fell back to the interpreter"
    rng = random.Random(expression)
    for _ in range(300):
        data = random_document(rng)
        expected = outcome(lambda d=data: parsed.search(d, options=JMESPATH_OPTIONS))
        assert outcome(lambda d=data: native(d)) == expected, (expression, data)


@pytest.mark.parametrize("expression", ["a[*].b", "a[?b == `1`]", "a.*", "a[1:2]", "sort_by(a, &b)"])
def test_other_selectors_keep_the_interpreter(expression: str) -> None:
    assert compile_jmespath(jmespath.compile(expression).parsed, JMESPATH_OPTIONS.custom_functions) is None
