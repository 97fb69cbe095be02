"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright; nothing is
downloaded): requests sent through the proxy appear in the table, a failed upstream shows its error as
text, the charts render, and the data API refuses a client without the server key.

Without chromium these tests skip on a developer's machine and FAIL under ``CI=true`` (.ci/run
installs it). ``CCPROXY_DASHBOARD_SCREENSHOT=path`` also saves the loaded page as a PNG (the README's
docs/img/dashboard.png is made this way).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from e2e.support import serve_proxy
from fakes import FakeOpenAI, serve_app
from fakes.openai_upstream import Error, Text, Usage

pytestmark = pytest.mark.e2e

UPSTREAM_KEY = "sk-dashboard-upstream-0123456789"
SERVER_KEY = "dashboard-server-key-0123"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: How long the page may take to show what the server has (it polls every second; the machine may be busy).
WAIT_MS = 15_000
MARKUP = "<img src=x onerror=window.__pwned=1><script>window.__pwned=2</script>"


def _chromium_or_skip() -> str:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if path is None:
        message = "Debian's chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeOpenAI, str]]:
    upstream = FakeOpenAI(api_key=UPSTREAM_KEY)
    with serve_app(upstream) as url:
        yield upstream, url


@pytest.fixture(scope="module")
def proxy_url(fake: tuple[FakeOpenAI, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = tmp_path_factory.mktemp("dashboard") / "ccproxy.yaml"
    config.write_text(
        f"server: {{api_key: {SERVER_KEY}, dashboard: {{capture: true}}, retry: {{attempts: 1}}}}\n"
        "providers:\n"
        f"  openai: {{base_url: '{fake[1]}/v1', api_key: {UPSTREAM_KEY}}}\n"
        f"  deepseek: {{base_url: '{fake[1]}/v1', api_key: {UPSTREAM_KEY}}}\n"
        "routes:\n"
        "  default: [openai/gpt-4.1]\n"
        "  background: deepseek/deepseek-chat\n",
        encoding="utf-8",
    )
    with serve_proxy(config) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture(scope="module")
def client(proxy_url: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=proxy_url, api_key=SERVER_KEY, max_retries=0, timeout=20) as sdk:
        yield sdk


def _ask(client: anthropic.Anthropic, text: str, *, stream: bool = False, model: str = "claude-sonnet-4-5") -> None:
    """One request; a haiku model is routed as background work, to DeepSeek (which has a price)."""
    messages: Any = [{"role": "user", "content": text}]
    if stream:
        with client.messages.stream(model=model, max_tokens=64, messages=messages) as events:
            events.get_final_message()
    else:
        client.messages.create(model=model, max_tokens=64, messages=messages)


def _open(page: Any, proxy_url: str) -> None:
    page.goto(f"{proxy_url}/ui#key={SERVER_KEY}")
    page.wait_for_selector("#main:not([hidden])", timeout=WAIT_MS)


def _row(page: Any, text: str) -> Any:
    """The newest finished request whose row shows `text` (the page may have polled while it was in flight)."""
    row = page.locator("#requests tbody tr", has_text=text, has_not=page.locator("td.state-in_flight")).first
    row.wait_for(timeout=WAIT_MS)
    return row


def test_data_api_refuses_a_client_without_the_key(proxy_url: str) -> None:
    with httpx.Client(base_url=proxy_url, timeout=10) as http:
        for path in ("/ui/api/requests", "/ui/api/summary", "/ui/api/requests/nope"):
            refused = http.get(path)
            assert refused.status_code == 401, path
            assert refused.json()["error"]["type"] == "authentication_error"
            assert http.get(path, headers={"x-api-key": "wrong-key-123"}).status_code == 401
            assert http.get(path, headers={"cookie": "ccproxy_key=wrong-key-123"}).status_code == 401
        assert http.get("/ui/api/summary", headers={"x-api-key": SERVER_KEY}).status_code == 200
        assert http.get("/ui/api/summary", headers={"cookie": f"ccproxy_key={SERVER_KEY}"}).status_code == 200
        # the cookie opens only the dashboard's data, not the proxy
        assert http.post("/v1/messages/count_tokens", headers={"cookie": f"ccproxy_key={SERVER_KEY}"},
                         json={"model": "m", "messages": []}).status_code == 401
        shell = http.get("/ui")
        assert shell.status_code == 200
        assert "default-src 'self'" in shell.headers["content-security-policy"]
        assert "<script" in shell.text and "requests" not in shell.headers.get("content-type", "")
        assert http.get("/ui/assets/app.js").status_code == 200
        assert http.get("/ui/assets/..%2Fui%2Findex.html").status_code == 404


def test_page_asks_for_the_key_and_then_shows_the_data(page: Any, proxy_url: str) -> None:
    page.goto(f"{proxy_url}/ui")
    page.wait_for_selector("#login:not([hidden])", timeout=WAIT_MS)
    assert page.locator("#main").is_hidden()
    page.fill("#key", SERVER_KEY)
    page.click("#login button")
    page.wait_for_selector("#main:not([hidden])", timeout=WAIT_MS)
    assert "worker pid" in page.text_content("#worker")


def test_requests_appear_in_the_table_live(page: Any, proxy_url: str, client: anthropic.Anthropic,
                                           fake: tuple[FakeOpenAI, str]) -> None:
    _open(page, proxy_url)  # the page is open before the requests: it updates without a reload
    fake[0].queue(Text("whole answer", usage=Usage(prompt=1200, completion=34, cached=1000)),
                  Text("streamed answer", usage=Usage(prompt=77, completion=9)))
    _ask(client, "first")
    _ask(client, "second", stream=True)
    whole = _row(page, "whole")
    cells = whole.locator("td").all_text_contents()
    assert cells[1] == "default" and cells[2] == "openai/gpt-4.1" and cells[4] == "200"
    assert cells[7:10] == ["200", "34", "1000"]  # input (without cache reads), output, cached
    assert cells[10] == "unknown"  # gpt-4.1 has no price in the rules
    streamed = _row(page, "stream")
    cells = streamed.locator("td").all_text_contents()
    assert cells[4] == "200" and cells[8] == "9" and cells[5].endswith("ms")  # time to first token


def test_cost_comes_from_the_price_in_the_rules(page: Any, proxy_url: str, client: anthropic.Anthropic,
                                                fake: tuple[FakeOpenAI, str]) -> None:
    fake[0].queue(Text("cheap", usage=Usage(prompt=2_000_000, completion=1_000_000)))
    _ask(client, "background work", model="claude-3-5-haiku-20241022")
    _open(page, proxy_url)
    row = _row(page, "deepseek/deepseek-chat")
    cells = row.locator("td").all_text_contents()
    assert cells[1] == "background"
    # rules/deepseek.yaml: USD 0.27 per million input tokens, 1.10 per million output tokens
    assert cells[10] == f"${2 * 0.27 + 1 * 1.10:.3f}"
    models = page.locator("#models tbody tr", has_text="deepseek/deepseek-chat")
    assert models.locator("td").all_text_contents()[-1] == f"${2 * 0.27 + 1 * 1.10:.3f}"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_openai_clients_requests_are_recorded_too(proxy_url: str, fake: tuple[FakeOpenAI, str], stream: bool) -> None:
    fake[0].queue(Text("via chat completions", usage=Usage(prompt=321, completion=12)))
    with openai.OpenAI(base_url=f"{proxy_url}/v1", api_key=SERVER_KEY, max_retries=0, timeout=20) as sdk:
        answer = sdk.chat.completions.create(model="claude-sonnet-4-5", stream=stream,
                                             messages=[{"role": "user", "content": "hi"}])
        if stream:
            for _ in answer:  # type: ignore[union-attr]
                pass
    found = httpx.get(f"{proxy_url}/ui/api/requests?limit=1", headers={"x-api-key": SERVER_KEY}, timeout=10).json()
    record = found["requests"][0]
    assert (record["state"], record["provider"], record["model"]) == ("ok", "openai", "gpt-4.1"), record
    assert record["usage"]["output_tokens"] == 12 and record["stream"] is stream


def test_failed_upstream_shows_its_error_as_text(page: Any, proxy_url: str, client: anthropic.Anthropic,
                                                 fake: tuple[FakeOpenAI, str]) -> None:
    fake[0].queue(Error(500, f"upstream broke {MARKUP}"))
    with pytest.raises(anthropic.InternalServerError):
        _ask(client, "this one fails")
    _open(page, proxy_url)
    row = _row(page, "upstream broke")
    error = row.locator("td.err").text_content()
    assert error.startswith("api_error: [openai] upstream broke") and MARKUP in error
    assert row.locator("td.state-error").text_content() == "500"
    assert page.locator("#requests img, #requests script").count() == 0
    assert page.evaluate("window.__pwned") is None


def test_captured_bodies_are_text_with_keys_masked(page: Any, proxy_url: str, client: anthropic.Anthropic,
                                                   fake: tuple[FakeOpenAI, str]) -> None:
    fake[0].queue(Text(f"{MARKUP} and a key {UPSTREAM_KEY}"))
    _ask(client, f"echo {MARKUP}")
    _open(page, proxy_url)
    _row(page, "whole").click()
    page.wait_for_selector("#detail:not([hidden])", timeout=WAIT_MS)
    sent = page.text_content("#detail-request")
    answer = page.text_content("#detail-answer")
    assert '"model":"gpt-4.1"' in sent and MARKUP in sent
    assert MARKUP in answer and UPSTREAM_KEY not in answer and "[redacted]" in answer
    assert page.locator("#detail img, #detail script").count() == 0
    assert page.evaluate("window.__pwned") is None


def test_charts_render(page: Any, proxy_url: str, client: anthropic.Anthropic, fake: tuple[FakeOpenAI, str]) -> None:
    fake[0].queue(*(Text(f"answer {i}") for i in range(4)))
    for i in range(4):
        _ask(client, f"chart {i}", stream=bool(i % 2))
    _open(page, proxy_url)
    card = page.locator('.card[data-provider="openai"]')
    card.wait_for(timeout=WAIT_MS)
    page.wait_for_function("document.querySelectorAll('.card[data-provider=openai] svg rect.bar').length > 0",
                           timeout=WAIT_MS)
    assert card.locator("svg polyline.p50").get_attribute("points")
    assert card.locator("svg polyline.p99").count() == 1
    assert "breaker closed" in card.text_content()
    assert page.locator("#routes tbody tr", has_text="default").count() == 1
    assert page.locator("#models tbody tr", has_text="openai/gpt-4.1").count() >= 1
    if target := os.environ.get("CCPROXY_DASHBOARD_SCREENSHOT"):
        _screenshot_under_load(page, client, fake[0], Path(target))


def _screenshot_under_load(page: Any, client: anthropic.Anthropic, fake: FakeOpenAI, target: Path) -> None:
    """The README's screenshot: four clients sending a mix of answers and failures, some in flight."""
    for i in range(40):
        if i % 9 == 4:
            fake.queue(Error(429, "Rate limit reached for gpt-4.1 on tokens per min", retry_after=1))
        else:
            fake.queue(Text(f"answer {i}", usage=Usage(prompt=3000 + 150 * i, completion=40 + 7 * i, cached=2000),
                            delay_between_chunks=0.1, first_byte_delay=0.2 * (i % 7)))

    def one(i: int) -> None:
        with contextlib.suppress(anthropic.APIStatusError):
            model = "claude-3-5-haiku-latest" if i % 4 == 1 else "claude-sonnet-4-5"
            _ask(client, f"load {i}", stream=bool(i % 3), model=model)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, i) for i in range(40)]
        time.sleep(4)
        page.wait_for_timeout(1200)
        page.screenshot(path=str(target), full_page=False)
        for future in futures:
            future.result(timeout=60)
