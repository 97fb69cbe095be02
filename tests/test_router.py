"""Route precedence, table-driven on real-shaped Claude Code requests (tests/fixtures/claude-code)."""

from __future__ import annotations

import asyncio
import copy
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ccproxy_engine._config import ProviderSettings, Routes, RouteTarget, Settings, load_config
from ccproxy_engine._errors import RouteError
from ccproxy_engine._router import Router

FIXTURES = Path(__file__).parent / "fixtures" / "claude-code"

CONFIG = """
providers:
  openai: {base_url: "http://up.test/v1", api_key: k}
  local: {rules: openai, base_url: "http://local.test/v1", api_key: k}
  gemini: {rules: openai, base_url: "http://gemini.test/v1", api_key: k}
routes:
  default: openai/gpt-4.1
  background: local/qwen3-8b
  think: openai/o3
  long_context: [gemini/gemini-2.5-pro, openai/gpt-4.1]
  long_context_threshold: 60000
  web_search: openai/gpt-4o-search-preview
  image: gemini/gemini-2.5-flash
  models:
    claude-opus-4-1: openai/o3
    "claude-3-5-*": local/llama
"""


def fixture(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / name).read_text())["body"]
    return body


def make_router(tmp_path: Path, text: str = CONFIG) -> Router:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return Router(load_config(path, env={}, available_rules={"openai"}))


def route(router: Router, body: dict[str, Any], tokens: int = 1000) -> Any:
    async def count() -> int:
        return tokens

    return asyncio.run(router.route(body, count))


def main_request() -> dict[str, Any]:
    return fixture("2.1.332-read-notes/002.json")  # claude-opus-5-5, adaptive thinking, 12 tools


def with_(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(body), **changes}


def tagged_system(body: dict[str, Any], target: str) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["system"][2]["text"] += f"\n<CCPROXY-SUBAGENT-MODEL>{target}</CCPROXY-SUBAGENT-MODEL>"
    return body


def tagged_first_user(body: dict[str, Any], target: str) -> dict[str, Any]:
    body = copy.deepcopy(body)
    first = next(m for m in body["messages"] if m["role"] == "user")
    tag = f"<CCPROXY-SUBAGENT-MODEL>{target}</CCPROXY-SUBAGENT-MODEL>"
    first["content"][0]["text"] = tag + first["content"][0]["text"]
    return body


def image_in_tool_result(body: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(body)
    result = body["messages"][-1]["content"][0]
    result["content"] = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}]
    return body


CASES: list[tuple[str, Any, int, str, str]] = [
    # (name, request factory, token estimate, expected target, reason)
    ("main turn (adaptive thinking) → default", main_request, 20000, "openai/gpt-4.1", "default"),
    ("explicit provider/model from /model", lambda: with_(main_request(), model="local/qwen3-32b"), 20000,
     "local/qwen3-32b", "explicit"),
    ("explicit provider,model", lambda: with_(main_request(), model="gemini,gemini-2.5-flash"), 20000,
     "gemini/gemini-2.5-flash", "explicit"),
    ("unknown provider prefix is not explicit", lambda: with_(main_request(), model="nope/x"), 20000,
     "openai/gpt-4.1", "default"),
    ("subagent tag in a system block", lambda: tagged_system(main_request(), "local/coder"), 20000,
     "local/coder", "subagent"),
    ("subagent tag in the first user message", lambda: tagged_first_user(main_request(), "gemini/flash"), 20000,
     "gemini/flash", "subagent"),
    ("models: exact name beats the categories", lambda: with_(main_request(), model="claude-opus-4-1"), 90000,
     "openai/o3", "model"),
    ("models: glob", lambda: with_(main_request(), model="claude-3-5-sonnet-20241022"), 20000,
     "local/llama", "model"),
    ("long conversation → long_context", main_request, 90000, "gemini/gemini-2.5-pro", "long_context"),
    ("warmup on haiku → background", lambda: fixture("2.0.77-edit-config/003.json"), 9000, "local/qwen3-8b",
     "background"),
    ("thinking enabled → think", lambda: with_(main_request(), thinking={"type": "enabled", "budget_tokens": 8000}),
     20000, "openai/o3", "think"),
    ("web search server tool", lambda: with_(fixture("2.0.77-edit-config/002.json"),
                                             tools=[{"type": "web_search_20250305", "name": "web_search"}]),
     5000, "openai/gpt-4o-search-preview", "web_search"),
    ("image inside a tool_result → image", lambda: image_in_tool_result(main_request()), 20000,
     "gemini/gemini-2.5-flash", "image"),
    ("2.0.77 main request → default", lambda: fixture("2.0.77-edit-config/005.json"), 30000, "openai/gpt-4.1",
     "default"),
]


@pytest.mark.parametrize(("name", "factory", "tokens", "expected", "reason"), CASES, ids=[c[0] for c in CASES])
def test_route_precedence(tmp_path: Path, name: str, factory: Any, tokens: int, expected: str, reason: str) -> None:
    decision = route(make_router(tmp_path), factory(), tokens)
    assert (str(decision.primary), decision.reason) == (expected, reason)
    assert decision.header() == f"{expected}; reason={reason}"


def test_the_subagent_tag_is_removed_and_the_rest_left_alone(tmp_path: Path) -> None:
    original = tagged_system(main_request(), "local/coder")
    snapshot = copy.deepcopy(original)
    decision = route(make_router(tmp_path), original)
    assert "CCPROXY-SUBAGENT-MODEL" not in json.dumps(decision.body)
    assert original == snapshot  # the client's body is not mutated
    assert decision.body["messages"] is original["messages"]  # only the changed part is copied


def test_a_route_list_keeps_its_fallbacks_in_order(tmp_path: Path) -> None:
    decision = route(make_router(tmp_path), main_request(), 90000)
    assert [str(t) for t in decision.targets] == ["gemini/gemini-2.5-pro", "openai/gpt-4.1"]


def test_adaptive_thinking_takes_think_only_when_switched_on(tmp_path: Path) -> None:
    switched = CONFIG.replace("  think: openai/o3", "  think: openai/o3\n  think_adaptive: true")
    assert route(make_router(tmp_path, switched), main_request(), 20000).reason == "think"
    assert route(make_router(tmp_path), main_request(), 20000).reason == "default"


def test_tokens_are_counted_only_when_a_route_needs_them(tmp_path: Path) -> None:
    calls = []

    async def count() -> int:
        calls.append(1)
        return 10

    without = CONFIG.replace("  long_context: [gemini/gemini-2.5-pro, openai/gpt-4.1]\n", "")
    decision = asyncio.run(make_router(tmp_path, without).route(main_request(), count))
    assert (calls, decision.tokens) == ([], None)
    decision = asyncio.run(make_router(tmp_path).route(main_request(), count))
    assert (calls, decision.tokens) == ([1], 10)


@pytest.fixture
def custom_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_router.py").write_text(textwrap.dedent("""
        import asyncio, time

        def route(request, tokens):
            if request.get("metadata", {}).get("user_id") == "vip":
                return "gemini/gemini-2.5-pro"
            if request.get("model") == "boom":
                raise RuntimeError("boom")
            if request.get("model") == "slow":
                time.sleep(0.5)
                return "local/slow"
            if request.get("model") == "weird":
                return "nowhere/x"
            return None

        async def route_async(request, tokens):
            await asyncio.sleep(0.5 if request.get("model") == "slow" else 0)
            return ["local/a", "openai/gpt-4.1"] if tokens > 100 else None
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_router", None)
    return "my_router"


@pytest.mark.parametrize(("model", "metadata", "expected", "reason"), [
    ("claude-x", {"user_id": "vip"}, "gemini/gemini-2.5-pro", "custom"),
    ("claude-x", {}, "openai/gpt-4.1", "default"),  # None: the rules decide
    ("boom", {}, "openai/gpt-4.1", "default"),  # it raised
    ("slow", {}, "openai/gpt-4.1", "default"),  # over its time limit
    ("weird", {}, "openai/gpt-4.1", "default"),  # names an unconfigured provider
])
def test_custom_router_and_its_failures(tmp_path: Path, custom_module: str, model: str, metadata: dict[str, Any],
                                        expected: str, reason: str) -> None:
    config = CONFIG + f"  custom: {{function: '{custom_module}:route', timeout: 0.1}}\n"
    decision = route(make_router(tmp_path, config), {"model": model, "metadata": metadata, "messages": []})
    assert (str(decision.primary), decision.reason) == (expected, reason)


def test_async_custom_router_gets_the_token_estimate(tmp_path: Path, custom_module: str) -> None:
    config = CONFIG + f"  custom: {{function: '{custom_module}:route_async', timeout: 0.1}}\n"
    router = make_router(tmp_path, config)
    decision = route(router, {"model": "m", "messages": []}, tokens=500)
    assert [str(t) for t in decision.targets] == ["local/a", "openai/gpt-4.1"]
    assert route(router, {"model": "slow", "messages": []}, tokens=500).reason == "default"


def test_custom_router_that_cannot_be_imported_fails_at_start(tmp_path: Path) -> None:
    config = CONFIG + "  custom: {function: 'no_such_module_xyz:route'}\n"
    with pytest.raises(RouteError, match="no_such_module_xyz:route"):
        make_router(tmp_path, config)


def test_no_default_and_no_match_is_a_clear_400() -> None:
    # the config schema requires routes.default; a Settings built in code may still lack it
    settings = Settings(host="127.0.0.1", port=1, api_key=None, source="<test>",
                        providers={"openai": ProviderSettings("openai", "openai", None)},
                        routes=Routes(default=[], models={"claude-x": [RouteTarget("openai", "o3")]}))
    with pytest.raises(RouteError) as caught:
        route(Router(settings), {"model": "claude-y"})
    assert caught.value.status == 400
    assert "claude-y" in caught.value.message
