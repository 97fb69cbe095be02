"""The fake upstream speaks each provider's dialect: its request rules, error bodies, usage and stream quirks.

The fake is a plain ASGI app, so these tests talk to it in process (httpx's ASGI transport); the
`openai` SDK still reads every dialect's answers, as the proxy's upstream client would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from fakes import DIALECTS, Call, Error, FakeOpenAI, Reasoning, Text, ToolCalls, Usage, dialect, encode_stream

HELLO: Any = [{"role": "user", "content": "Hello"}]


def tool_turn(call_id: str = "call_1", **assistant: Any) -> list[dict[str, Any]]:
    """A conversation whose assistant turn called a tool, and the tool's answer."""
    call = {"id": call_id, "type": "function", "function": {"name": "ls", "arguments": "{}"}}
    return [
        {"role": "user", "content": "List files."},
        {"role": "assistant", "content": "", "tool_calls": [call], **assistant},
        {"role": "tool", "tool_call_id": call_id, "content": "a.txt"},
    ]


@pytest.fixture
async def http() -> AsyncIterator[Any]:
    """`post(fake, body)` → the raw httpx response of the fake for that chat request."""
    clients: list[httpx.AsyncClient] = []

    async def post(fake: FakeOpenAI, body: dict[str, Any]) -> httpx.Response:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=fake), base_url="http://fake")
        clients.append(client)
        return await client.post("/v1/chat/completions", json=body)

    yield post
    for client in clients:
        await client.aclose()


def fake_for(name: str, *script: Any) -> FakeOpenAI:
    return FakeOpenAI(*script, dialect=DIALECTS[name])


def test_every_provider_with_rules_has_a_dialect_and_unknown_ones_speak_openai() -> None:
    assert set(DIALECTS) >= {"openai", "deepseek", "openrouter", "groq", "xai", "mistral", "ollama",
                             "openai-compatible"}
    assert all(d.name == name for name, d in DIALECTS.items())
    assert dialect("acme") is DIALECTS["openai"]


async def test_deepseek_wants_reasoning_back_on_tool_turns_in_thinking_mode(http: Any) -> None:
    fake = fake_for("deepseek", Text("ok"), Text("ok"), Text("ok"))
    missing = await http(fake, {"model": "deepseek-reasoner", "messages": tool_turn()})
    assert missing.status_code == 400
    assert missing.json()["error"]["message"].startswith(
        "Missing `reasoning_content` field in the assistant message at message index 1.")
    echoed = await http(fake, {"model": "deepseek-reasoner", "messages": tool_turn(reasoning_content="")})
    assert echoed.status_code == 200
    thinking_on = {"model": "deepseek-chat", "thinking": {"type": "enabled"}, "messages": tool_turn()}
    assert (await http(fake, thinking_on)).status_code == 400
    assert (await http(fake, {"model": "deepseek-chat", "messages": tool_turn()})).status_code == 200
    assert fake.requests[0].problems == [fake.requests[0].problems[0]]
    assert fake.requests[0].problems[0].startswith("deepseek: Missing `reasoning_content`")


async def test_deepseek_checks_thinking_and_max_tokens(http: Any) -> None:
    fake = fake_for("deepseek", Text("ok"))
    budget = {"model": "deepseek-chat", "messages": HELLO, "thinking": {"type": "enabled", "budget_tokens": 9}}
    assert (await http(fake, budget)).status_code == 400
    too_long = await http(fake, {"model": "deepseek-chat", "messages": HELLO, "max_tokens": 8193})
    assert too_long.json()["error"]["message"] == "Invalid max_tokens value, the valid range of max_tokens is [1, 8192]"
    assert (await http(fake, {"model": "deepseek-reasoner", "messages": HELLO, "max_tokens": 65536})).status_code == 200


async def test_deepseek_reports_cache_hits_in_its_own_usage_fields(http: Any) -> None:
    fake = fake_for("deepseek", Text("ok", usage=Usage(prompt=100, completion=7, cached=60, reasoning=3)))
    usage = (await http(fake, {"model": "deepseek-chat", "messages": HELLO})).json()["usage"]
    assert usage == {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
                     "prompt_cache_hit_tokens": 60, "prompt_cache_miss_tokens": 40,
                     "completion_tokens_details": {"reasoning_tokens": 3}}


async def test_mistral_refuses_ids_role_order_and_extra_fields_in_its_own_shape(http: Any) -> None:
    fake = fake_for("mistral", Text("ok"))
    long_id = await http(fake, {"model": "mistral-large-latest", "messages": tool_turn("call_123")})
    assert (long_id.status_code, long_id.json()) == (400, {
        "object": "error", "message": "Tool call id was call_123 but must be a-z, A-Z, 0-9, with a length of 9.",
        "type": "invalid_function_call", "param": None, "code": "3280"})
    after_tool = [*tool_turn("aB3dE5gH9"), {"role": "user", "content": "Thanks"}]
    order = await http(fake, {"model": "mistral-large-latest", "messages": after_tool})
    assert order.json()["message"] == "Unexpected role 'user' after role 'tool'"
    extra = await http(fake, {"model": "mistral-large-latest", "messages": HELLO, "stream": True,
                              "stream_options": {"include_usage": True}, "user": "u1"})
    assert extra.status_code == 422
    assert [d["loc"] for d in extra.json()["message"]["detail"]] == [["body", "stream_options"], ["body", "user"]]
    fine = await http(fake, {"model": "mistral-large-latest", "messages": tool_turn("aB3dE5gH9")})
    assert fine.status_code == 200


async def test_openrouter_streams_comments_and_answers_errors_in_its_shape(http: Any) -> None:
    fake = fake_for("openrouter", Reasoning("hmm", field="reasoning", then=Text("hi")),
                    Error(402, "Insufficient credits"))
    streamed = await http(fake, {"model": "anthropic/claude-sonnet-4", "messages": HELLO, "stream": True})
    records = streamed.text.split("\n\n")
    assert records[0] == ": OPENROUTER PROCESSING"
    assert '"reasoning":"hmm"' in streamed.text
    broke = await http(fake, {"model": "anthropic/claude-sonnet-4", "messages": HELLO})
    assert broke.json() == {"error": {"message": "Insufficient credits", "code": 402}}


async def test_ollama_streams_tool_calls_without_index_and_refuses_echoed_reasoning(http: Any) -> None:
    fake = FakeOpenAI(ToolCalls([Call("ls", {"path": "."})], split=2), dialect=DIALECTS["ollama"])
    streamed = await http(fake, {"model": "llama3.1", "messages": HELLO, "stream": True})
    fragments = [call for line in streamed.text.splitlines() if line.startswith("data: {")
                 for call in orjson.loads(line[6:])["choices"][0]["delta"].get("tool_calls") or ()]
    assert len(fragments) == 3
    assert all("index" not in fragment for fragment in fragments)
    echoed = await http(fake, {"model": "llama3.1", "messages": tool_turn(reasoning_content="hmm")})
    assert echoed.status_code == 400


async def test_xai_counts_reasoning_beside_completion_tokens(http: Any) -> None:
    fake = fake_for("xai", Text("ok", usage=Usage(prompt=30, completion=100, reasoning=90)))
    usage = (await http(fake, {"model": "grok-3-mini", "messages": HELLO})).json()["usage"]
    assert (usage["completion_tokens"], usage["completion_tokens_details"]["reasoning_tokens"]) == (10, 90)
    refused = await http(fake, {"model": "grok-4", "messages": HELLO, "stop": ["END"]})
    assert refused.json()["error"]["message"] == "Argument not supported on this model: stop"


async def test_groq_refuses_reasoning_format_for_gpt_oss(http: Any) -> None:
    fake = fake_for("groq", Text("ok"))
    body = {"model": "openai/gpt-oss-120b", "messages": HELLO, "reasoning_format": "parsed"}
    assert (await http(fake, body)).status_code == 400
    assert (await http(fake, {**body, "model": "qwen/qwen3-32b"})).status_code == 200


async def test_local_servers_take_max_tokens_and_answer_in_vllm_shape(http: Any) -> None:
    fake = fake_for("openai-compatible")
    refused = await http(fake, {"model": "qwen", "messages": HELLO, "max_completion_tokens": 5})
    assert refused.json() == {"object": "error", "message": "max_completion_tokens is not supported; use max_tokens",
                              "type": "BadRequestError", "param": "max_completion_tokens", "code": 400}


async def test_dialect_keys_pass_the_sdk_type_check_only_in_their_dialect(http: Any) -> None:
    body = {"model": "deepseek-chat", "messages": HELLO, "thinking": {"type": "disabled"}}
    assert (await http(fake_for("deepseek", Text("ok")), body)).status_code == 200
    assert (await http(FakeOpenAI(Text("ok")), body)).status_code == 400


@pytest.mark.parametrize("name", sorted(DIALECTS))
async def test_the_openai_sdk_reads_every_dialect(name: str) -> None:
    fake = fake_for(name, ToolCalls([Call("ls", {"path": "."}, id="aB3dE5gH9")], split=3, text_before="Looking."))
    transport = httpx.AsyncClient(transport=httpx.ASGITransport(app=fake))
    async with openai.AsyncOpenAI(base_url="http://fake/v1", api_key="x", http_client=transport,
                                  max_retries=0) as client:
        chunks = [c async for c in await client.chat.completions.create(model=DIALECTS[name].model,
                                                                         messages=HELLO, stream=True)]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    arguments = "".join(call.function.arguments or "" for c in chunks if c.choices
                        for call in c.choices[0].delta.tool_calls or () if call.function)
    assert (text, orjson.loads(arguments)) == ("Looking.", {"path": "."})


def test_encode_stream_defaults_to_openai() -> None:
    request = {"model": "m", "stream": True}
    plain, commented = encode_stream(Text("hi"), request), encode_stream(Text("hi"), request, DIALECTS["openrouter"])
    assert plain[0].startswith(b"data: {")
    assert commented[0] == b": OPENROUTER PROCESSING\n\n"
    assert len(commented) == 2 * len(plain)
