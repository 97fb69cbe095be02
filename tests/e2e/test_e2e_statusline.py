"""``ccproxy-engine statusline`` against a served proxy: a real Claude Code request goes through, then
the status line command reads Claude Code's status JSON (tests/fixtures/statusline/stdin.json, the
fields Claude Code's statusLine docs list, with the session id of the replayed request) and prints the
model that really answered, its tokens and its cost."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e.support import CLAUDE_CODE_FIXTURES, Recorded, replay, serve_proxy
from fakes import FakeOpenAI, serve_app
from fakes.dialects import DIALECTS
from fakes.openai_upstream import Error, Text, Usage

from ccproxy_engine._cli import main
from ccproxy_engine._statusline import statusline

pytestmark = pytest.mark.e2e

SERVER_KEY = "statusline-server-key"
UPSTREAM_KEY = "sk-statusline-upstream"
STDIN = Path(__file__).parent.parent / "fixtures" / "statusline" / "stdin.json"
#: Claude Code 2.1.197's first request; its metadata.user_id names the session in STDIN.
REQUEST = CLAUDE_CODE_FIXTURES / "2.1.197-write-hello" / "001.json"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    upstream = FakeOpenAI(api_key=UPSTREAM_KEY, dialect=DIALECTS["deepseek"])
    with serve_app(upstream) as url:
        upstream.url = url  # type: ignore[attr-defined]
        yield upstream


@pytest.fixture(scope="module")
def proxy_url(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = tmp_path_factory.mktemp("statusline") / "ccproxy.yaml"
    config.write_text(
        f"server: {{api_key: {SERVER_KEY}, retry: {{attempts: 1}}}}\n"
        f"providers:\n  deepseek: {{base_url: '{fake.url}/v1', api_key: {UPSTREAM_KEY}}}\n"  # type: ignore[attr-defined]
        "routes:\n  default: [deepseek/deepseek-chat]\n",
        encoding="utf-8",
    )
    with serve_proxy(config) as url:
        yield url


def _recorded() -> Recorded:
    """The recorded request, with this server's key in place of the one Claude Code sent."""
    recorded = Recorded.load(REQUEST)
    headers = {k: v for k, v in recorded.headers.items() if k.lower() not in {"x-api-key", "authorization"}}
    return Recorded(recorded.path, {**headers, "x-api-key": SERVER_KEY}, recorded.body)


def _replay(proxy_url: str) -> None:
    with httpx.Client(base_url=proxy_url, timeout=20) as http:
        replay(http, _recorded())


def test_no_request_of_the_session_yet(proxy_url: str) -> None:
    line = statusline(io.StringIO(STDIN.read_text(encoding="utf-8")), proxy_url, SERVER_KEY)
    assert line == "ccproxy: no request of this session yet"


def test_statusline_names_the_model_that_answered(proxy_url: str, fake: FakeOpenAI,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    fake.queue(Text("Hello!", usage=Usage(prompt=1_000_000, completion=20_000, cached=400_000)))
    _replay(proxy_url)
    monkeypatch.setattr(sys, "stdin", io.StringIO(STDIN.read_text(encoding="utf-8")))
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    assert main(["statusline", "--url", proxy_url, "--key", SERVER_KEY]) == 0
    line = capsys.readouterr().out.strip()
    # 600k input at 0.27, 400k cache hits at 0.07, 20k output at 1.10 USD per million (rules/deepseek.yaml)
    cost = (600_000 * 0.27 + 400_000 * 0.07 + 20_000 * 1.10) / 1e6
    assert line.startswith(f"deepseek/deepseek-chat · in 600.0k (cached 400.0k) out 20.0k · ${cost:.4f} · ")
    assert line.endswith(" s")


def test_statusline_shows_the_failure(proxy_url: str, fake: FakeOpenAI) -> None:
    fake.queue(Error(503, "upstream is down"))
    with httpx.Client(base_url=proxy_url, timeout=20) as http:
        recorded = _recorded()
        response = http.post(recorded.path, content=json.dumps(recorded.body), headers=recorded.headers)
        assert response.status_code == 529 or response.status_code >= 500
    line = statusline(io.StringIO(STDIN.read_text(encoding="utf-8")), proxy_url, SERVER_KEY)
    assert line.startswith("deepseek/deepseek-chat · ")
    assert line.endswith(" s · overloaded_error: [deepseek] upstream is down")


def test_statusline_without_the_key_or_the_server(proxy_url: str) -> None:
    stdin = STDIN.read_text(encoding="utf-8")
    assert "key is wrong or missing" in statusline(io.StringIO(stdin), proxy_url, None)
    assert statusline(io.StringIO(stdin), "http://127.0.0.1:9", SERVER_KEY).startswith("ccproxy: not reachable")
    assert statusline(io.StringIO("not json"), proxy_url, SERVER_KEY) == "ccproxy: no session JSON on stdin"
