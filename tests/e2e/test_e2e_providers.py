"""Every OpenAI-compatible provider through a running proxy: the anthropic SDK in front, a fake
upstream that speaks the provider's dialect behind.

One `FakeOpenAI` per provider (its `Dialect` from fakes/dialects.py), all served on one socket by
path (``/<provider>/v1/...``), and one proxy whose config names every provider with its own rule
set. The client picks a provider by asking for ``provider/model``. Each fake answers 400, in the
provider's own words, to a body that breaks one of the provider's rules (Mistral's tool-call ids,
DeepSeek's reasoning_content, ...), and each test's teardown fails if a fake refused a body or saw
one leave the SDK types, so every scenario that passes shows the rules keep the provider's rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types import Message
from e2e import support
from e2e.support import NO_RETRIES, WEATHER_TOOL, serve_proxy, user
from fakes import DIALECTS, Call, Chunks, Error, FakeOpenAI, Reasoning, Text, ToolCalls, Usage, chunk, serve_app
from fakes.asgi import is_http_request
from fakes.server import Receive, Scope, Send

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Target:
    """A provider as a config names it: its name, rule set, a model it serves and its key."""

    name: str
    rules: str
    model: str
    key: str | None
    reasoning_field: str | None = None
    """Where its reasoning arrives (None: the provider sends none the fake speaks)."""

    @property
    def route(self) -> str:
        return f"{self.name}/{self.model}"

    @property
    def omits_call_index(self) -> bool:
        return DIALECTS[self.rules].omit_tool_call_index


TARGETS = (
    Target("deepseek", "deepseek", "deepseek-reasoner", "sk-deepseek-e2e", "reasoning_content"),
    Target("openrouter", "openrouter", "anthropic/claude-sonnet-4", "sk-or-e2e", "reasoning"),
    Target("groq", "groq", "openai/gpt-oss-120b", "gsk-e2e", "reasoning"),
    Target("xai", "xai", "grok-3-mini", "xai-e2e", "reasoning_content"),
    Target("mistral", "mistral", "mistral-large-latest", "mistral-e2e"),
    Target("ollama", "ollama", "qwen3:8b", None, "reasoning"),
    Target("local", "openai-compatible", "qwen2.5-coder-32b-instruct", None, "reasoning_content"),
)
BY_NAME = {target.name: target for target in TARGETS}
OPENROUTER_TITLE = "ccproxy e2e suite"

ARGUMENTS = {"city": "Trondheim", "days": [1, 2, 3], "note": 'quotes " and unicode é ✓ survive splitting',
             "nested": {"deep": {"flag": True, "value": None}}}
# Mistral issues tool-call ids of 9 letters and digits; every other provider takes them too
OSLO_ID, BERGEN_ID = "oSl0aB3dE", "bErG3nX9q"
CLAUDE_ID = "toolu_01A09q90qw90lq917835lq9"


class ByPrefix:
    """One ASGI app serving several: ``/<name>/rest`` goes to `apps[name]` as ``/rest``."""

    def __init__(self, apps: dict[str, FakeOpenAI]) -> None:
        self.apps = apps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await is_http_request(scope, receive, send):
            return
        name, _, rest = scope["path"].lstrip("/").partition("/")
        await self.apps[name]({**scope, "path": f"/{rest}"}, receive, send)


@dataclass(frozen=True)
class Upstreams:
    fakes: dict[str, FakeOpenAI]
    url: str


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    fakes = {t.name: FakeOpenAI(api_key=t.key, dialect=DIALECTS[t.rules]) for t in TARGETS}
    with serve_app(ByPrefix(fakes)) as url:
        yield Upstreams(fakes, url)


@pytest.fixture(scope="module")
def proxy_url(upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The proxy for this module (conftest's `client` talks to it): every provider, keys as given."""
    url = upstreams.url
    lines = [f"server: {{{NO_RETRIES}}}", "providers:"]
    for t in TARGETS:
        settings = {"rules": t.rules, "base_url": f"{url}/{t.name}/v1"}
        if t.key:
            settings["api_key"] = t.key
        if t.name == "openrouter":
            lines.append(f"  {t.name}: {json.dumps({**settings, 'headers': {'X-Title': OPENROUTER_TITLE}})}")
        else:
            lines.append(f"  {t.name}: {json.dumps(settings)}")
    lines += ["routes:", f"  default: {TARGETS[0].route}"]
    config = tmp_path_factory.mktemp("providers") / "ccproxy.yaml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with serve_proxy(Path(config)) as proxy:
        yield proxy


@pytest.fixture(params=[t.name for t in TARGETS])
def target(request: pytest.FixtureRequest) -> Target:
    return BY_NAME[request.param]


@pytest.fixture
def fake(upstreams: Upstreams, target: Target) -> Iterator[FakeOpenAI]:
    """The target's fake, reset; afterwards it must have refused nothing and seen only valid bodies."""
    upstream = upstreams.fakes[target.name]
    upstream.reset()
    yield upstream
    refused = [f"request {i}: {r.status} {r.problems}" for i, r in enumerate(upstream.requests) if r.problems]
    assert not refused, f"{target.name} refused bodies the rules built:\n" + "\n".join(refused)
    upstream.assert_valid_with_sdk_types()


def ask(client: anthropic.Anthropic, target: Target, streamed: bool, **params: Any) -> Message:
    """`e2e.support.ask`, asking the target's model unless told otherwise."""
    params.setdefault("model", target.route)
    return support.ask(client, streamed, **params)


def error_message(error: anthropic.APIStatusError) -> str:
    body: Any = error.body
    return str(body["error"]["message"])


def tool_chunk(target: Target, call: dict[str, Any]) -> dict[str, Any]:
    """A tool-call fragment as the provider streams it (Ollama's carry no index)."""
    if target.omits_call_index:
        call = {k: v for k, v in call.items() if k != "index"}
    return chunk({"tool_calls": [call]})


# --- every provider ------------------------------------------------------------------------------


def test_text(client: anthropic.Anthropic, fake: FakeOpenAI, target: Target, streamed: bool) -> None:
    fake.queue(Text(f"Hello from {target.name}."))
    message = ask(client, target, streamed, system="Be brief.")
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", f"Hello from {target.name}.")]
    assert (message.stop_reason, message.model) == ("end_turn", target.route)
    sent = fake.last
    assert sent.path == "/v1/chat/completions"
    assert sent.headers.get("authorization") == (f"Bearer {target.key}" if target.key else None)
    assert sent.body["model"] == target.model
    assert sent.body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert sent.body.get("stream", False) is streamed
    assert "max_tokens" in sent.body or "max_completion_tokens" in sent.body


def test_tool_call_with_arguments_in_20_fragments(client: anthropic.Anthropic, fake: FakeOpenAI, target: Target,
                                                  streamed: bool) -> None:
    fake.queue(ToolCalls([Call("get_weather", ARGUMENTS, id=OSLO_ID)], split=20))
    message = ask(client, target, streamed, tools=[WEATHER_TOOL], messages=user("Weather?"))
    assert message.stop_reason == "tool_use"
    [block] = message.content
    assert block.type == "tool_use"
    assert (block.id, block.name, block.input) == (OSLO_ID, "get_weather", ARGUMENTS)


def test_two_parallel_tool_calls(client: anthropic.Anthropic, fake: FakeOpenAI, target: Target,
                                 streamed: bool) -> None:
    fake.queue(ToolCalls([Call("get_weather", {"city": "Oslo"}, id=OSLO_ID),
                          Call("get_weather", {"city": "Bergen"}, id=BERGEN_ID)], split=3))
    message = ask(client, target, streamed, tools=[WEATHER_TOOL], messages=user("Oslo and Bergen?"))
    assert [(b.type, getattr(b, "id", None), getattr(b, "input", None)) for b in message.content] == [
        ("tool_use", OSLO_ID, {"city": "Oslo"}), ("tool_use", BERGEN_ID, {"city": "Bergen"})]


def test_text_then_tool_then_text_keeps_order(client: anthropic.Anthropic, fake: FakeOpenAI,
                                              target: Target) -> None:
    head = {"index": 0, "id": OSLO_ID, "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    fake.queue(Chunks([
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me check. "}),
        tool_chunk(target, head),
        tool_chunk(target, {"index": 0, "function": {"arguments": '{"city": '}}),
        tool_chunk(target, {"index": 0, "function": {"arguments": '"Oslo"}'}}),
        chunk({"content": "Checking now."}),
        chunk({}, "tool_calls"),
    ]))
    message = ask(client, target, True, tools=[WEATHER_TOOL], messages=user("Weather?"))
    assert [b.type for b in message.content] == ["text", "tool_use", "text"]
    assert message.content[1].input == {"city": "Oslo"}  # type: ignore[union-attr]
    assert message.content[2].text == "Checking now."  # type: ignore[union-attr]


def test_tool_loop_round_trip_is_accepted(client: anthropic.Anthropic, fake: FakeOpenAI, target: Target,
                                          streamed: bool) -> None:
    """The client sends the answer back as it got it (thinking included), with the tool's result and
    a note: the provider's fake checks the second body against all its rules."""
    first = ToolCalls([Call("get_weather", {"city": "Oslo"}, id=OSLO_ID)])
    fake.queue(Reasoning("Oslo needs a lookup.", then=first, field=target.reasoning_field)
               if target.reasoning_field else first)
    fake.queue(Text("It snows in Oslo."))
    question = user("Weather in Oslo?")
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    answer = ask(client, target, streamed, tools=[WEATHER_TOOL], messages=question, thinking=thinking,
                 max_tokens=2048)
    assert [b.type for b in answer.content] == (["thinking", "tool_use"] if target.reasoning_field else ["tool_use"])
    follow_up: Any = [
        *question,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in answer.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": OSLO_ID, "content": "-3 C, snow"},
                                     {"type": "text", "text": "Answer in one line."}]},
    ]
    final = ask(client, target, streamed, tools=[WEATHER_TOOL], messages=follow_up, thinking=thinking,
                max_tokens=2048)
    assert final.content[0].text == "It snows in Oslo."  # type: ignore[union-attr]
    sent = fake.last.body["messages"]
    calls = [m for m in sent if m.get("tool_calls")]
    results = [m for m in sent if m["role"] == "tool"]
    assert [c["id"] for c in calls[0]["tool_calls"]] == [results[0]["tool_call_id"]] == [OSLO_ID]


@pytest.mark.parametrize("target", [t for t in TARGETS if t.reasoning_field], ids=lambda t: t.name)
def test_reasoning_becomes_thinking(client: anthropic.Anthropic, fake: FakeOpenAI, target: Target,
                                    streamed: bool) -> None:
    fake.queue(Reasoning(chunks=["First, ", "think."], then=Text(chunks=["The ", "answer."]),
                         field=target.reasoning_field))
    message = ask(client, target, streamed)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "First, think."  # type: ignore[union-attr]
    assert message.content[0].signature.startswith("ccpx1.")  # type: ignore[union-attr]
    assert message.content[1].text == "The answer."  # type: ignore[union-attr]


def test_rate_limit_keeps_retry_after(client: anthropic.Anthropic, fake: FakeOpenAI, target: Target,
                                      streamed: bool) -> None:
    fake.queue(Error(429, "Rate limit reached", retry_after=7))
    with pytest.raises(anthropic.RateLimitError) as caught:
        ask(client, target, streamed)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body["error"]["message"].startswith(f"[{target.name}] ")  # type: ignore[index]


def test_server_error_is_api_error(client: anthropic.Anthropic, fake: FakeOpenAI, target: Target) -> None:
    fake.queue(Error(500, "upstream exploded"))
    with pytest.raises(anthropic.InternalServerError) as caught:
        ask(client, target, True)
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_more_tools_than_the_model_takes_are_refused_here(client: anthropic.Anthropic, fake: FakeOpenAI,
                                                          target: Target) -> None:
    tools = [{**WEATHER_TOOL, "name": f"tool_{i}"} for i in range(129)]
    with pytest.raises(anthropic.BadRequestError) as caught:
        ask(client, target, False, tools=tools)
    assert error_message(caught.value) == f"model {target.model} takes at most 128 tools; this request has 129"
    assert fake.requests == [], "refused before reaching the provider"


# --- what only some providers have ---------------------------------------------------------------


def only(*names: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("target", [BY_NAME[name] for name in names], ids=list(names))


@only("deepseek", "groq", "mistral", "ollama", "local")
def test_images_to_a_text_only_model_are_refused_here(client: anthropic.Anthropic, fake: FakeOpenAI,
                                                      target: Target) -> None:
    image: Any = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with pytest.raises(anthropic.BadRequestError) as caught:
        ask(client, target, False, messages=[{"role": "user", "content": [image]}])
    assert error_message(caught.value) == f"model {target.model} does not accept images"
    assert fake.requests == []


@only("deepseek")
def test_deepseek_reasoning_goes_back_empty_when_the_client_dropped_it(client: anthropic.Anthropic,
                                                                       fake: FakeOpenAI, target: Target) -> None:
    fake.queue(Text("Done.", usage=Usage(prompt=1200, completion=5, cached=1024)))
    messages: Any = [
        {"role": "user", "content": "List."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01", "name": "get_weather",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "sunny"}]},
    ]
    message = ask(client, target, True, tools=[WEATHER_TOOL], messages=messages)
    assert fake.last.body["messages"][1]["reasoning_content"] == ""
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (176, 1024)


@only("openrouter")
def test_openrouter_attribution_and_the_configs_title(client: anthropic.Anthropic, fake: FakeOpenAI,
                                                      target: Target) -> None:
    fake.queue(Text("hi"))
    ask(client, target, True)
    headers = fake.last.headers
    assert headers["x-title"] == OPENROUTER_TITLE
    assert headers["http-referer"] == "https://github.com/ccproxy-engine/ccproxy-engine"


@only("openrouter")
def test_openrouter_model_without_tool_endpoints_is_a_clear_400(client: anthropic.Anthropic, fake: FakeOpenAI,
                                                                target: Target) -> None:
    fake.queue(Error(404, "No endpoints found that support tool use. To learn more about provider routing, "
                          "visit: https://openrouter.ai/docs/provider-routing"))
    with pytest.raises(anthropic.BadRequestError) as caught:
        ask(client, target, True, tools=[WEATHER_TOOL])
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "no OpenRouter endpoint for this model supports" in error_message(caught.value)


@only("openrouter")
def test_openrouter_out_of_credits_is_billing(client: anthropic.Anthropic, fake: FakeOpenAI,
                                              target: Target) -> None:
    fake.queue(Error(402, "This request requires more credits"))
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask(client, target, False)
    assert caught.value.status_code == 402
    assert caught.value.body["error"]["type"] == "billing_error"  # type: ignore[index]


@only("mistral")
def test_mistral_takes_client_ids_and_a_note_after_tool_results(client: anthropic.Anthropic, fake: FakeOpenAI,
                                                                 target: Target) -> None:
    """Claude Code's own ids (toolu_...) and a text block next to the tool results: Mistral's fake
    refuses both unless the rules hash the ids and put an assistant message between."""
    fake.queue(Text("Both cities are cold."))
    messages: Any = [
        {"role": "user", "content": "Oslo and Bergen?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": CLAUDE_ID, "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": BERGEN_ID, "name": "get_weather", "input": {"city": "Bergen"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": CLAUDE_ID, "content": "-3 C"},
            {"type": "tool_result", "tool_use_id": BERGEN_ID, "content": "2 C"},
            {"type": "text", "text": "Summarize."},
        ]},
    ]
    message = ask(client, target, True, tools=[WEATHER_TOOL], messages=messages)
    assert message.content[0].text == "Both cities are cold."  # type: ignore[union-attr]
    sent = fake.last.body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool", "assistant", "user"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == [sent[2]["tool_call_id"], sent[3]["tool_call_id"]]
    assert sent[1]["tool_calls"][1]["id"] == BERGEN_ID
    assert "stream_options" not in fake.last.body


@only("xai")
def test_xai_counts_reasoning_tokens_as_output(client: anthropic.Anthropic, fake: FakeOpenAI, target: Target,
                                               streamed: bool) -> None:
    fake.queue(Text("ok", usage=Usage(prompt=30, completion=100, reasoning=90)))
    message = ask(client, target, streamed)
    assert message.usage.output_tokens == 100
