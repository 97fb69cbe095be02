"""OpenRouter's structured reasoning through a running proxy: the anthropic SDK in front, the fake
OpenRouter behind.

Gemini and OpenAI models on OpenRouter return `reasoning_details` with `reasoning.encrypted` items
beside their text or summary, and OpenRouter wants the whole sequence back, unmodified and in its
original order, on the next turn ("preserving reasoning"). The client keeps it as a thinking block
and redacted_thinking blocks whose envelopes carry the details; the fake refuses details that come
back out of order, and each test checks that the next turn carries exactly what was returned.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from e2e.support import WEATHER_TOOL, ask, serve_proxy, user
from fakes import DIALECTS, Call, FakeOpenAI, ReasoningDetails, Text, ToolCalls, serve_app

from ccproxy_engine._functions import is_engine_signature

pytestmark = pytest.mark.e2e

KEY = "sk-or-reasoning-e2e"
GEMINI = [
    {"type": "reasoning.text", "text": "The user wants the weather; I will call the tool.",
     "format": "google-gemini-v1", "index": 0},
    {"type": "reasoning.encrypted", "data": "CiQB0e2Kb3LnQmVyZ2Vu", "id": "tool_get_weather_1",
     "format": "google-gemini-v1", "index": 0},
]
OPENAI = [
    {"type": "reasoning.summary", "summary": "Checking the forecast tool first.", "format": "openai-responses-v1",
     "index": 0},
    {"type": "reasoning.encrypted", "data": "gAAAAABoEncryptedReasoning==", "id": "rs_0123",
     "format": "openai-responses-v1", "index": 1},
]
CLAUDE = [
    {"type": "reasoning.text", "text": "A lookup is needed.", "signature": "EqABCkgIARor",
     "format": "anthropic-claude-v1", "index": 0},
]
MODELS = {"gemini": ("google/gemini-2.5-pro", GEMINI), "openai": ("openai/gpt-5", OPENAI),
          "claude": ("anthropic/claude-sonnet-4", CLAUDE)}


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI(api_key=KEY, dialect=DIALECTS["openrouter"])
    with serve_app(fake) as url:
        yield fake, url


@pytest.fixture(scope="module")
def proxy_url(upstream: tuple[FakeOpenAI, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = tmp_path_factory.mktemp("openrouter") / "ccproxy.yaml"
    config.write_text(
        "providers:\n"
        f"  openrouter: {{base_url: '{upstream[1]}/v1', api_key: {KEY}}}\n"
        "routes:\n"
        "  default: openrouter/google/gemini-2.5-pro\n",
        encoding="utf-8",
    )
    with serve_proxy(Path(config)) as url:
        yield url


@pytest.fixture
def fake(upstream: tuple[FakeOpenAI, str]) -> Iterator[FakeOpenAI]:
    """The fake, reset; afterwards it must have refused nothing and seen only valid bodies."""
    upstream[0].reset()
    yield upstream[0]
    refused = [f"request {i}: {r.status} {r.problems}" for i, r in enumerate(upstream[0].requests) if r.problems]
    assert not refused, "OpenRouter refused bodies the rules built:\n" + "\n".join(refused)
    upstream[0].assert_valid_with_sdk_types()


@pytest.mark.parametrize("vendor", list(MODELS))
def test_reasoning_details_come_back_whole_and_in_order(client: anthropic.Anthropic, fake: FakeOpenAI,
                                                        streamed: bool, vendor: str) -> None:
    model, details = MODELS[vendor]
    call = Call("get_weather", {"city": "Bergen"}, id="tool_get_weather_1")
    fake.queue(ReasoningDetails(details=details, then=ToolCalls([call])), Text("It rains in Bergen."))
    params: dict[str, Any] = {"model": f"openrouter/{model}", "max_tokens": 4096,
                              "thinking": {"type": "enabled", "budget_tokens": 2048}, "tools": [WEATHER_TOOL]}
    first = ask(client, streamed, messages=user("Weather in Bergen?"), **params)
    kinds = [block.type for block in first.content]
    encrypted = [d for d in details if d["type"] == "reasoning.encrypted"]
    assert kinds == ["thinking", *["redacted_thinking"] * len(encrypted), "tool_use"]
    assert first.content[0].thinking == str(details[0].get("text") or details[0].get("summary"))
    envelopes = [getattr(block, "signature", None) or getattr(block, "data", None) for block in first.content[:-1]]
    assert all(is_engine_signature(envelope) for envelope in envelopes), "reasoning is carried in envelopes"

    history = [*user("Weather in Bergen?"),
               {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "rain"}]}]
    second = ask(client, streamed, messages=history, **params)
    assert second.content[0].type == "text" and second.content[0].text == "It rains in Bergen."
    replayed = fake.last.body["messages"][1]
    assert replayed["role"] == "assistant" and replayed["tool_calls"][0]["id"] == call.id
    assert replayed["reasoning_details"] == details, "the whole sequence, unmodified, in its original order"


def test_the_fake_refuses_details_out_of_order() -> None:
    """What makes the test above meaningful: OpenRouter's fake checks the order it gets them back in."""
    refusal = DIALECTS["openrouter"].check({"messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "x", "reasoning_details": [OPENAI[1], OPENAI[0]]}]})
    assert refusal is not None and "original order" in refusal.message
    assert DIALECTS["openrouter"].check({"messages": [
        {"role": "assistant", "content": "x", "reasoning_details": OPENAI}]}) is None
