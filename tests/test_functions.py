"""The function library: each function's behaviour, and every documented example on every side."""

from __future__ import annotations

import copy
import hashlib
import re
import time
from pathlib import Path
from typing import Any

import jinja2
import jmespath
import orjson
import pytest
from jmespath import exceptions as jp_exceptions
from jmespath import functions as jp_functions

from ccproxy_engine._functions import (
    CATEGORIES,
    FUNCTIONS,
    ID_LENGTH,
    JINJA_FILTERS,
    JINJA_GLOBALS,
    JMESPATH_OPTIONS,
    EngineFunctions,
    FunctionDoc,
    blocks,
    data_url,
    decode_signature,
    deterministic_ids,
    effort_from_budget,
    encode_signature,
    is_engine_signature,
    json_decode,
    json_encode,
    merge_turns,
    new_id,
    openapi_schema,
    render_reference_markdown,
    set_id_source,
    short_id,
    short_name,
    strip_keys,
    text_of,
    tool_names_by_id,
    with_previous,
)

FIXTURES = Path(__file__).parent / "fixtures" / "claude-code"
BASE62 = re.compile(r"[0-9A-Za-z]+")
VALID_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def search(expression: str, data: Any = None) -> Any:
    return jmespath.compile(expression).search(data, options=JMESPATH_OPTIONS)


@pytest.fixture
def jinja_env() -> jinja2.Environment:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters.update(JINJA_FILTERS)
    env.globals.update(JINJA_GLOBALS)
    return env


def render(env: jinja2.Environment, expression: str, **scope: Any) -> Any:
    return env.compile_expression(expression)(**scope)


# -- the registry and the documented examples ------------------------------------------------------


def example_cases() -> list[tuple[str, str, FunctionDoc, int]]:
    cases = []
    for doc in FUNCTIONS.values():
        for i, _ in enumerate(doc.examples):
            if doc.in_jmespath:
                cases.append((f"{doc.name}[{i}]-jmespath", "jmespath", doc, i))
            if doc.in_jinja:
                cases.append((f"{doc.name}[{i}]-jinja", "jinja", doc, i))
    return cases


@pytest.mark.parametrize(("side", "doc", "index"), [c[1:] for c in example_cases()],
                         ids=[c[0] for c in example_cases()])
def test_every_documented_example_holds(side: str, doc: FunctionDoc, index: int,
                                        jinja_env: jinja2.Environment) -> None:
    example = doc.examples[index]
    with deterministic_ids():
        if side == "jmespath":
            result = search(doc.jmespath_expression(example))
        else:
            result = render(jinja_env, doc.jinja_expression(example))
    assert result == example.output
    assert type(result) is type(example.output)


def test_registry_matches_what_is_installed() -> None:
    builtins = set(jp_functions.Functions.FUNCTION_TABLE)
    custom = set(EngineFunctions.FUNCTION_TABLE) - builtins
    assert {name for name, doc in FUNCTIONS.items() if doc.in_jmespath} == custom
    jinja_docs = {name: doc.jinja_form for name, doc in FUNCTIONS.items() if doc.in_jinja}
    assert {n for n, form in jinja_docs.items() if form == "filter"} == set(JINJA_FILTERS)
    assert {n for n, form in jinja_docs.items() if form == "global"} == set(JINJA_GLOBALS)


def test_no_engine_function_shadows_a_builtin() -> None:
    for name in jp_functions.Functions.FUNCTION_TABLE:
        assert EngineFunctions.FUNCTION_TABLE[name]["function"] is \
            jp_functions.Functions.FUNCTION_TABLE[name]["function"]


def test_every_doc_is_complete() -> None:
    for doc in FUNCTIONS.values():
        assert doc.category in CATEGORIES
        assert doc.examples, doc.name
        assert doc.description.endswith("."), doc.name
        assert doc.signature.startswith(f"{doc.name}(")
        for example in doc.examples:
            assert doc.min_args <= len(example.args) <= doc.max_args, doc.name


@pytest.mark.parametrize("name", [n for n, d in FUNCTIONS.items() if d.in_jmespath])
def test_jmespath_arity_follows_the_documented_parameters(name: str) -> None:
    doc = FUNCTIONS[name]
    too_few = ", ".join(["'x'"] * (doc.min_args - 1))
    too_many = ", ".join(["'x'"] * (doc.max_args + 1))
    if doc.min_args:
        with pytest.raises(jp_exceptions.ArityError):
            search(f"{name}({too_few})")
    with pytest.raises((jp_exceptions.ArityError, jp_exceptions.JMESPathTypeError)):
        search(f"{name}({too_many})")


def test_reference_shows_every_example_by_category() -> None:
    markdown = render_reference_markdown()
    headings = [line[4:] for line in markdown.splitlines() if line.startswith("### ")]
    assert headings == list(CATEGORIES)
    for doc in FUNCTIONS.values():
        section = markdown.split(f"#### `{doc.name}`\n", 1)[1].split("\n#### ", 1)[0]
        assert doc.signature in section
        assert doc.description in section
        for example in doc.examples:
            if doc.in_jmespath:
                assert f"# In:  {doc.jmespath_expression(example)}\n" in section
            if doc.in_jinja:
                assert f"# In:  {{{{ {doc.jinja_expression(example)} }}}}\n" in section
            assert f"# Out: {json_encode(example.output)}\n" in section


def test_reference_escapes_pipes_in_parameter_tables() -> None:
    lines = render_reference_markdown().splitlines()
    row = next(line for line in lines if line.startswith("| `budget_tokens`"))
    assert row.count(" | ") == 3
    assert "number \\| null" in row


# -- JSON ------------------------------------------------------------------------------------------


def test_json_encode_is_compact_keeps_non_ascii_and_key_order() -> None:
    assert json_encode({"z": 1, "a": "é"}) == '{"z":1,"a":"é"}'
    assert search("json_encode(@)", {"z": [1, 2], "a": None}) == '{"z":[1,2],"a":null}'


def test_json_encode_differs_from_builtin_to_string() -> None:
    assert search("to_string(@)", "x") == "x"
    assert search("json_encode(@)", "x") == '"x"'


@pytest.mark.parametrize("text", ["", "{", "{'a': 1}", "nul", '{"a": 1} trailing', "NaN"])
def test_json_decode_invalid_gives_none(text: str) -> None:
    assert json_decode(text) is None
    assert search("json_decode(@)", text) is None


def test_json_decode_non_text_gives_none() -> None:
    assert json_decode(None) is None
    assert json_decode(12) is None
    with pytest.raises(jp_exceptions.JMESPathTypeError):
        search("json_decode(@)", 12)


def test_json_decode_round_trips() -> None:
    value = {"path": "ü/ß", "n": [1, 2.5, True, None]}
    assert json_decode(json_encode(value)) == value
    assert json_decode(b'{"a": 1}') == {"a": 1}


# -- ids -------------------------------------------------------------------------------------------


def test_new_id_is_prefix_plus_24_base62() -> None:
    ids = {new_id("toolu_") for _ in range(2000)}
    assert len(ids) == 2000
    for value in ids:
        assert value.startswith("toolu_")
        assert len(value) == len("toolu_") + ID_LENGTH
        assert BASE62.fullmatch(value[len("toolu_"):])


def test_new_id_uses_every_base62_character() -> None:
    chars = set("".join(new_id("")[:ID_LENGTH] for _ in range(500)))
    assert len(chars) == 62


def test_new_id_from_many_threads_never_repeats_across_batch_refills() -> None:
    """Ids come from batches of one OS call each; threads drawing at once must not share one."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        batches = list(pool.map(lambda _: [new_id("msg_") for _ in range(500)], range(16)))
    ids = [i for batch in batches for i in batch]
    assert len(set(ids)) == len(ids) == 8000  # 8000 ids span ~50 batch refills
    assert all(BASE62.fullmatch(i[len("msg_"):]) and len(i) == len("msg_") + ID_LENGTH for i in ids)


def test_deterministic_ids_count_and_restore() -> None:
    with deterministic_ids():
        assert new_id("toolu_") == "toolu_000000000000000000000001"
        assert search("new_id('msg_')") == "msg_000000000000000000000002"
        with deterministic_ids():
            assert new_id("x") == "x000000000000000000000001"
        assert new_id("x") == "x000000000000000000000003"
    assert new_id("x") != "x000000000000000000000004"


def test_set_id_source_injects_and_none_restores() -> None:
    set_id_source(lambda n: "A" * n)
    try:
        assert new_id("p_") == "p_" + "A" * 24
    finally:
        set_id_source(None)
    assert new_id("p_") != "p_" + "A" * 24


# -- short_name ------------------------------------------------------------------------------------


def test_short_name_keeps_valid_names_unchanged() -> None:
    for name in ("Read", "mcp__github__create_issue", "a-b_c", "x" * 64):
        assert short_name(name) == name


def test_short_name_of_80_char_mcp_name() -> None:
    name = "mcp__" + "very-long-server-name__" + "a_tool_with_a_really_quite_long_descriptive_name_x"
    name = name.ljust(80, "z")
    assert len(name) == 80
    short = short_name(name)
    assert len(short) == 64
    assert VALID_NAME.fullmatch(short)
    assert short == name[:55] + "_" + hashlib.sha1(name.encode()).hexdigest()[:8]
    assert short_name(name) == short
    other = name[:-1] + "y"
    assert short_name(other) != short
    assert short_name(other)[:55] == short[:55]


def test_short_name_replaces_invalid_characters() -> None:
    assert short_name("mcp__srv__do.thing/now") == "mcp__srv__do_thing_now_3e1d8f09"
    assert short_name("héllo wörld") == "h_llo_w_rld_24e9f5c0"
    # names that differ only in invalid characters stay distinct, so they can be mapped back
    assert short_name("a.b") != short_name("a:b")
    assert short_name("") == "_"


def test_short_name_hashes_the_original_not_the_cleaned_name() -> None:
    a, b = "a." + "x" * 70, "a/" + "x" * 70
    assert short_name(a) != short_name(b)
    assert len(short_name(a)) == 64


def test_short_name_max_len() -> None:
    name = "n" * 50
    assert short_name(name, 40) == "n" * 31 + "_" + hashlib.sha1(name.encode()).hexdigest()[:8]
    assert search("short_name(@, `40`)", name) == short_name(name, 40)
    with pytest.raises(ValueError, match="at least 10"):
        short_name(name, 9)


def test_short_name_jmespath_checks_the_optional_argument() -> None:
    with pytest.raises(jp_exceptions.JMESPathTypeError):
        search("short_name('a', 'b')")
    with pytest.raises(jp_exceptions.ArityError):
        search("short_name('a', `64`, `1`)")


MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")


def test_short_id_hashes_any_other_id_to_exactly_length_alphanumerics() -> None:
    ids = ["toolu_01A09q90qw90lq917835lq9", "call_0", "", "é", "x" * 200, "abcdefgh", "abcdefghij", "abc_defgh"]
    for call_id in ids:
        short = short_id(call_id, 9)
        assert MISTRAL_ID.fullmatch(short), (call_id, short)
        assert short != call_id
    assert len({short_id(call_id, 9) for call_id in ids}) == len(ids)
    assert len(short_id("toolu_1", 40)) == 40


def test_short_id_is_deterministic_and_idempotent() -> None:
    once = short_id("toolu_01A09q90qw90lq917835lq9", 9)
    assert short_id("toolu_01A09q90qw90lq917835lq9", 9) == once
    assert short_id(once, 9) == once
    for issued in ("a1B2c3D4e", "000000000", "ZZZZZZZZZ"):
        assert short_id(issued, 9) == issued  # ids the provider issued come back unchanged


def test_short_id_agrees_on_both_sides(jinja_env: jinja2.Environment) -> None:
    for call_id in ("toolu_abc", "a1B2c3D4e"):
        assert search("short_id(@, `9`)", call_id) == short_id(call_id, 9)
        assert render(jinja_env, "i | short_id(9)", i=call_id) == short_id(call_id, 9)


def test_short_id_checks_its_arguments() -> None:
    for length in (0, 41):
        with pytest.raises(ValueError, match="between 1 and 40"):
            short_id("toolu_1", length)
    with pytest.raises(jp_exceptions.JMESPathTypeError):
        search("short_id(`1`, `9`)")
    with pytest.raises(jp_exceptions.ArityError):
        search("short_id('a')")


def test_with_previous_pairs_each_item_with_the_one_before() -> None:
    roles = [{"role": "tool"}, {"role": "user"}, {"role": "assistant"}]
    assert with_previous(roles) == [
        {"previous": None, "item": roles[0]},
        {"previous": roles[0], "item": roles[1]},
        {"previous": roles[1], "item": roles[2]},
    ]
    assert with_previous([1]) == [{"previous": None, "item": 1}]
    for not_a_list in (None, {}, "ab", 3):
        assert with_previous(not_a_list) == []


def test_with_previous_in_a_selector_and_a_template(jinja_env: jinja2.Environment) -> None:
    messages = [{"role": "tool"}, {"role": "user"}]
    assert search("with_previous(@)[?previous.role == 'tool'].item.role", messages) == ["user"]
    rendered = render(jinja_env, "messages | with_previous | map(attribute='previous') | list", messages=messages)
    assert rendered == [None, messages[0]]


# -- content ---------------------------------------------------------------------------------------


def test_text_of_keeps_only_text_blocks() -> None:
    content = [
        {"type": "text", "text": "a"},
        {"type": "thinking", "thinking": "secret", "signature": "s"},
        {"type": "image", "source": {"type": "url", "url": "u"}},
        {"type": "tool_result", "tool_use_id": "t", "content": "nested"},
        {"type": "text", "text": "b"},
        "not a block",
        {"type": "text"},
    ]
    assert text_of(content) == "a\nb"
    assert text_of(content, "") == "ab"
    assert search("text_of(@, '')", content) == "ab"
    assert text_of([]) == ""
    assert text_of(None) == ""
    assert text_of("as is\n") == "as is\n"


def test_text_of_in_a_jinja_template(jinja_env: jinja2.Environment) -> None:
    message = {"content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]}
    assert render(jinja_env, "message.content | text_of(' + ')", message=message) == "x + y"


def test_blocks_normalises_content(jinja_env: jinja2.Environment) -> None:
    listed = [{"type": "image", "source": {}}]
    assert blocks(listed) is listed
    assert blocks("s") == [{"type": "text", "text": "s"}]
    assert blocks("") == []
    assert blocks(None) == []
    template = "content | blocks | selectattr('type', 'eq', 'text') | map(attribute='text') | join(',')"
    assert render(jinja_env, template, content="hi") == "hi"


def test_data_url() -> None:
    assert data_url({"type": "base64", "media_type": "application/pdf", "data": "JVBE"}) == \
        "data:application/pdf;base64,JVBE"
    assert data_url({"type": "url", "url": "https://x/y.pdf"}) == "https://x/y.pdf"
    assert data_url({"type": "base64", "data": "JVBE"}) is None
    assert data_url({"type": "text", "media_type": "text/plain", "data": "hi"}) is None
    assert data_url(None) is None


# -- reasoning -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("budget", "effort"), [
    (0, "low"), (1024, "low"), (4095, "low"), (4096, "medium"), (16383, "medium"),
    (16384, "high"), (128000, "high"), (5000.5, "medium"), (None, None), (True, None), ("1024", None),
])
def test_effort_from_budget_buckets(budget: Any, effort: str | None) -> None:
    assert effort_from_budget(budget) == effort


def test_effort_from_budget_in_selector() -> None:
    body = {"thinking": {"type": "enabled", "budget_tokens": 20000}}
    assert search("effort_from_budget(thinking.budget_tokens)", body) == "high"
    assert search("effort_from_budget(thinking.budget_tokens)", {}) is None


def test_signature_envelope_round_trip() -> None:
    data = {"thoughtSignature": "Cs0BAVSoXO8+/=", "tool_use_id": "toolu_1", "list": [1, None]}
    signature = encode_signature("gemini", "gemini-3-pro", data)
    assert signature.startswith("ccpx1.")
    assert "=" not in signature
    assert re.fullmatch(r"ccpx1\.[A-Za-z0-9_-]+", signature)
    assert is_engine_signature(signature)
    assert decode_signature(signature, "gemini") == data
    assert search("decode_signature(@, 'gemini')", signature) == data


def test_signature_envelope_may_carry_null_data() -> None:
    signature = encode_signature("deepseek", None, None)
    assert is_engine_signature(signature)
    assert decode_signature(signature, "deepseek") is None


def test_decode_signature_rejects_other_provider() -> None:
    signature = encode_signature("gemini", "gemini-2.5-pro", "sig")
    assert decode_signature(signature, "openrouter") is None
    assert decode_signature(signature, "Gemini") is None


@pytest.mark.parametrize("signature", [
    # shape of a genuine Anthropic signature: standard base64 with padding
    "ErUBCkYIBRgCIkDkWmUoM3JzRxF7r1vP8mZy3u4N2m1hEMnXgFk8iM0nR0qPz7y3x2r1w0vU5tS4Q==",
    "mocksig_3f2a9c",
    "",
    "ccpx1.",
    "ccpx1.!!!",
    "ccpx1.e",
    "ccpx1." + "eyJwIjoiZ2VtaW5pIn0",  # {"p":"gemini"}: no data key
    "ccpx1.WzEsMl0",  # [1,2]: not an object
    "ccpx1.bm90IGpzb24",  # "not json"
    "ccpx2." + encode_signature("gemini", "m", "d")[6:],
    "xccpx1." + encode_signature("gemini", "m", "d")[6:],
])
def test_decode_signature_rejects_garbage(signature: str) -> None:
    assert decode_signature(signature, "gemini") is None
    assert not is_engine_signature(signature)


def test_signature_functions_take_any_input_without_raising() -> None:
    assert decode_signature(None, "gemini") is None
    assert not is_engine_signature(None)
    assert not is_engine_signature({"p": "gemini"})
    assert search("decode_signature(sig, 'gemini')", {}) is None


# -- strip_keys ------------------------------------------------------------------------------------

DEFAULT = {"format": "kept", "additionalProperties": 1}  # data, not schema: never stripped
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "format": {"type": "string", "format": "date-time"},
        "additionalProperties": {"type": "object", "additionalProperties": {"type": "string"}},
        "properties": {
            "type": "object",
            "properties": {"$schema": {"type": "string", "format": "uri"}},
            "additionalProperties": False,
        },
        "items": {
            "type": "array",
            "items": {"anyOf": [{"type": "string", "format": "uuid"}, {"type": "null"}]},
        },
        "mode": {"type": "string", "enum": ["a"], "default": DEFAULT},
    },
    "patternProperties": {"^format$": {"type": "string", "format": "email"}},
    "$defs": {"format": {"type": "object", "additionalProperties": True}},
    "required": ["format", "additionalProperties"],
}


def test_strip_keys_keeps_property_names_that_look_like_keywords() -> None:
    out = strip_keys(SCHEMA, ["$schema", "additionalProperties", "format"])
    assert out == {
        "type": "object",
        "properties": {
            "format": {"type": "string"},
            "additionalProperties": {"type": "object"},
            "properties": {"type": "object", "properties": {"$schema": {"type": "string"}}},
            "items": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
            "mode": {"type": "string", "enum": ["a"], "default": DEFAULT},
        },
        "patternProperties": {"^format$": {"type": "string"}},
        "$defs": {"format": {"type": "object"}},
        "required": ["format", "additionalProperties"],
    }


def test_strip_keys_removes_a_name_map_keyword_itself() -> None:
    assert strip_keys(SCHEMA, ["properties", "patternProperties", "$defs"]).keys() == {
        "$schema", "type", "additionalProperties", "required"}


def test_strip_keys_never_mutates_and_returns_new_objects() -> None:
    original = copy.deepcopy(SCHEMA)
    out = strip_keys(SCHEMA, ["nothing-matches"])
    assert original == SCHEMA
    assert out == SCHEMA
    assert out is not SCHEMA
    assert out["properties"] is not SCHEMA["properties"]
    assert out["properties"]["mode"]["default"] is not SCHEMA["properties"]["mode"]["default"]
    assert out["required"] is not SCHEMA["required"]


def test_strip_keys_on_plain_values_and_lists() -> None:
    assert strip_keys("x", ["a"]) == "x"
    assert strip_keys([{"a": 1, "b": {"a": 2}}], ["a"]) == [{"b": {}}]
    with pytest.raises(TypeError):
        strip_keys({"a": 1}, "a")


def test_strip_keys_sides_agree(jinja_env: jinja2.Environment) -> None:
    keys = ["additionalProperties", "$schema"]
    expected = strip_keys(SCHEMA, keys)
    assert search("strip_keys(schema, keys)", {"schema": SCHEMA, "keys": keys}) == expected
    assert render(jinja_env, "schema | strip_keys(keys)", schema=SCHEMA, keys=keys) == expected
    with pytest.raises(jp_exceptions.JMESPathTypeError):
        search("strip_keys(@, `[1]`)", SCHEMA)


def test_strip_keys_is_fast_on_claude_code_tools() -> None:
    paths = sorted(FIXTURES.glob("*/001.json"))
    tools = [t for p in paths for t in orjson.loads(p.read_bytes())["body"].get("tools", [])]
    assert len(tools) > 40
    keys = ["$schema", "additionalProperties", "propertyNames", "exclusiveMinimum"]
    start = time.perf_counter()
    for _ in range(10):
        for tool in tools:
            strip_keys(tool["input_schema"], keys)
    per_pass = (time.perf_counter() - start) / 10
    assert per_pass < 0.005
    cleaned = [strip_keys(t["input_schema"], keys) for t in tools]
    assert "additionalProperties" not in json_encode(cleaned)
    assert "$schema" not in json_encode(cleaned)


# -- turns and tool calls --------------------------------------------------------------------------


def test_merge_turns_merges_runs_and_drops_empty_turns() -> None:
    turns = [
        {"role": "user", "parts": [{"text": "a"}]},
        {"role": "model", "parts": []},
        {"role": "model"},
        {"role": "user", "parts": [{"text": "b"}, {"text": "c"}]},
        "not a turn",
        {"role": "model", "parts": [{"functionCall": {"name": "f"}}], "extra": 1},
        {"role": "model", "parts": [{"text": "d"}]},
    ]
    original = copy.deepcopy(turns)
    merged = merge_turns(turns, "role", "parts")
    assert merged == [
        {"role": "user", "parts": [{"text": "a"}, {"text": "b"}, {"text": "c"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "f"}}, {"text": "d"}], "extra": 1},
    ]
    assert turns == original, "the input is never modified"
    assert merge_turns(None, "role", "parts") == []


def test_merge_turns_sides_agree(jinja_env: jinja2.Environment) -> None:
    turns = [{"author": "a", "items": [1]}, {"author": "a", "items": [2]}, {"author": "b", "items": [3]}]
    expected = [{"author": "a", "items": [1, 2]}, {"author": "b", "items": [3]}]
    assert merge_turns(turns, "author", "items") == expected
    assert search("merge_turns(@, 'author', 'items')", turns) == expected
    assert render(jinja_env, "turns | merge_turns('author', 'items')", turns=turns) == expected


def test_tool_names_by_id_reads_assistant_tool_use_blocks_only() -> None:
    messages = [
        {"role": "user", "content": [{"type": "tool_use", "id": "toolu_user", "name": "Nope", "input": {}}]},
        {"role": "assistant", "content": "plain text"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "", "signature": "x"},
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}},
            {"type": "tool_use", "name": "NoId", "input": {}},
        ]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_2", "name": "Bash", "input": {}}]},
    ]
    assert tool_names_by_id(messages) == {"toolu_1": "Read", "toolu_2": "Bash"}
    assert search("tool_names_by_id(@)", messages) == {"toolu_1": "Read", "toolu_2": "Bash"}
    assert tool_names_by_id(None) == {} and tool_names_by_id(["x", 1]) == {}


# -- openapi_schema --------------------------------------------------------------------------------

#: What Gemini's `parameters` (an OpenAPI 3.0 Schema subset) takes; protocols.md 3.6.
GEMINI_KEYWORDS = ["type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
                   "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
                   "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum"]
GEMINI_FORMATS = ["enum", "date-time", "int32", "int64", "float", "double"]


def gemini(schema: Any) -> Any:
    return openapi_schema(schema, GEMINI_KEYWORDS, GEMINI_FORMATS)


def test_openapi_schema_null_types_and_branches_become_nullable() -> None:
    assert gemini({"type": ["string", "null"]}) == {"type": "string", "nullable": True}
    assert gemini({"type": "null"}) == {"nullable": True}
    assert gemini({"anyOf": [{"type": "integer"}, {"type": "null"}], "description": "n"}) == {
        "type": "integer", "nullable": True, "description": "n"}
    assert gemini({"type": ["string", "integer"]}) == {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    assert gemini({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}) == {
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}


def test_openapi_schema_wrapped_branch_keeps_the_outer_keywords() -> None:
    schema = {"anyOf": [{"type": "string", "description": "inner"}, {"type": "null"}], "description": "outer"}
    assert gemini(schema) == {"type": "string", "description": "outer", "nullable": True}


def test_openapi_schema_inlines_refs_and_cuts_cycles() -> None:
    schema = {
        "type": "object",
        "$defs": {
            "Mode": {"type": "string", "enum": ["a", "b"]},
            "Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}},
        },
        "definitions": {"Old": {"type": "integer"}},
        "properties": {
            "mode": {"$ref": "#/$defs/Mode", "description": "which"},
            "tree": {"$ref": "#/$defs/Node"},
            "old": {"$ref": "#/definitions/Old"},
            "remote": {"$ref": "https://example.com/schema.json"},
        },
    }
    assert gemini(schema) == {
        "type": "object",
        "properties": {
            "mode": {"type": "string", "enum": ["a", "b"], "description": "which"},
            "tree": {"type": "object", "properties": {"child": {"type": "object"}}},
            "old": {"type": "integer"},
            "remote": {"type": "object"},
        },
    }


def test_openapi_schema_merges_all_of() -> None:
    schema = {"allOf": [
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
        {"properties": {"b": {"type": "integer"}}, "required": ["b"]},
    ], "description": "both"}
    assert gemini(schema) == {"type": "object", "description": "both",
                              "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
                              "required": ["a", "b"]}


def test_openapi_schema_values_bounds_and_formats() -> None:
    assert gemini({"const": 3}) == {"enum": ["3"]}
    assert gemini({"type": "integer", "enum": [1, 2, None]}) == {"type": "integer", "enum": ["1", "2"],
                                                                 "nullable": True}
    assert gemini({"enum": [True, "x", 1.5]}) == {"enum": ["true", "x", "1.5"]}
    assert gemini({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}) == {
        "type": "integer", "minimum": 1, "maximum": 9}
    assert gemini({"type": "number", "exclusiveMinimum": 0.5, "minimum": 2}) == {"type": "number", "minimum": 2}
    assert gemini({"type": "number", "minimum": 0, "exclusiveMinimum": True}) == {"type": "number", "minimum": 0}
    assert gemini({"type": "string", "format": "uri"}) == {"type": "string"}
    assert gemini({"type": "string", "format": "date-time"}) == {"type": "string", "format": "date-time"}
    assert gemini({"type": "string", "examples": ["a", "b"]}) == {"type": "string", "example": "a"}
    assert gemini({"type": "array"}) == {"type": "array", "items": {}}
    assert gemini({"type": "array", "items": [{"type": "string"}, {"type": "integer"}]}) == {
        "type": "array", "items": {"type": "string"}}


def test_openapi_schema_required_names_only_declared_properties() -> None:
    assert gemini({"type": "object", "properties": {"a": {}}, "required": ["a", "b"]}) == {
        "type": "object", "properties": {"a": {}}, "required": ["a"]}
    assert gemini({"type": "object", "required": ["a"]}) == {"type": "object"}


def test_openapi_schema_keeps_property_names_that_look_like_keywords() -> None:
    schema = {"type": "object", "properties": {
        "format": {"type": "string", "format": "email", "default": {"format": 1, "const": 2}},
        "$ref": {"type": "string"},
        "-A": {"type": "number", "multipleOf": 2},
    }, "propertyNames": {"pattern": "^.*$"}, "additionalProperties": False, "$schema": "x"}
    assert gemini(schema) == {"type": "object", "properties": {
        "format": {"type": "string", "default": {"format": 1, "const": 2}},
        "$ref": {"type": "string"},
        "-A": {"type": "number"},
    }}


def test_openapi_schema_keeps_what_the_caller_asks_for() -> None:
    schema = {"type": "object", "additionalProperties": {"type": ["string", "null"]}, "title": "t"}
    assert openapi_schema(schema, ["type", "additionalProperties", "nullable"], []) == {
        "type": "object", "additionalProperties": {"type": "string", "nullable": True}}
    assert openapi_schema(True, ["type"], []) is True
    with pytest.raises(TypeError):
        openapi_schema({}, "type", [])


def test_openapi_schema_sides_agree(jinja_env: jinja2.Environment) -> None:
    expected = gemini(SCHEMA)
    scope = {"schema": SCHEMA, "keys": GEMINI_KEYWORDS, "formats": GEMINI_FORMATS}
    assert search("openapi_schema(schema, keys, formats)", scope) == expected
    assert render(jinja_env, "schema | openapi_schema(keys, formats)", **scope) == expected
    with pytest.raises(jp_exceptions.JMESPathTypeError):
        search("openapi_schema(@, `[1]`, `[]`)", SCHEMA)


def claude_code_tools() -> list[dict[str, Any]]:
    paths = sorted(FIXTURES.glob("*/001.json"))
    return [t for p in paths for t in orjson.loads(p.read_bytes())["body"].get("tools", [])]


REJECTED_BY_GEMINI = re.compile(r'"(\$schema|additionalProperties|propertyNames|exclusiveMinimum|'
                                r'exclusiveMaximum|const|allOf|oneOf|\$ref|\$defs|examples)"\s*:')


def test_openapi_schema_makes_claude_code_tools_valid_gemini_schemas() -> None:
    from google.genai import types

    tools = claude_code_tools()
    assert len(tools) > 40
    for tool in tools:
        original = copy.deepcopy(tool["input_schema"])
        converted = gemini(tool["input_schema"])
        assert tool["input_schema"] == original
        text = json_encode(converted)
        assert not REJECTED_BY_GEMINI.search(text), (tool["name"], text)
        types.Schema.model_validate_json(text)  # the google-genai SDK's own type (extra keys forbidden)
        declared = set(original.get("properties", {}))
        assert set(converted.get("properties", {})) == declared, tool["name"]


def test_openapi_schema_is_fast_on_claude_code_tools() -> None:
    tools = claude_code_tools()
    start = time.perf_counter()
    for _ in range(10):
        for tool in tools:
            gemini(tool["input_schema"])
    assert (time.perf_counter() - start) / 10 < 0.01
