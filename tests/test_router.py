"""Route precedence: explicit provider/model, then routes.models (exact, globs in order), then default."""

from pathlib import Path

import pytest

from ccproxy_engine._config import ProviderSettings, Routes, RouteTarget, Settings, load_config
from ccproxy_engine._errors import RouteError
from ccproxy_engine._router import Router

CONFIG = """
providers:
  openai: {base_url: "http://up.test/v1", api_key: k}
  local: {rules: openai, base_url: "http://local.test/v1", api_key: k}
routes:
  default: openai/gpt-4.1
  models:
    claude-opus-4-1: openai/o3
    "claude-haiku-*": local/qwen3
    "claude-*": [local/big, openai/gpt-4.1]
"""


@pytest.fixture
def router(tmp_path: Path) -> Router:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return Router(load_config(path, env={}, available_rules={"openai"}))


@pytest.mark.parametrize(
    ("model", "expected", "reason"),
    [
        ("openai/gpt-4.1-mini", "openai/gpt-4.1-mini", "explicit"),
        ("local,qwen3-32b", "local/qwen3-32b", "explicit"),
        ("openrouter/x-ai/grok-4", "openai/gpt-4.1", "default"),  # unknown provider: not explicit
        ("claude-opus-4-1", "openai/o3", "model"),
        ("claude-haiku-4-5-20251001", "local/qwen3", "model"),
        ("claude-sonnet-4-5", "local/big", "model"),
        ("gpt-4o", "openai/gpt-4.1", "default"),
    ],
)
def test_route_precedence(router: Router, model: str, expected: str, reason: str) -> None:
    route = router.route({"model": model})
    assert str(route.primary) == expected
    assert route.reason == reason
    assert route.header() == f"{expected}; reason={reason}"


def test_a_route_list_keeps_its_fallbacks_in_order(router: Router) -> None:
    route = router.route({"model": "claude-sonnet-4-5"})
    assert [str(t) for t in route.targets] == ["local/big", "openai/gpt-4.1"]


def test_no_default_and_no_match_is_a_clear_400() -> None:
    # the config schema requires routes.default; a Settings built in code may still lack it
    settings = Settings(host="127.0.0.1", port=1, api_key=None, source="<test>",
                        providers={"openai": ProviderSettings("openai", "openai", None)},
                        routes=Routes(default=[], models={"claude-x": [RouteTarget("openai", "o3")]}))
    with pytest.raises(RouteError) as caught:
        Router(settings).route({"model": "claude-y"})
    assert caught.value.status == 400
    assert "claude-y" in caught.value.message
