"""Reload in process: `Reloader` re-reads config *and* rules and swaps the app's pipeline, or keeps
the running one when the new files have errors; `status` shows every extra field of /health."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import serve_app
from litestar import Litestar, get

from ccproxy_engine import create_app
from ccproxy_engine._cli import prepare
from ccproxy_engine._daemon import Instance, status
from ccproxy_engine._reload import Reloader

RULE = """\
extends: openai
defaults:
  base_url: https://{host}/v1
"""
CONFIG = """\
providers:
  acme: {api_key: sk-acme}
routes:
  default: acme/acme-large
"""


@pytest.fixture(autouse=True)
def no_stale_root_handlers() -> Iterator[None]:
    """`main()` run in process by other tests configures the root logger with a stream pytest has
    closed since; the reloads here log, so the root logger's handlers are set aside meanwhile."""
    root = logging.getLogger()
    handlers, root.handlers = root.handlers, []
    yield
    root.handlers = handlers


def proxy_url(app: Litestar) -> str:
    """The URL the app's current pipeline would call for the default route."""
    proxy = app.state.ccproxy.proxy
    call = proxy.endpoints["acme"].prepare({"model": "x", "max_tokens": 1, "messages": []}, model="acme-large")
    url: str = call.request.url
    return url


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "acme.yaml").write_text(RULE.format(host="one.acme.test"))
    config = tmp_path / "ccproxy.yaml"
    config.write_text(CONFIG)
    return config, rules


async def test_a_rule_change_is_reloaded_and_a_broken_one_is_not(files: tuple[Path, Path],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    config, rules = files
    settings, compiled = prepare(config, [rules])
    app = create_app(settings, compiled)
    reloader = Reloader(app, lambda: prepare(config, [rules]), settings, host="127.0.0.1", port=3456)
    assert proxy_url(app) == "https://one.acme.test/v1/chat/completions"
    before = app.state.ccproxy.proxy

    (rules / "acme.yaml").write_text(RULE.format(host="two.acme.test"))
    assert await reloader.reload() is True
    assert proxy_url(app) == "https://two.acme.test/v1/chat/completions"
    after = app.state.ccproxy.proxy
    assert after is not before
    assert (after.upstream, after.tokens) == (before.upstream, before.tokens)  # shared: nothing to close

    (rules / "acme.yaml").write_text(RULE.format(host="three.acme.test") + "respons: {}\n")
    with caplog.at_level(logging.ERROR, logger="ccproxy_engine"):
        assert await reloader.reload() is False
    assert app.state.ccproxy.proxy is after
    assert "reload failed; still serving the previous config" in caplog.text
    assert f"{rules / 'acme.yaml'}:4:1:" in caplog.text and "[unknown-key]" in caplog.text


async def test_a_new_server_key_needs_a_restart(files: tuple[Path, Path], tmp_path: Path) -> None:
    config, rules = files
    settings, compiled = prepare(config, [rules])
    app = create_app(settings, compiled)
    instance = Instance(tmp_path / "state", "test", config)
    instance.directory.mkdir()
    reloader = Reloader(app, lambda: prepare(config, [rules]), settings, host="127.0.0.1", port=3456,
                        instance=instance)
    config.write_text("server: {api_key: sk-new-server-key}\n" + CONFIG)
    assert await reloader.reload() is True
    last = instance.info()["last_reload"]
    assert last["ok"] is True
    assert last["notes"] == ["server.api_key or server.allow_unauthenticated changed: restart to apply it "
                             "(the running server keeps its key)"]


def test_status_shows_every_extra_health_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    @get("/health")
    async def health() -> dict[str, object]:
        return {"status": "ok", "providers": ["acme"], "breakers": {"acme": "closed"}}

    instance = Instance(tmp_path, "test", None)
    lock = instance.claim()
    try:
        with serve_app(Litestar([health])) as url:
            host, port = url.removeprefix("http://").rsplit(":", 1)
            settings, _ = prepare(None, [], env={})
            instance.write_info(settings, host=host, port=int(port), started=0.0)
            assert status(instance) == 0
    finally:
        instance.release()
        lock.close()
    lines = capsys.readouterr().out.splitlines()
    assert "health:    ok" in lines
    assert f"breakers: {json.dumps({'acme': 'closed'})}" in lines
    assert "providers: ollama" in lines
