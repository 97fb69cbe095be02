"""The compiled yes/no schema check agrees with jsonschema, and `RequestValidator` keeps its messages."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from ccproxy_engine._errors import RequestError
from ccproxy_engine._fastcheck import UnsupportedSchemaError, compile_check
from ccproxy_engine._loader import load_schema
from ccproxy_engine._validation import RequestValidator

FIXTURES = Path(__file__).parent / "fixtures" / "claude-code"
SCHEMAS = ["anthropic.messages.schema.json", "anthropic.count_tokens.schema.json"]

#: Values a mutation puts anywhere in a body: every JSON type, the block and source tags the schema
#: dispatches on, edge numbers.
ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 1.0, 1.5, -0.5, 2, "", "x", "user", "tool", "enabled", "text", [], [1], {},
    {"type": "text"}, {"type": "text", "text": 3}, {"type": "image"}, {"type": "image", "source": {"type": "url"}},
    {"type": "tool_use", "id": "t", "name": "n", "input": []}, {"type": "tool_result"},
    {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "thinking"}]},
    {"type": "document", "source": {"type": "base64", "media_type": "a"}}, {"type": 5}, {"text": "no type"},
    {"type": "thinking", "thinking": "t", "signature": 1}, {"role": "user", "content": "hi"},
]


def claude_code_bodies() -> list[dict[str, Any]]:
    bodies = []
    for path in sorted(FIXTURES.rglob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("body"), dict):
            bodies.append(data["body"])
    return bodies


def small_body() -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True, "temperature": 0.5, "top_p": 1,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                      "data": "AAAA"}}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                              {"type": "tool_use", "id": "t1", "name": "Read", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": False,
                                          "content": [{"type": "text", "text": "ok"}]}]},
        ],
        "tools": [{"name": "Read", "description": "read", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "Read"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "metadata": {"user_id": None},
        "stop_sequences": ["\n\nHuman:"],
    }


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every location inside `value` (dict keys and list indexes), the root excluded."""
    found = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found.append((*prefix, key))
        found.extend(paths(child, (*prefix, key)))
    return found


def mutate(body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """`body` with one to three random changes: a value replaced, a key removed, or a key added."""
    mutated = copy.deepcopy(body)
    for _ in range(rng.randint(1, 3)):
        where = rng.choice(paths(mutated))
        parent = mutated
        for key in where[:-1]:
            parent = parent[key]
        action = rng.random()
        if action < 0.2 and isinstance(parent, dict):
            del parent[where[-1]]
        elif action < 0.3 and isinstance(parent[where[-1]], dict):
            key = rng.choice(["type", "text", "source", "content", "name", "role"])
            parent[where[-1]][key] = rng.choice(ODD_VALUES)
        else:
            parent[where[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
    return mutated


@pytest.mark.parametrize("name", SCHEMAS)
def test_valid_claude_code_requests_pass(name: str) -> None:
    check = compile_check(load_schema(name))
    bodies = [*claude_code_bodies(), small_body()]
    assert len(bodies) > 5
    for body in bodies:
        assert jsonschema.Draft202012Validator(load_schema(name)).is_valid(body)
        assert check(body) is True


@pytest.mark.parametrize("name", SCHEMAS)
def test_agrees_with_jsonschema_on_mutated_requests(name: str) -> None:
    schema = load_schema(name)
    check, reference = compile_check(schema), jsonschema.Draft202012Validator(schema)
    rng = random.Random(12)
    small = small_body()
    seeds = [small, *(b for b in claude_code_bodies() if len(json.dumps(b)) < 20_000)]
    outcomes = set()
    for index in range(1500):
        body = mutate(seeds[index % len(seeds)], rng)
        expected = reference.is_valid(body)
        outcomes.add(expected)
        assert check(body) is expected, json.dumps(body)[:2000]
    assert outcomes == {True, False}  # the mutations reach both answers


SMALL_SCHEMA: dict[str, Any] = {
    "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"},
                                                        "n": {"type": ["integer", "null"], "maximum": 3}}}},
    "anyOf": [
        {"type": "string", "minLength": 2},
        {"$ref": "#/$defs/node"},
        {"type": "array", "minItems": 1, "items": {"enum": [1, "a", None, [1], {"k": True}]}},
        {"type": "number", "minimum": 10, "const": 10.0},
    ],
    "if": {"type": "object", "required": ["n"]}, "then": {"required": ["next"]},
    "else": {"type": ["string", "array", "number", "object"]},
    "allOf": [{"if": {"properties": {"kind": {"const": "a"}}}, "then": {"required": ["a"]}},
              {"if": {"properties": {"kind": {"const": "b"}}}, "then": {"properties": {"b": {"type": "boolean"}}}}],
}
SMALL_VALUES: list[Any] = [
    None, True, 1, 1.0, 10, 10.0, 11, "", "ab", [], [1], [1.0], [True], ["a", None], [[1]], [[1.0]], [{"k": True}],
    [{"k": 1}], {}, {"n": 1}, {"n": 1, "next": {}}, {"n": 4, "next": {}}, {"n": 1.0, "next": {"n": True}},
    {"n": None, "next": {"next": {"n": 5}}}, {"kind": "a"}, {"kind": "a", "a": 0}, {"kind": "b", "b": 1},
    {"kind": "b", "b": False}, {"kind": 1}, {"kind": ["a"]}, {"a": 1}, {"b": "x"},
]


def test_agrees_with_jsonschema_on_each_keyword() -> None:
    check, reference = compile_check(SMALL_SCHEMA), jsonschema.Draft202012Validator(SMALL_SCHEMA)
    results = [check(value) for value in SMALL_VALUES]
    assert results == [reference.is_valid(value) for value in SMALL_VALUES]
    assert True in results and False in results


def test_if_then_on_a_missing_discriminator_applies_every_then() -> None:
    """``if: {properties: {type: {const: x}}}`` holds when ``type`` is absent (JSON Schema's rule)."""
    schema = {"allOf": [{"if": {"properties": {"type": {"const": "a"}}}, "then": {"required": ["x"]}},
                        {"if": {"properties": {"type": {"const": "b"}}}, "then": {"required": ["y"]}}]}
    check, reference = compile_check(schema), jsonschema.Draft202012Validator(schema)
    for value in [{}, {"x": 1}, {"x": 1, "y": 2}, {"type": "a", "x": 1}, {"type": "b"}, {"type": "c"}, 3]:
        assert check(value) is reference.is_valid(value), value


@pytest.mark.parametrize("schema", [{"pattern": "a"}, {"properties": {"a": {"not": {}}}},
                                    {"$ref": "https://example.com/s.json"}, {"type": "decimal"}])
def test_unsupported_schemas_fail_at_compile_time(schema: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedSchemaError):
        compile_check(schema)


MODEL = "claude-sonnet-4-5"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
         "body: 'max_tokens' is a required property"),
        ({"model": MODEL, "max_tokens": 64, "messages": [{"role": "bot", "content": "Hi"}]},
         "messages.0.role: 'bot' is not one of ['user', 'assistant', 'system']"),
        ({"model": MODEL, "max_tokens": 64, "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "name": "get_weather", "input": {}}]}]},
         "messages.1.content.0: 'id' is a required property"),
        ({"model": MODEL, "max_tokens": "many", "messages": [{"role": "user", "content": "Hi"}]},
         "max_tokens: 'many' is not of type 'integer'"),
        ({"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
         "messages.0.content.0.text: 5 is not of type 'string'"),
        ({"model": MODEL, "max_tokens": 1, "messages": [], "thinking": {"type": "enabled"}},
         "thinking: 'budget_tokens' is a required property"),
    ],
)
def test_request_checker_names_the_field_like_the_engine(body: dict[str, Any], message: str) -> None:
    checker = RequestValidator("anthropic.messages.schema.json")
    with pytest.raises(RequestError) as caught:
        checker.check(body)
    assert caught.value.message == message


def test_request_checker_accepts_valid_and_rejects_non_objects() -> None:
    checker = RequestValidator("anthropic.messages.schema.json")
    assert checker.check(small_body()) is None
    with pytest.raises(RequestError, match="must be a JSON object"):
        checker.check([1, 2])


OPENAI_CHAT_BODIES: list[dict[str, Any]] = [
    {"model": "gpt-4.1", "messages": [{"role": "user", "content": "Hi"}]},
    {"model": "m", "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 50, "n": 1,
     "stop": ["a", "b"], "temperature": 0.5, "messages": [
         {"role": "system", "content": "be brief"}, {"role": "developer", "content": [{"type": "text", "text": "x"}]},
         {"role": "user", "content": [{"type": "text", "text": "look"},
                                      {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
         {"role": "assistant", "content": None, "tool_calls": [
             {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "call_1", "content": "ok"}],
     "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
     "tool_choice": "auto"},
]


def test_the_openai_chat_schema_agrees_with_jsonschema() -> None:
    """Every value of the OpenAI bodies replaced, one at a time, by each odd value."""
    schema = load_schema("openai.chat.schema.json")
    check, reference = compile_check(schema), jsonschema.Draft202012Validator(schema)
    outcomes = set()
    for body in OPENAI_CHAT_BODIES:
        assert reference.is_valid(body) and check(body) is True
        for variant in _replacements(body):
            expected = reference.is_valid(variant)
            outcomes.add(expected)
            assert check(variant) is expected, json.dumps(variant)[:2000]
    assert outcomes == {True, False}


def _replacements(value: Any) -> list[Any]:
    """Copies of `value` with one nested value replaced by one of `ODD_VALUES`."""
    out: list[Any] = []
    if isinstance(value, dict):
        for key, item in value.items():
            out += [{**value, key: copy.deepcopy(odd)} for odd in ODD_VALUES]
            out += [{**value, key: variant} for variant in _replacements(item)]
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += [[*value[:index], copy.deepcopy(odd), *value[index + 1:]] for odd in ODD_VALUES]
            out += [[*value[:index], variant, *value[index + 1:]] for variant in _replacements(item)]
    return out
