"""OpenAI Responses clients: the official `openai` SDK through `/v1/responses` to every kind of upstream.

The same proxy and fakes as the Chat Completions client tests (test_e2e_openai_clients): Gemini,
Anthropic passthrough and an OpenAI Chat Completions upstream, each refusing bodies outside its SDK's
types. `responses.create` parses the ``Response``; `responses.stream` accumulates the events (it
raises on an event out of order or an unknown item). Every event on the wire is also checked against
the SDK's own event models (the checker of tests/test_fake_responses.py), with its sequence number.
"""

# ruff: noqa: F811  (the fixtures imported below are parameters of the tests)
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from e2e.test_e2e_openai_clients import (  # noqa: F401  (fixtures)
    ARGUMENTS,
    SERVER_KEY,
    Upstreams,
    client,
    expected_id,
    fakes,
    queue_calls,
    queue_text,
    queue_text_message,
    streamed,
    upstreams_and_proxy,
)
from fakes import gemini_upstream as gemini
from fakes import openai_upstream as oai
from fakes.anthropic_upstream import AnthropicError, AnthropicStream
from openai.types.responses import Response
from test_fake_responses import EVENT_TYPES

pytestmark = pytest.mark.e2e

PROVIDERS = ["gemini", "anthropic", "openai"]
WEATHER: Any = {"type": "function", "name": "get_weather", "description": "Current weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CODEX_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/codex/0.171.0-exec-write-hello/002-request.json"


def respond(client: openai.OpenAI, streamed: bool, **params: Any) -> Response:
    """One request, whole or through the SDK's stream accumulator (`get_final_response`)."""
    params.setdefault("input", "Hello")
    params.setdefault("store", False)
    if not streamed:
        response: Response = client.responses.create(**params)
        return response
    with client.responses.stream(**params) as stream:
        for _ in stream:
            pass
        return stream.get_final_response()


def wire_events(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a streamed answer as sent, each checked against the SDK's model for its type."""
    response = httpx.post(f"{url}/v1/responses", headers={"authorization": f"Bearer {SERVER_KEY}"},
                          json={**body, "stream": True}, timeout=20)
    assert response.status_code == 200, response.text
    events = []
    for record in response.text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in record.splitlines() if not line.startswith(":"))
        if "data" in lines:
            event = json.loads(lines["data"])
            assert lines["event"] == event["type"]
            EVENT_TYPES[event["type"]].model_validate(event)
            events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


@pytest.mark.parametrize("provider", PROVIDERS)
def test_text(client: openai.OpenAI, fakes: Upstreams, provider: str, streamed: bool) -> None:
    queue_text_message(fakes, provider, "Hello from upstream.", streamed)
    response = respond(client, streamed, model=f"to-{provider}", instructions="Be brief.",
                       input=[{"role": "developer", "content": "Use plain words."},
                              {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}])
    assert response.output_text == "Hello from upstream."
    assert response.status == "completed" and response.model == f"to-{provider}"
    assert response.usage is not None and response.usage.output_tokens > 0
    if provider == "anthropic":
        sent = fakes.anthropic.last.body
        assert sent["system"] == "Be brief.\n\nUse plain words."
        assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    elif provider == "gemini":
        assert fakes.gemini.last.body["systemInstruction"] == {"parts": [{"text": "Be brief.\n\nUse plain words."}]}
    else:
        assert fakes.openai.last.body["messages"][0] == {"role": "system", "content": "Be brief.\n\nUse plain words."}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_function_call(client: openai.OpenAI, fakes: Upstreams, provider: str, streamed: bool) -> None:
    queue_calls(fakes, provider, [("call_1", "get_weather", ARGUMENTS)], streamed)
    response = respond(client, streamed, model=f"to-{provider}", tools=[WEATHER], input="Weather?")
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.call_id, c.name, json.loads(c.arguments)) for c in calls] == [
        (expected_id(provider, "call_1"), "get_weather", ARGUMENTS)]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_function_outputs_go_back(client: openai.OpenAI, fakes: Upstreams, provider: str, streamed: bool) -> None:
    queue_text_message(fakes, provider, "Oslo -3, Bergen 4.", streamed)
    items: Any = [
        {"role": "user", "content": "Oslo and Bergen?"},
        *({"type": "function_call", "call_id": f"call_{key}", "name": "get_weather",
           "arguments": json.dumps({"city": city})} for key, city in (("A", "Oslo"), ("B", "Bergen"))),
        {"type": "function_call_output", "call_id": "call_A", "output": "-3"},
        {"type": "function_call_output", "call_id": "call_B", "output": [{"type": "input_text", "text": "4"}]},
    ]
    response = respond(client, streamed, model=f"to-{provider}", tools=[WEATHER], input=items)
    assert response.output_text == "Oslo -3, Bergen 4."
    if provider == "anthropic":
        sent = fakes.anthropic.last.body["messages"]
        assert [block["type"] for block in sent[1]["content"]] == ["tool_use", "tool_use"]
        assert sent[2]["content"] == [
            {"type": "tool_result", "tool_use_id": "call_A", "content": "-3"},
            {"type": "tool_result", "tool_use_id": "call_B", "content": [{"type": "text", "text": "4"}]}]
    elif provider == "gemini":
        parts = fakes.gemini.last.body["contents"][2]["parts"]
        assert [p["functionResponse"]["response"] for p in parts] == [{"output": "-3"}, {"output": "4"}]
    else:
        sent = fakes.openai.last.body["messages"]
        assert [(m["role"], m.get("tool_call_id")) for m in sent[2:]] == [("tool", "call_A"), ("tool", "call_B")]


def test_a_call_loop_through_the_sdk_objects(client: openai.OpenAI, fakes: Upstreams, streamed: bool) -> None:
    """What an agent does: the answer's output items go back as they came, followed by the outputs."""
    queue_calls(fakes, "gemini", [("c1", "get_weather", {"city": "Oslo"})], streamed)
    first = respond(client, streamed, model="to-gemini-3", tools=[WEATHER], input="Weather in Oslo?",
                    include=["reasoning.encrypted_content"])
    [call] = [item for item in first.output if item.type == "function_call"]
    fakes.gemini.queue(gemini.Text("It snows."))
    items: Any = [{"role": "user", "content": "Weather in Oslo?"},
                  *(item.model_dump(exclude_none=True) for item in first.output),
                  {"type": "function_call_output", "call_id": call.call_id, "output": "-3, snow"}]
    second = respond(client, streamed, model="to-gemini-3", tools=[WEATHER], input=items)
    assert second.output_text == "It snows."
    parts = fakes.gemini.last.body["contents"][1]["parts"]
    assert parts[0]["functionCall"]["name"] == "get_weather"
    assert parts[0].get("thoughtSignature"), "the signature rode in the reasoning item's encrypted_content"


def test_the_event_stream_fits_the_sdk_models(upstreams_and_proxy: tuple[Upstreams, str], fakes: Upstreams) -> None:
    fakes.anthropic.queue(AnthropicStream.of("claude-sonnet-4-5", [
        ({"type": "thinking", "thinking": "", "signature": ""},
         [{"type": "thinking_delta", "thinking": "Plan."}, {"type": "signature_delta", "signature": "sig"}]),
        ({"type": "text", "text": ""},
         [{"type": "text_delta", "text": "Let me"}, {"type": "text_delta", "text": " look."}]),
        ({"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
         [{"type": "input_json_delta", "partial_json": piece} for piece in ('{"city":', '"Oslo"}')]),
    ], "tool_use"))
    events = wire_events(upstreams_and_proxy[1], {"model": "to-anthropic", "input": "x", "tools": [WEATHER]})
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    for expected in ("response.output_item.added", "response.output_text.delta",
                     "response.reasoning_summary_text.delta", "response.function_call_arguments.delta",
                     "response.output_item.done"):
        assert expected in kinds
    final = Response.model_validate(events[-1]["response"])
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    assert final.output_text == "Let me look."
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    assert added == [0, 1, 2]


def test_namespace_tools_flattened_and_mapped_back_hosted_tools_dropped(client: openai.OpenAI,
                                                                         fakes: Upstreams) -> None:
    namespace: Any = {"type": "namespace", "name": "agents", "description": "Sub-agents",
                      "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object"}}]}
    queue_calls(fakes, "anthropic", [("toolu_2", "agents__spawn", {"task": "x"})], True)
    response = respond(client, True, model="to-anthropic", input="Go",
                       tools=[WEATHER, namespace, {"type": "web_search"}])
    [call] = [item for item in response.output if item.type == "function_call"]
    assert (call.name, call.namespace) == ("spawn", "agents")
    assert [t["name"] for t in fakes.anthropic.last.body["tools"]] == ["get_weather", "agents__spawn"]
    queue_text_message(fakes, "anthropic", "Spawned.", False)
    back: Any = [{"role": "user", "content": "Go"}, call.model_dump(exclude_none=True),
                 {"type": "function_call_output", "call_id": call.call_id, "output": "ok"}]
    respond(client, False, model="to-anthropic", input=back, tools=[namespace])
    assert fakes.anthropic.last.body["messages"][1]["content"][0]["name"] == "agents__spawn"


def test_a_codex_request_is_served(upstreams_and_proxy: tuple[Upstreams, str], fakes: Upstreams) -> None:
    """Codex 0.171's real request (developer messages, namespace and web_search tools, include,
    prompt_cache_key, client_metadata) goes through."""
    body = json.loads(CODEX_FIXTURE.read_text(encoding="utf-8"))
    fakes.anthropic.queue(AnthropicStream.text("Done.", chunks=["Do", "ne."]))
    events = wire_events(upstreams_and_proxy[1], {**body, "model": "to-anthropic"})
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "Done."
    sent = fakes.anthropic.last.body
    assert sent["system"].startswith("You are a coding agent running in the Codex CLI")
    assert "web_search" not in json.dumps(sent["tools"])
    assert sent["messages"][-1]["content"][0]["type"] == "tool_result"


@pytest.mark.parametrize(("extra", "wording"), [
    ({"store": True}, "store: true is not supported"),
    ({"previous_response_id": "resp_1"}, "previous_response_id: not supported"),
    ({"temperature": 3}, "temperature: range"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "item_reference"),
    ({"tools": [{"type": "custom", "name": "apply_patch"}]}, "custom tool apply_patch"),
])
def test_what_needs_state_or_is_unsupported_is_refused(client: openai.OpenAI, extra: dict[str, Any],
                                                       wording: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="to-anthropic", **{"input": "x", **extra})
    assert wording in caught.value.message
    assert caught.value.body is not None and caught.value.body["type"] == "invalid_request_error"


def test_error_inside_a_stream_is_response_failed(upstreams_and_proxy: tuple[Upstreams, str],
                                                  fakes: Upstreams) -> None:
    fakes.anthropic.queue(AnthropicStream.text("Hello", cut_after=4))
    events = wire_events(upstreams_and_proxy[1], {"model": "to-anthropic", "input": "x"})
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"


def test_streamed_text_arrives_in_pieces(upstreams_and_proxy: tuple[Upstreams, str], fakes: Upstreams) -> None:
    pieces = [f"word{i} " for i in range(30)]
    queue_text(fakes, "gemini", pieces)
    events = wire_events(upstreams_and_proxy[1], {"model": "to-gemini", "input": "Count"})
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == pieces


@pytest.mark.parametrize("provider", ["gemini", "anthropic"])
def test_upstream_errors_in_openai_envelope(client: openai.OpenAI, fakes: Upstreams, provider: str,
                                            streamed: bool) -> None:
    """A refusal before the answer starts is an OpenAI error with OpenAI's status, streamed or not."""
    if provider == "gemini":
        fakes.gemini.queue(gemini.Error(429, "quota"))
    else:
        fakes.anthropic.queue(AnthropicError(429, "rate_limit_error", "slow down"))
    with pytest.raises(openai.RateLimitError) as caught:
        respond(client, streamed, model=f"to-{provider}", input="x")
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "rate_limit_exceeded"


def test_fallback_to_the_next_target(client: openai.OpenAI, fakes: Upstreams, streamed: bool) -> None:
    fakes.anthropic.queue(AnthropicError(529, "overloaded_error", "Overloaded"))
    fakes.openai.queue(oai.Text(chunks=["From ", "OpenAI."]))
    response = respond(client, streamed, model="to-fallback", input="x")
    assert response.output_text == "From OpenAI."


def test_unknown_key_is_refused_in_openai_envelope(upstreams_and_proxy: tuple[Upstreams, str]) -> None:
    answer = httpx.post(f"{upstreams_and_proxy[1]}/v1/responses", headers={"authorization": "Bearer wrong"},
                        json={"model": "to-anthropic", "input": "x"})
    assert answer.status_code == 401
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
