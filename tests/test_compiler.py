"""The rule compiler: shipped rules compile clean, the OpenAI request chain, decoders and the error map.

Every upstream body the OpenAI rules build is checked against the `openai` SDK's request types twice:
pydantic validates the values (`CompletionCreateParams{Streaming,NonStreaming}`), and a walk over the
TypedDict annotations fails on any key the SDK does not declare (pydantic would drop it silently).
"""

from __future__ import annotations

import functools
import re
import textwrap
import types
import typing
from collections import abc
from pathlib import Path
from typing import Any

import orjson
import pytest
import typing_extensions as te
from openai.types.chat import completion_create_params
from pydantic import TypeAdapter

from ccproxy_engine._compiler import (
    CompiledRules,
    PreparedRequest,
    ResponseDecoder,
    compile_rules,
    expand_env,
    require_compiled,
)
from ccproxy_engine._config import ProviderSettings
from ccproxy_engine._endpoint import Endpoint
from ccproxy_engine._errors import DiagnosticCode, RequestError, RuleError, UpstreamStatusError
from ccproxy_engine._functions import decode_signature, short_id, short_name
from ccproxy_engine._loader import BUILTIN_RULES_DIR, RuleSet, load_rules, require_rules
from ccproxy_engine._stream import MessageBuilder, StreamMachine
from ccproxy_engine._types import (
    ErrorDelta,
    FinishDelta,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    UsageDelta,
)

PROVIDER = {"name": "openai", "base_url": "https://api.openai.com/v1", "api_key": "sk-test"}
CLIENT_MODEL = "claude-sonnet-4-5"
LONG_NAME = "mcp__acme-internal-knowledge-base__search_documents_by_semantic_similarity_v2"
PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
ANTHROPIC_ONLY = ("system", "stop_sequences", "thinking", "metadata", "top_k", "context_management",
                  "output_config", "service_tier", "container", "mcp_servers", "inference_geo")


def bound(rules: CompiledRules, name: str | None = None) -> Endpoint:
    """`rules` bound to a provider configured as `name` (default: the rule set's own name)."""
    return Endpoint(ProviderSettings(name=name or rules.name, rules=rules.name, base_url=None), rules, env={})


@pytest.fixture(scope="module")
def openai() -> CompiledRules:
    return require_compiled(require_rules())["openai"]


# --- checking bodies against the openai SDK ------------------------------------------------------


def _params_type(body: dict[str, Any]) -> Any:
    if body.get("stream") is True:
        return completion_create_params.CompletionCreateParamsStreaming
    return completion_create_params.CompletionCreateParamsNonStreaming


@functools.cache
def _adapter(params: Any) -> TypeAdapter[Any]:
    return TypeAdapter(params)


def _consume(value: Any) -> Any:
    """pydantic validates `Iterable[...]` fields lazily: iterate everything so every item is checked."""
    if isinstance(value, dict):
        return {key: _consume(item) for key, item in value.items()}
    if isinstance(value, list | tuple | abc.Iterator):
        return [_consume(item) for item in value]
    return value


def _unwrap(hint: Any) -> Any:
    while te.get_origin(hint) in (te.Required, te.NotRequired, te.Annotated):
        hint = te.get_args(hint)[0]
    return hint


@functools.cache
def _fields(typed_dict: Any) -> tuple[dict[str, Any], frozenset[str]]:
    """(key → type, required keys); `Required[...]` is read from the hints, which survive string annotations."""
    hints = te.get_type_hints(typed_dict, include_extras=True)
    required = {key for key, hint in hints.items()
                if te.get_origin(hint) is te.Required
                or (key in typed_dict.__required_keys__ and te.get_origin(hint) is not te.NotRequired)}
    return {key: _unwrap(hint) for key, hint in hints.items()}, frozenset(required)


def _fits(value: Any, hint: Any) -> bool:
    """Could `value` be of the union arm `hint`? Literal-typed keys (role, type) pick the TypedDict."""
    origin = te.get_origin(hint)
    if te.is_typeddict(hint):
        if not isinstance(value, dict):
            return False
        fields, required = _fields(hint)
        literal_ok = all(value[key] in te.get_args(kind) for key, kind in fields.items()
                         if key in value and te.get_origin(kind) is typing.Literal)
        return literal_ok and required <= value.keys()
    if origin in (list, abc.Iterable, abc.Sequence):
        return isinstance(value, list)
    if origin in (dict, abc.Mapping):
        return isinstance(value, dict)
    return not isinstance(value, dict | list)


def unknown_keys(value: Any, hint: Any, where: str) -> list[str]:
    """Every key in `value` that the SDK's TypedDicts do not declare, as a dotted path."""
    hint = _unwrap(hint)
    if te.is_typeddict(hint):
        if not isinstance(value, dict):
            return []
        fields, _ = _fields(hint)
        problems = [f"{where}.{key}" for key in value if key not in fields]
        for key, item in value.items():
            if key in fields:
                problems += unknown_keys(item, fields[key], f"{where}.{key}")
        return problems
    origin = te.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        results = [unknown_keys(value, arm, where) for arm in te.get_args(hint) if _fits(value, _unwrap(arm))]
        return min(results, key=len) if results else []
    if origin in (list, abc.Iterable, abc.Sequence) and isinstance(value, list):
        (item_hint,) = te.get_args(hint)
        return [problem for index, item in enumerate(value)
                for problem in unknown_keys(item, item_hint, f"{where}[{index}]")]
    return []


def check_openai_types(body: dict[str, Any]) -> None:
    params = _params_type(body)
    _consume(_adapter(params).validate_python(body))
    assert unknown_keys(body, params, "body") == []


def test_the_type_check_catches_unknown_keys_and_bad_values() -> None:
    body = {"model": "m", "stream": False, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {}}]},
        {"role": "tool", "tool_call_id": "c", "content": "ok", "is_error": True},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                              "function": {"name": "f", "arguments": "{}", "extra": 1}}]},
    ], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"$schema": "x"}}, "strict2": 1}],
        "thinking": {}}
    assert sorted(unknown_keys(body, _params_type(body), "body")) == [
        "body.messages[0].content[0].cache_control",
        "body.messages[1].is_error",
        "body.messages[2].tool_calls[0].function.extra",
        "body.thinking",
        "body.tools[0].strict2",
    ]
    with pytest.raises(ValueError, match="content"):
        check_openai_types({"model": "m", "messages": [{"role": "tool", "tool_call_id": "c", "content": 5}]})


# --- building requests ---------------------------------------------------------------------------


def build(provider: CompiledRules, model: str = "gpt-4.1", stream: bool = False,
          **request: Any) -> PreparedRequest:
    body = {"model": CLIENT_MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": "Hi"}],
            **request}
    prepared = provider.build_request(body, model=model, provider_vars=PROVIDER, stream=stream)
    check_openai_types(prepared.body)
    # the body must survive the codec the app uses
    assert orjson.loads(orjson.dumps(prepared.body)) == prepared.body
    return prepared


def upstream_messages(provider: CompiledRules, messages: list[Any], **request: Any) -> list[Any]:
    result: list[Any] = build(provider, messages=messages, **request).body["messages"]
    return result


def test_every_shipped_rule_file_compiles_without_diagnostics() -> None:
    rule_sets, diagnostics = load_rules()
    assert diagnostics == []
    providers, problems = compile_rules(rule_sets)
    assert [d.format() for d in problems] == []
    assert set(providers) == {path.stem for path in BUILTIN_RULES_DIR.glob("*.yaml")}


def test_url_headers_and_model(openai: CompiledRules) -> None:
    provider = {**PROVIDER, "base_url": "http://localhost:9/v1", "headers": {"X-Org": "acme", "OpenAI-Beta": 1}}
    prepared = openai.build_request({"model": CLIENT_MODEL, "max_tokens": 10, "messages": []},
                                    model="gpt-4.1-mini", provider_vars=provider, stream=False)
    assert prepared.url == "http://localhost:9/v1/chat/completions"
    assert prepared.headers == {"authorization": "Bearer sk-test", "x-org": "acme", "openai-beta": "1"}
    assert prepared.body["model"] == "gpt-4.1-mini"
    assert prepared.tool_names == {}
    assert openai.method == "POST"


def test_a_plain_request(openai: CompiledRules) -> None:
    body = build(openai).body
    assert body == {"model": "gpt-4.1", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1024,
                    "stream": False}


def test_stream_adds_include_usage(openai: CompiledRules) -> None:
    body = build(openai, stream=True).body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert "stream_options" not in build(openai, stream=False).body


def test_anthropic_only_keys_never_reach_the_body(openai: CompiledRules) -> None:
    for model in ("gpt-4.1", "o3"):
        body = build(
            openai, model=model, system="s", stop_sequences=["x"], temperature=0.2, top_k=5,
            thinking={"type": "enabled", "budget_tokens": 2048}, metadata={"user_id": "u"},
            context_management={"edits": [{"type": "clear_tool_uses_20250919"}]},
            output_config={"effort": "high"}, service_tier="auto", container="container_1",
            mcp_servers=[{"type": "url", "url": "https://mcp", "name": "m"}], inference_geo="us",
        ).body
        assert not set(ANTHROPIC_ONLY) & set(body), model


# --- system and messages -------------------------------------------------------------------------


def test_system_string(openai: CompiledRules) -> None:
    assert upstream_messages(openai, [{"role": "user", "content": "Hi"}], system="Be terse.") == [
        {"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]


def test_system_blocks_are_joined_and_the_billing_header_dropped(openai: CompiledRules) -> None:
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cc_entrypoint=cli;"},
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Be brief."},
    ]
    messages = upstream_messages(openai, [{"role": "user", "content": "Hi"}], system=system)
    assert messages[0] == {"role": "system", "content": "You are Claude Code.\n\nBe brief."}
    only_billing = upstream_messages(openai, [{"role": "user", "content": "Hi"}], system=system[:1])
    assert only_billing == [{"role": "user", "content": "Hi"}]


def test_system_role_messages_stay_in_place(openai: CompiledRules) -> None:
    messages = upstream_messages(openai, [
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": [{"type": "text", "text": "Now"}, {"type": "text", "text": "French."}]},
        {"role": "user", "content": "Bonjour"},
    ], system="Main.")
    assert messages == [
        {"role": "system", "content": "Main."},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Now\n\nFrench."},
        {"role": "user", "content": "Bonjour"},
    ]


def test_user_text_string_and_all_text_blocks_become_a_string(openai: CompiledRules) -> None:
    blocks = [{"type": "text", "text": "One."},
              {"type": "text", "text": "Two.", "cache_control": {"type": "ephemeral"}}]
    assert upstream_messages(openai, [{"role": "user", "content": blocks}]) == [
        {"role": "user", "content": "One.\n\nTwo."}]


def test_images_become_image_url_parts(openai: CompiledRules) -> None:
    content = [
        {"type": "text", "text": "Compare"},
        {"type": "image", "source": PNG},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
    ]
    assert upstream_messages(openai, [{"role": "user", "content": content}]) == [{"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]}]


def test_images_are_refused_for_a_model_without_vision(openai: CompiledRules) -> None:
    content = [{"type": "image", "source": PNG}]
    with pytest.raises(RequestError, match=r"^model gpt-3\.5-turbo does not accept images$") as caught:
        build(openai, model="gpt-3.5-turbo", messages=[{"role": "user", "content": content}])
    assert caught.value.status == 400


def test_image_file_sources_are_refused(openai: CompiledRules) -> None:
    content = [{"type": "image", "source": {"type": "file", "file_id": "file_1"}}]
    with pytest.raises(RequestError, match="image source type file cannot be sent to openai"):
        build(openai, messages=[{"role": "user", "content": content}])


def test_documents(openai: CompiledRules) -> None:
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
           "title": "report.pdf"}
    text = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Body"},
            "title": "Notes"}
    (message,) = upstream_messages(openai, [{"role": "user", "content": [pdf, text]}])
    assert message["content"] == [
        {"type": "file", "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
        {"type": "text", "text": "Notes\nBody"},
    ]


def test_unknown_roles_and_blocks_are_refused(openai: CompiledRules) -> None:
    with pytest.raises(RequestError, match=r"^messages: unknown role robot$"):
        build(openai, messages=[{"role": "robot", "content": "Hi"}])
    with pytest.raises(RequestError, match=r"^content block type hologram cannot be sent to openai$"):
        build(openai, messages=[{"role": "user", "content": [{"type": "hologram"}]}])


def test_tool_use_becomes_tool_calls_with_json_arguments(openai: CompiledRules) -> None:
    messages = upstream_messages(openai, [
        {"role": "user", "content": "Read it"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should read.", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Reading."},
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "résumé.md", "limit": 5}},
            {"type": "tool_use", "id": "toolu_2", "name": "Ls", "input": {}},
        ]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_3", "name": "Ls", "input": {}}]},
        {"role": "assistant", "content": "plain"},
        {"role": "user", "content": "Next"},
    ])
    assert messages[1:-1] == [
        {"role": "assistant", "content": "Reading.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "Read", "arguments": '{"path":"résumé.md","limit":5}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "Ls", "arguments": "{}"}},
        ]},
        {"role": "assistant", "tool_calls": [
            {"id": "toolu_3", "type": "function", "function": {"name": "Ls", "arguments": "{}"}}]},
        {"role": "assistant", "content": "plain"},
    ]


def test_thinking_only_assistant_turn_keeps_an_empty_content(openai: CompiledRules) -> None:
    messages = upstream_messages(openai, [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"}]},
        {"role": "user", "content": "Go on"},
    ])
    assert messages[1] == {"role": "assistant", "content": ""}


def test_a_final_assistant_message_is_refused(openai: CompiledRules) -> None:
    with pytest.raises(RequestError, match="prefill"):
        build(openai, messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Sure,"}])


def test_tool_results_become_tool_messages_first(openai: CompiledRules) -> None:
    messages = upstream_messages(openai, [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "a", "name": "f", "input": {}},
            {"type": "tool_use", "id": "b", "name": "f", "input": {}},
            {"type": "tool_use", "id": "c", "name": "f", "input": {}},
        ]},
        {"role": "user", "content": [
            {"type": "text", "text": "Here you go."},
            {"type": "tool_result", "tool_use_id": "a", "content": "plain"},
            {"type": "tool_result", "tool_use_id": "b", "content": [
                {"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2"}]},
            {"type": "tool_result", "tool_use_id": "c", "content": "boom", "is_error": True},
        ]},
    ])
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "a", "content": "plain"},
        {"role": "tool", "tool_call_id": "b", "content": "line 1\nline 2"},
        {"role": "tool", "tool_call_id": "c", "content": "Error: boom"},
        {"role": "user", "content": "Here you go."},
    ]


def test_images_in_tool_results_move_to_a_user_message(openai: CompiledRules) -> None:
    messages = upstream_messages(openai, [
        {"role": "user", "content": "Shoot"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "shot", "name": "screenshot", "input": {}},
                                          {"type": "tool_use", "id": "both", "name": "screenshot", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "shot", "content": [{"type": "image", "source": PNG}]},
            {"type": "tool_result", "tool_use_id": "both", "content": [
                {"type": "text", "text": "caption"}, {"type": "image", "source": PNG}]},
        ]},
    ])
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "shot", "content": "(output attached in the next message)"},
        {"role": "tool", "tool_call_id": "both", "content": "caption"},
        {"role": "user", "content": [
            {"type": "text", "text": "Output of tool call shot:"}, image,
            {"type": "text", "text": "Output of tool call both:"}, image,
        ]},
    ]


# --- tools ---------------------------------------------------------------------------------------


def test_tools_keep_only_what_openai_knows(openai: CompiledRules) -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "$schema": {"type": "string"},
            "format": {"type": "string", "format": "uri"},
            "nested": {"type": "object", "$schema": "x", "properties": {"q": {"type": "integer"}}},
        },
        "required": ["format"],
    }
    tools = [
        {"name": "Fetch", "description": "Fetch a URL", "input_schema": schema,
         "cache_control": {"type": "ephemeral"}, "defer_loading": True, "strict": True,
         "input_examples": [{"format": "x"}]},
        {"name": "NoSchema", "input_schema": {}},
        {"name": "Custom", "type": "custom", "input_schema": {"type": "object"}},
    ]
    body = build(openai, tools=tools).body
    assert body["tools"] == [
        {"type": "function", "function": {"name": "Fetch", "description": "Fetch a URL", "parameters": {
            "type": "object",
            "properties": {
                "$schema": {"type": "string"},
                "format": {"type": "string", "format": "uri"},
                "nested": {"type": "object", "properties": {"q": {"type": "integer"}}},
            },
            "required": ["format"],
        }}},
        {"type": "function", "function": {"name": "NoSchema", "parameters": {"type": "object", "properties": {}}}},
        {"type": "function", "function": {"name": "Custom", "parameters": {"type": "object"}}},
    ]
    assert "$schema" in tools[0]["input_schema"], "the client's request is not modified"


def test_builtin_anthropic_tools_are_refused(openai: CompiledRules) -> None:
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]
    with pytest.raises(RequestError, match="web_search is an Anthropic built-in tool"):
        build(openai, tools=tools)


def test_long_tool_names_are_shortened_everywhere_and_mapped_back(openai: CompiledRules) -> None:
    short = short_name(LONG_NAME, 64)
    assert len(LONG_NAME) > 64 and len(short) <= 64 and re.fullmatch(r"[a-zA-Z0-9_-]+", short)
    prepared = build(
        openai,
        tools=[{"name": LONG_NAME, "input_schema": {"type": "object"}},
               {"name": "Read", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": LONG_NAME},
        messages=[
            {"role": "user", "content": "Search"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": LONG_NAME, "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "found"}]},
        ],
    )
    body = prepared.body
    assert [tool["function"]["name"] for tool in body["tools"]] == [short, "Read"]
    assert body["tool_choice"] == {"type": "function", "function": {"name": short}}
    assert body["messages"][1]["tool_calls"][0]["function"]["name"] == short
    assert prepared.tool_names == {short: LONG_NAME}, "upstream name → client name, renamed tools only"


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "Read"}, {"type": "function", "function": {"name": "Read"}}),
    ],
)
def test_tool_choice(openai: CompiledRules, tool_choice: dict[str, Any], expected: Any) -> None:
    tools = [{"name": "Read", "input_schema": {"type": "object"}}]
    body = build(openai, tools=tools, tool_choice=tool_choice).body
    assert body["tool_choice"] == expected
    assert "parallel_tool_calls" not in body
    parallel_off = build(openai, tools=tools, tool_choice={**tool_choice, "disable_parallel_tool_use": True}).body
    assert parallel_off["parallel_tool_calls"] is False
    assert parallel_off["tool_choice"] == expected


def test_no_tools_means_no_tool_choice(openai: CompiledRules) -> None:
    body = build(openai, tool_choice={"type": "any", "disable_parallel_tool_use": True}).body
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(body)
    assert "tool_choice" not in build(openai, tools=[{"name": "Read", "input_schema": {"type": "object"}}]).body


# --- sampling, limits, reasoning -----------------------------------------------------------------


def test_sampling_parameters_by_model(openai: CompiledRules) -> None:
    sampling = {"temperature": 0, "top_p": 0.9, "stop_sequences": ["a", "b", "c", "d", "e"]}
    body = build(openai, model="gpt-4.1", **sampling).body
    assert (body["temperature"], body["top_p"]) == (0, 0.9)
    reasoning = build(openai, model="o3", **sampling).body
    assert not {"temperature", "top_p"} & set(reasoning)


def test_stop_sequences_are_emulated_never_sent(openai: CompiledRules) -> None:
    """OpenAI would stop before the match without naming it: the engine scans for them instead."""
    assert openai.emulate_stop_sequences
    for model in ("gpt-4.1", "o3"):
        assert "stop" not in build(openai, model=model, stop_sequences=["a", "b", "c", "d", "e"]).body


@pytest.mark.parametrize(
    ("model", "max_tokens", "expected"),
    [
        ("gpt-4.1", 1000, {"max_tokens": 1000}),
        ("gpt-4.1", 100_000, {"max_tokens": 32768}),
        ("gpt-4o-mini", 100_000, {"max_tokens": 16384}),
        ("o3", 1000, {"max_completion_tokens": 1000}),
        ("o3", 150_000, {"max_completion_tokens": 100_000}),
        ("gpt-5-mini", 200_000, {"max_completion_tokens": 128_000}),
    ],
)
def test_max_tokens_is_clamped_to_the_model(openai: CompiledRules, model: str, max_tokens: int,
                                            expected: dict[str, int]) -> None:
    body = build(openai, model=model, max_tokens=max_tokens).body
    assert {key: body[key] for key in ("max_tokens", "max_completion_tokens") if key in body} == expected


@pytest.mark.parametrize(
    ("request_fields", "effort"),
    [
        ({}, None),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "low"),
        ({"thinking": {"type": "enabled", "budget_tokens": 4096}}, "medium"),
        ({"thinking": {"type": "enabled", "budget_tokens": 16384}}, "high"),
        ({"thinking": {"type": "adaptive"}}, "medium"),
        ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}}, "low"),
        ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "xhigh"}}, "high"),
        ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}}, "high"),
        ({"thinking": {"type": "disabled"}, "output_config": {"effort": "high"}}, None),
        ({"output_config": {"effort": "high"}}, "high"),
        ({"output_config": {"format": {"type": "json_schema", "schema": {}}}}, None),
    ],
)
def test_reasoning_effort_for_reasoning_models_only(openai: CompiledRules, request_fields: dict[str, Any],
                                                    effort: str | None) -> None:
    body = build(openai, model="o3", max_tokens=20_000, **request_fields).body
    assert body.get("reasoning_effort") == effort
    assert "reasoning_effort" not in build(openai, model="gpt-4.1", max_tokens=20_000, **request_fields).body


def test_metadata_user_id_becomes_user(openai: CompiledRules) -> None:
    assert build(openai, metadata={"user_id": "user_42"}).body["user"] == "user_42"
    long_id = "user_" + "a" * 70 + "_account_x_session_y"
    user = build(openai, metadata={"user_id": long_id}).body["user"]
    assert len(user) <= 64 and user == short_name(long_id, 64)
    assert "user" not in build(openai, metadata={}).body


# --- capabilities --------------------------------------------------------------------------------

BASE_CAPS = {"context": 128000, "max_output": 16384, "tools": True, "vision": True, "reasoning": False,
             "sampling": True, "max_tools": 128}


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("llama-3.3-70b", BASE_CAPS),
        ("gpt-4.1", {**BASE_CAPS, "context": 1047576, "max_output": 32768}),
        ("gpt-4.1-mini", {**BASE_CAPS, "context": 1047576, "max_output": 32768}),
        ("gpt-3.5-turbo", {**BASE_CAPS, "context": 16385, "max_output": 4096, "vision": False}),
        ("o3-mini", {**BASE_CAPS, "context": 200000, "max_output": 100000, "reasoning": True, "sampling": False}),
        ("gpt-5-mini", {**BASE_CAPS, "context": 400000, "max_output": 128000, "reasoning": True,
                        "sampling": False}),
    ],
)
def test_capabilities_merge_star_then_matching_globs(openai: CompiledRules, model: str,
                                                     expected: dict[str, Any]) -> None:
    assert openai.capabilities(model) == expected
    assert openai.capabilities(model) == expected, "cached answers are the same"


def write_rules(tmp_path: Path, name: str, text: str) -> RuleSet:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    rule_sets, diagnostics = load_rules([path], include_builtin=False)
    assert diagnostics == []
    return rule_sets[name]


MINIMAL = """\
request:
  url: "{{ provider.base_url }}/x"
  body: {model: "{{ model }}"}
"""


def test_more_specific_globs_win_whatever_their_order_in_the_file(tmp_path: Path) -> None:
    rule_set = write_rules(tmp_path, "globs", MINIMAL + """\
        models:
          "gpt-4*": {max_output: 30}
          "gpt-4o": {max_output: 40}
          "gpt-*": {max_output: 20, vision: false}
          "*": {max_output: 10, tools: true}
          "gone*": null
    """.replace("        ", ""))
    providers, diagnostics = compile_rules({"globs": rule_set})
    assert diagnostics == []
    caps = providers["globs"].capabilities
    assert caps("gpt-4o") == {"max_output": 40, "tools": True, "vision": False}
    assert caps("gpt-4.1") == {"max_output": 30, "tools": True, "vision": False}
    assert caps("gpt-3") == {"max_output": 20, "tools": True, "vision": False}
    assert caps("claude") == {"max_output": 10, "tools": True}
    assert caps("gone-model") == {"max_output": 10, "tools": True}


# --- defaults and environment --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("${KEY}", {"KEY": "k"}, "k"),
        ("${KEY}", {}, None),
        ("${KEY}", {"KEY": ""}, None),
        ("${KEY:-fallback}", {}, "fallback"),
        ("${KEY:-}", {}, ""),
        ("https://${HOST:-localhost}:${PORT:-11434}/v1", {"PORT": "1"}, "https://localhost:1/v1"),
        ("${A}-${B}", {"A": "a"}, None),
        ("plain", {}, "plain"),
        (5, {}, 5),
        (None, {}, None),
    ],
)
def test_expand_env(value: Any, env: dict[str, str], expected: Any) -> None:
    assert expand_env(value, env) == expected


def test_defaults_expand_the_environment(openai: CompiledRules) -> None:
    assert openai.default("api_key", {"OPENAI_API_KEY": "sk-env"}) == "sk-env"
    assert openai.default("api_key", {}) is None
    assert openai.default("base_url", {}) == "https://api.openai.com/v1"
    assert openai.default("headers", {}) is None


def test_default_headers_expand_the_environment_value_by_value(tmp_path: Path) -> None:
    rule_set = write_rules(tmp_path, "attributed", MINIMAL + """\
        defaults:
          headers:
            HTTP-Referer: ${REFERER:-https://example.com}
            X-Title: ${TITLE}
            X-Static: fixed
    """.replace("        ", ""))
    provider = compile_rules({"attributed": rule_set})[0]["attributed"]
    assert provider.default("headers", {"TITLE": "mine"}) == {
        "HTTP-Referer": "https://example.com", "X-Title": "mine", "X-Static": "fixed"}
    assert provider.default("headers", {}) == {"HTTP-Referer": "https://example.com", "X-Static": "fixed"}


def test_signer_wraps_signatures_for_this_provider(openai: CompiledRules) -> None:
    sign = bound(openai).signer("o3")
    assert decode_signature(sign("opaque"), "openai") == "opaque"
    assert decode_signature(sign("opaque"), "gemini") is None
    assert sign(None).startswith("ccpx1.")


# --- decoding answers ----------------------------------------------------------------------------


def test_decode_a_whole_answer(openai: CompiledRules) -> None:
    answer = {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4.1",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me look.", "reasoning_content": "Thinking it over.",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": '{"path":"a"}'}},
                {"id": "call_2", "type": "function", "function": {"name": "Ls", "arguments": ""}},
            ]}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 30,
                  "prompt_tokens_details": {"cached_tokens": 100}},
    }
    decoder = bound(openai).decoder(stream=False)
    assert isinstance(decoder, ResponseDecoder)
    assert decoder.done_marker is None
    assert decoder.decode(answer) == [
        ThinkingDelta("Thinking it over.", None),
        TextDelta("Let me look."),
        # a whole answer lists complete calls: each gets its own key, none is merged into another
        ToolCallDelta(key="call0", id="call_1", name="Read", arguments='{"path":"a"}'),
        ToolCallDelta(key="call1", id="call_2", name="Ls", arguments=""),
        FinishDelta("tool_use", "tool_calls"),
        UsageDelta(input_tokens=20, output_tokens=30, cache_read_input_tokens=100, cache_creation_input_tokens=0),
    ]


def test_decode_a_stream(openai: CompiledRules) -> None:
    decoder = bound(openai).decoder(stream=True)
    assert decoder.done_marker == "[DONE]"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "c", "object": "chat.completion.chunk", "usage": None,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning": "Hmm"}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "Read", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"pa'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'th":1}'}}]}),
        chunk({}, "tool_calls"),
        {"id": "c", "object": "chat.completion.chunk", "choices": [],
         "usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 0}}},
    ]
    assert [decoder.decode(item) for item in chunks] == [
        [],
        [ThinkingDelta("Hmm", None)],
        [TextDelta("Hel")],
        [TextDelta("lo")],
        [ToolCallDelta(key=0, id="call_1", name="Read", arguments="")],
        [ToolCallDelta(key=0, id=None, name=None, arguments='{"pa')],
        [ToolCallDelta(key=0, id=None, name=None, arguments='th":1}')],
        [FinishDelta("tool_use", "tool_calls")],
        [UsageDelta(input_tokens=10, output_tokens=5, cache_read_input_tokens=0, cache_creation_input_tokens=0)],
    ]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ({"error": {"message": "boom", "type": "server_error", "code": None}},
         ErrorDelta("api_error", "[openai] boom")),
        ({"error": {"message": "slow down", "code": "rate_limit_exceeded"}},
         ErrorDelta("rate_limit_error", "[openai] slow down")),
        ({"error": {"message": "no money", "type": "insufficient_quota", "code": "insufficient_quota"}},
         ErrorDelta("billing_error", "[openai] no money")),
        ({"object": "error", "message": "vllm failed", "type": "BadRequestError", "code": 400},
         ErrorDelta("api_error", "[openai] vllm failed")),
        ({"error": "plain text error"}, ErrorDelta("api_error", "[openai] plain text error")),
    ],
)
def test_errors_inside_a_stream_become_error_deltas(openai: CompiledRules, error: dict[str, Any],
                                                     expected: ErrorDelta) -> None:
    decoder = bound(openai).decoder(stream=True)
    assert decoder.decode({"choices": [{"index": 0, "delta": {"content": "a"}}]}) == [TextDelta("a")]
    assert decoder.decode(error) == [expected]


@pytest.mark.parametrize(
    ("raw", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("function_call", "tool_use"),
     ("content_filter", "refusal"), ("insufficient_system_resource", None)],
)
def test_finish_reasons(openai: CompiledRules, raw: str, stop_reason: str | None) -> None:
    decoder = bound(openai).decoder(stream=True)
    assert decoder.decode({"choices": [{"index": 0, "delta": {}, "finish_reason": raw}]}) == [
        FinishDelta(stop_reason, raw)]


def test_a_refusal_is_text_and_ends_as_refusal(openai: CompiledRules) -> None:
    answer = {"choices": [{"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": None, "refusal": "I can't help."}}]}
    assert bound(openai).decoder(stream=False).decode(answer) == [TextDelta("I can't help."),
                                                              FinishDelta("refusal", "stop")]


def test_usage_never_goes_negative(openai: CompiledRules) -> None:
    answer = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1,
                                       "prompt_tokens_details": {"cached_tokens": 9, "cache_write_tokens": 2}}}
    assert bound(openai).decoder(stream=False).decode(answer) == [
        UsageDelta(input_tokens=0, output_tokens=1, cache_read_input_tokens=9, cache_creation_input_tokens=2)]


def test_decoder_selectors_from_other_rules(tmp_path: Path) -> None:
    """Whole calls (Gemini-style) get distinct keys; object arguments are encoded to JSON text."""
    rule_set = write_rules(tmp_path, "geminiish", MINIMAL + textwrap.dedent("""\
        response:
          parts: candidates[0].content.parts
          part:
            text: "thought != `true` && text || `null`"
            thinking: "thought == `true` && text || `null`"
            signature: thoughtSignature
            tool_calls: "functionCall && [functionCall]"
          tool_call: {name: name, arguments: args, whole: true}
          finish_reason: candidates[0].finishReason
        finish_reasons: {STOP: end_turn}
    """))
    providers, diagnostics = compile_rules({"geminiish": rule_set})
    assert diagnostics == []
    decoder = bound(providers["geminiish"]).decoder(stream=True)
    assert decoder.done_marker is None
    chunk = {"candidates": [{"finishReason": "STOP", "content": {"parts": [
        {"text": "plan", "thought": True, "thoughtSignature": "sig"},
        {"text": "Answer"},
        {"functionCall": {"name": "a", "args": {"x": [1]}}},
        {"functionCall": {"name": "a", "args": {}}},
    ]}}]}
    assert decoder.decode(chunk) == [
        ThinkingDelta("plan", "sig"),
        TextDelta("Answer"),
        ToolCallDelta(key="call0", id=None, name="a", arguments='{"x":[1]}'),
        ToolCallDelta(key="call1", id=None, name="a", arguments="{}"),
        FinishDelta("end_turn", "STOP"),
    ]


FAILING_FINISH = MINIMAL + textwrap.dedent("""\
    response:
      parts: candidates[0].content.parts
      part: {text: text}
      finish_reason: candidates[0].finishReason
    finish_reasons: {STOP: end_turn}
    finish_errors:
      MALFORMED_FUNCTION_CALL: candidates[0].finishMessage
      MISSING_THOUGHT_SIGNATURE: "`null`"
""")


def finishing(reason: str, **candidate: Any) -> dict[str, Any]:
    return {"candidates": [{"finishReason": reason, **candidate}]}


def test_finish_errors_turn_a_finish_reason_into_an_error(tmp_path: Path) -> None:
    providers, diagnostics = compile_rules({"failing": write_rules(tmp_path, "failing", FAILING_FINISH)})
    assert diagnostics == []
    decoder = bound(providers["failing"], "configured").decoder(stream=True)
    chunk = finishing("MALFORMED_FUNCTION_CALL", content={"parts": [{"text": "Let me "}]},
                      finishMessage="Malformed function call: print(default_api.Read(path=))")
    assert decoder.decode(chunk) == [
        TextDelta("Let me "),
        ErrorDelta("api_error", "[configured] upstream stopped with finish reason 'MALFORMED_FUNCTION_CALL': "
                                "Malformed function call: print(default_api.Read(path=))"),
    ]
    assert decoder.decode(finishing("MISSING_THOUGHT_SIGNATURE")) == [
        ErrorDelta("api_error", "[configured] upstream stopped with finish reason 'MISSING_THOUGHT_SIGNATURE'")]
    assert decoder.decode(finishing("STOP")) == [FinishDelta("end_turn", "STOP")]
    assert decoder.decode(finishing("OTHER")) == [FinishDelta(None, "OTHER")]


def test_a_finish_error_fails_the_stream_and_the_whole_message(tmp_path: Path) -> None:
    provider = compile_rules({"failing": write_rules(tmp_path, "failing", FAILING_FINISH)})[0]["failing"]
    chunk = finishing("MALFORMED_FUNCTION_CALL", content={"parts": [{"text": "Hi"}]}, finishMessage="bad call")
    machine = StreamMachine(provider="failing", message_id="msg_1", model=CLIENT_MODEL)
    events = [event for delta in bound(provider).decoder(stream=True).decode(chunk) for event in machine.feed(delta)]
    assert [name for name, _ in events][-1] == "error"
    assert events[-1][1]["error"] == {
        "type": "api_error",
        "message": "[failing] upstream stopped with finish reason 'MALFORMED_FUNCTION_CALL': bad call"}
    assert machine.finish() == []
    builder = MessageBuilder(provider="failing", message_id="msg_1", model=CLIENT_MODEL)
    with pytest.raises(UpstreamStatusError) as caught:
        for delta in bound(provider).decoder(stream=False).decode(chunk):
            builder.feed(delta)
    assert (caught.value.status, caught.value.error_type) == (500, "api_error")
    assert caught.value.message == "[failing] upstream stopped with finish reason 'MALFORMED_FUNCTION_CALL': bad call"


def test_a_bad_finish_error_selector_is_reported_where_it_is(tmp_path: Path) -> None:
    text = MINIMAL + "finish_errors:\n  BROKEN: \"candidates[0\"\n"
    _, diagnostics = compile_rules({"broken": write_rules(tmp_path, "broken", text)})
    assert [(d.line, d.code) for d in diagnostics] == [(5, DiagnosticCode.BAD_SELECTOR)]


# --- upstream errors -----------------------------------------------------------------------------


def error_body(message: str, type_: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


@pytest.mark.parametrize(
    ("status", "body", "retry_after", "expected_status", "expected_type", "message"),
    [
        (429, error_body("Rate limit reached", "requests", "rate_limit_exceeded"), "7", 429, "rate_limit_error",
         "[openai] Rate limit reached"),
        (429, error_body("You exceeded your quota", "insufficient_quota", "insufficient_quota"), None, 402,
         "billing_error", "[openai] You exceeded your quota"),
        (503, error_body("Slow down", "server_error"), None, 529, "overloaded_error", "[openai] Slow down"),
        (502, b"<html>Bad gateway</html>", None, 529, "overloaded_error", "[openai] <html>Bad gateway</html>"),
        (401, error_body("Incorrect API key"), None, 401, "authentication_error", "[openai] Incorrect API key"),
        (404, error_body("The model does not exist", "invalid_request_error", "model_not_found"), None, 404,
         "not_found_error", "[openai] The model does not exist"),
        (408, b"", None, 504, "timeout_error", "[openai] HTTP 408"),
        (422, b"  unprocessable  \n", None, 400, "invalid_request_error", "[openai] unprocessable"),
        (500, b"", None, 500, "api_error", "[openai] HTTP 500"),
        (418, b"{}", None, 400, "invalid_request_error", "[openai] {}"),
        (599, b"", None, 500, "api_error", "[openai] HTTP 599"),
    ],
)
def test_upstream_errors_map_to_anthropic_errors(openai: CompiledRules, status: int, body: bytes,
                                                 retry_after: str | None, expected_status: int,
                                                 expected_type: str, message: str) -> None:
    error = bound(openai).error(status, body, retry_after)
    assert isinstance(error, UpstreamStatusError)
    assert (error.status, error.error_type, error.message) == (expected_status, expected_type, message)
    assert error.upstream_status == status
    assert error.provider == "openai"
    assert error.envelope() == {"type": "error", "error": {"type": expected_type, "message": message}}
    assert error.headers == ({"retry-after": retry_after} if retry_after else {})


def test_a_context_overflow_message_starts_with_the_phrase_claude_code_looks_for(
        openai: CompiledRules) -> None:
    upstream = "This model's maximum context length is 128000 tokens."
    error = bound(openai).error(400, error_body(upstream, "invalid_request_error", "context_length_exceeded"))
    assert (error.status, error.error_type, error.upstream_status) == (400, "invalid_request_error", 400)
    assert error.message.startswith("prompt is too long: ")
    assert "[openai]" in error.message and upstream in error.message
    assert str(error) == error.message
    assert error.envelope()["error"]["message"] == error.message
    # the same inside a stream that has started
    (delta,) = bound(openai).decoder(stream=True).decode(
        {"error": {"message": upstream, "code": "context_length_exceeded"}})
    assert isinstance(delta, ErrorDelta)
    assert delta.error_type == "invalid_request_error"
    assert delta.message.startswith("prompt is too long: ") and upstream in delta.message


def test_long_error_text_is_cut(openai: CompiledRules) -> None:
    error = bound(openai).error(500, b"x" * 2000)
    assert error.message == "[openai] " + "x" * 500


def test_rules_can_override_the_status_table(tmp_path: Path) -> None:
    rule_set = write_rules(tmp_path, "custom", MINIMAL + textwrap.dedent("""\
        errors:
          message: detail
          code: reason
          status: {"500": 529, "400": 404}
          by_code: {QUOTA: billing_error}
    """))
    providers, _ = compile_rules({"custom": rule_set})
    errors = bound(providers["custom"])
    overloaded = errors.error(500, b'{"detail": "busy"}')
    assert (overloaded.status, overloaded.error_type, overloaded.message) == (529, "overloaded_error",
                                                                             "[custom] busy")
    assert errors.error(400, b"{}").status == 404
    quota = errors.error(429, b'{"detail": "pay", "reason": "QUOTA"}')
    assert (quota.status, quota.error_type) == (402, "billing_error")


# --- compile diagnostics -------------------------------------------------------------------------


def test_missing_request_parts_are_reported(tmp_path: Path) -> None:
    rule_set = write_rules(tmp_path, "empty", "description: nothing\nrequest:\n  method: POST\n")
    providers, diagnostics = compile_rules({"empty": rule_set})
    assert providers == {}
    assert sorted((d.line, d.col, d.code, d.message) for d in diagnostics) == [
        (2, 1, DiagnosticCode.SCHEMA, "request.body is required (directly or through 'extends')"),
        (2, 1, DiagnosticCode.SCHEMA, "request.url is required (directly or through 'extends')"),
    ]


def test_every_problem_in_a_rule_set_is_reported_and_only_that_set_is_left_out(tmp_path: Path) -> None:
    broken = write_rules(tmp_path, "broken", """\
        request:
          url: "{{ provider.base_url }}"
          body:
            model: "{{ modle }}"
            messages: {$use: mesages}
        response:
          part:
            text: "content ||"
        errors:
          code: "lenght(error)"
        templates:
          unused: "{{ request | json_encod }}"
    """)
    good = write_rules(tmp_path, "good", MINIMAL)
    providers, diagnostics = compile_rules({"broken": broken, "good": good})
    assert set(providers) == {"good"}
    assert sorted((d.line, d.code) for d in diagnostics) == [
        (4, DiagnosticCode.BAD_TEMPLATE),
        (5, DiagnosticCode.UNKNOWN_TEMPLATE),
        (8, DiagnosticCode.BAD_SELECTOR),
        (10, DiagnosticCode.UNKNOWN_FUNCTION),
        (12, DiagnosticCode.UNKNOWN_FILTER),
    ]
    with pytest.raises(RuleError) as caught:
        require_compiled({"broken": broken, "good": good})
    assert len(caught.value.diagnostics) == 5
    assert "broken.yaml:4:16: unknown variable 'modle' (did you mean 'model'?) [bad-template]" in str(caught.value)


def test_a_child_of_the_openai_rules_overrides_templates_and_deletes_keys(tmp_path: Path) -> None:
    path = tmp_path / "vendor.yaml"
    path.write_text(textwrap.dedent("""\
        extends: openai
        defaults: {base_url: "https://vendor.example/v1", api_key: "${VENDOR_KEY}"}
        models:
          "vendor-*": {max_output: 8192, vision: false}
        request:
          body:
            parallel_tool_calls: null
            user: null
            seed: 7
        templates:
          tool_choice: auto
    """), encoding="utf-8")
    vendor = require_compiled(require_rules([path]))["vendor"]
    prepared = vendor.build_request(
        {"model": CLIENT_MODEL, "max_tokens": 100_000, "messages": [{"role": "user", "content": "Hi"}],
         "tools": [{"name": "Read", "input_schema": {"type": "object"}}],
         "tool_choice": {"type": "any", "disable_parallel_tool_use": True}, "metadata": {"user_id": "u"}},
        model="vendor-large", provider_vars={**PROVIDER, "name": "vendor"}, stream=False)
    body = prepared.body
    check_openai_types(body)
    assert body["tool_choice"] == "auto"
    assert body["max_tokens"] == 8192
    assert body["seed"] == 7
    assert "parallel_tool_calls" not in body and "user" not in body
    assert list(body)[:3] == ["model", "messages", "max_tokens"], "inherited keys keep their order"
    assert vendor.default("api_key", {"VENDOR_KEY": "v"}) == "v"
    assert vendor.capabilities("vendor-large")["vision"] is False


# --- request hooks: tool ids, auth header ------------------------------------------------------


def vendor(tmp_path: Path, text: str) -> CompiledRules:
    path = tmp_path / "vendor.yaml"
    path.write_text("extends: openai\n" + textwrap.dedent(text), encoding="utf-8")
    return require_compiled(require_rules([path]))["vendor"]


TOOL_TURNS = [
    {"role": "user", "content": "List the files, then show the logo."},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01A", "name": "ls", "input": {}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A", "content": [
        {"type": "text", "text": "logo.png"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]},
]


def test_tool_id_maps_every_id_sent_the_same_way(tmp_path: Path) -> None:
    provider = vendor(tmp_path, """\
        request:
          tool_id: "{{ model ~ '-' ~ id[-3:] }}"
    """)
    messages = upstream_messages(provider, TOOL_TURNS)
    assert messages[1]["tool_calls"][0]["id"] == "gpt-4.1-01A"
    assert messages[2] == {"role": "tool", "tool_call_id": "gpt-4.1-01A", "content": "logo.png"}
    assert messages[3]["content"][0] == {"type": "text", "text": "Output of tool call gpt-4.1-01A:"}


def test_without_tool_id_ids_go_as_the_client_sent_them(openai: CompiledRules) -> None:
    messages = upstream_messages(openai, TOOL_TURNS)
    assert messages[1]["tool_calls"][0]["id"] == messages[2]["tool_call_id"] == "toolu_01A"


def test_mistral_ids_are_short_ids_and_its_own_ids_survive_the_round_trip() -> None:
    mistral = require_compiled(require_rules())["mistral"]
    turns = [*TOOL_TURNS[:2], {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "logo.png"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "aB3dE5gH9", "name": "ls", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "aB3dE5gH9", "content": "ok"}]}]
    messages = mistral.build_request({"max_tokens": 10, "messages": turns}, model="mistral-large-latest",
                                     provider_vars=PROVIDER, stream=False).body["messages"]
    ids = [call["id"] for m in messages for call in m.get("tool_calls") or ()]
    results = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert ids == results == [short_id("toolu_01A", 9), "aB3dE5gH9"]


def test_the_key_in_another_header(tmp_path: Path) -> None:
    """docs/adding-a-provider.md: `null` deletes the inherited Bearer header."""
    provider = vendor(tmp_path, """\
        request:
          headers: {authorization: null, api-key: "{{ provider.api_key }}"}
    """)
    headers = build(provider).headers
    assert headers["api-key"] == PROVIDER["api_key"]
    assert "authorization" not in headers
