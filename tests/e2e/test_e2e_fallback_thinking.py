"""A conversation begun on Gemini falls back to Anthropic: its reasoning must not reach Anthropic.

Gemini's turn leaves thinking blocks signed with the engine's envelope (``ccpx1.``) in the client's
history. When Gemini is down on the next turn, the route's fallback sends the history to the
Anthropic passthrough, and the Anthropic fake refuses, as the real API does, a signature it never
issued and a tool loop that lost its thinking while thinking is on. The proxy must drop the foreign
blocks and, for a tool loop in progress, turn thinking off for that request (engine/_thinking.py).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import pytest
from e2e.support import CLIENT_KEY, WEATHER_TOOL, serve_proxy, user
from fakes.anthropic_upstream import AnthropicMessage, AnthropicStream, FakeAnthropic, request_problems
from fakes.gemini_upstream import Call, Calls, Error, FakeGemini, Thoughts
from fakes.server import serve_app

from ccproxy_engine._functions import is_engine_signature

pytestmark = pytest.mark.e2e

GEMINI_KEY, ANTHROPIC_KEY = "gemini-fallback-key", "sk-ant-fallback-key"
THINKING = {"type": "enabled", "budget_tokens": 2048}


@dataclass(frozen=True)
class Fakes:
    gemini: FakeGemini
    claude: FakeAnthropic
    gemini_url: str
    claude_url: str


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    gemini, claude = FakeGemini(api_key=GEMINI_KEY), FakeAnthropic()
    with serve_app(gemini) as gemini_url, serve_app(claude) as claude_url:
        yield Fakes(gemini, claude, gemini_url, claude_url)


@pytest.fixture(scope="module")
def proxy(fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    gemini_url, claude_url = fakes.gemini_url, fakes.claude_url
    config = tmp_path_factory.mktemp("fallback") / "ccproxy.yaml"
    config.write_text(
        "providers:\n"
        f"  gemini: {{base_url: '{gemini_url}/v1beta', api_key: {GEMINI_KEY}}}\n"
        f"  anthropic: {{base_url: '{claude_url}', api_key: {ANTHROPIC_KEY}}}\n"
        "routes:\n"
        "  default: [gemini/gemini-2.5-pro, anthropic/claude-sonnet-4-5]\n",
        encoding="utf-8",
    )
    with serve_proxy(config) as url:
        yield url


@pytest.fixture
def upstreams(fakes: Fakes) -> Iterator[tuple[FakeGemini, FakeAnthropic]]:
    gemini, claude = fakes.gemini, fakes.claude
    gemini.reset()
    claude.reset()
    yield gemini, claude
    gemini.assert_all_accepted()
    assert not [r.problems for r in claude.requests if r.problems], "Anthropic refused what the proxy sent"


@pytest.fixture
def client(proxy: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=proxy, api_key=CLIENT_KEY, max_retries=0, timeout=20) as sdk:
        yield sdk


def gemini_turn(client: anthropic.Anthropic, gemini: FakeGemini) -> list[dict[str, Any]]:
    """Turn 1 on Gemini: a thought and a signed call; the assistant content as the client keeps it."""
    signature = base64.b64encode(b"gemini-thought-signature").decode()
    gemini.queue(Thoughts(["Weather needs a lookup."], signature=signature,
                          then=Calls([Call("get_weather", {"city": "Oslo"})])))
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=4096, thinking=THINKING,
                                     tools=[WEATHER_TOOL], messages=user("Weather in Oslo?"))
    content = [block.model_dump(exclude_none=True) for block in message.content]
    thinking = [block for block in content if block["type"] == "thinking"]
    assert thinking and all(is_engine_signature(block["signature"]) for block in thinking)
    assert content[-1]["type"] == "tool_use"
    return content


def ask_after_outage(client: anthropic.Anthropic, gemini: FakeGemini, streamed: bool,
                     messages: list[Any]) -> str:
    """The next turn: Gemini answers 503, the route falls back to Anthropic; the answer's text."""
    gemini.queue(Error(503, "The model is overloaded. Please try again later."))
    params: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 4096, "thinking": THINKING,
                              "tools": [WEATHER_TOOL], "messages": messages}
    if not streamed:
        raw = client.messages.with_raw_response.create(**params)
        assert raw.headers["x-ccproxy-route"].startswith("anthropic/claude-sonnet-4-5")
        message = raw.parse()
    else:
        with client.messages.stream(**params) as stream:
            message = stream.get_final_message()
    return "".join(block.text for block in message.content if block.type == "text")


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_a_tool_loop_begun_on_gemini_finishes_on_anthropic(
        client: anthropic.Anthropic, upstreams: tuple[FakeGemini, FakeAnthropic], streamed: bool) -> None:
    gemini, claude = upstreams
    content = gemini_turn(client, gemini)
    call_id = content[-1]["id"]
    claude.queue(AnthropicStream.text("It snows in Oslo.") if streamed
                 else AnthropicMessage([{"type": "text", "text": "It snows in Oslo."}]))
    messages = [*user("Weather in Oslo?"), {"role": "assistant", "content": content},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "-3 C, snow"}]}]
    assert ask_after_outage(client, gemini, streamed, messages) == "It snows in Oslo."
    sent = claude.last.body
    assert b"ccpx1." not in claude.last.raw, "no engine envelope may reach Anthropic"
    assert sent["thinking"] == {"type": "disabled"}, "the loop's turn has no thinking Anthropic signed"
    assert sent["messages"][1]["content"] == [block for block in content if block["type"] != "thinking"]
    assert sent["messages"][2] == messages[2]
    assert sent["model"] == "claude-sonnet-4-5"


def test_a_new_turn_after_gemini_keeps_thinking_on(
        client: anthropic.Anthropic, upstreams: tuple[FakeGemini, FakeAnthropic]) -> None:
    gemini, claude = upstreams
    content = gemini_turn(client, gemini)
    call_id = content[-1]["id"]
    claude.queue(AnthropicMessage([{"type": "text", "text": "You're welcome."}]))
    messages = [*user("Weather in Oslo?"), {"role": "assistant", "content": content},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "snow"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "It snows."}]},
                *user("Thanks!")]
    assert ask_after_outage(client, gemini, False, messages) == "You're welcome."
    sent = claude.last.body
    assert sent["thinking"] == THINKING
    assert not any(block.get("type") == "thinking" for m in sent["messages"] if isinstance(m["content"], list)
                   for block in m["content"])


def test_the_anthropic_fake_refuses_what_the_proxy_strips() -> None:
    """The fake's check is what makes the tests above meaningful: unstripped history is refused."""
    envelope = "ccpx1.eyJwIjoiZ2VtaW5pIiwibSI6ImdlbWluaS0yLjUtcHJvIiwiZCI6ImMybG5MVEUifQ"
    body = {"thinking": THINKING, "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": envelope},
                                          {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "snow"}]}]}
    assert request_problems(body) == ["messages.1.content.0: Invalid `signature` in `thinking` block"]
    body["messages"][1]["content"].pop(0)
    [problem] = request_problems(body)
    assert problem.startswith("messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                              "`tool_use`")
    assert request_problems({**body, "thinking": {"type": "disabled"}}) == []
