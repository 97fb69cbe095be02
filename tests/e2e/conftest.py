"""Fixtures of the end-to-end suite: a fake OpenAI upstream and a served proxy, one pair per module.

Both run on real sockets in their own threads (`serve_app`), so the clients talk real HTTP: the
official `anthropic` SDK in front, `FakeOpenAI` behind, which answers 400 to any body that leaves the
`openai` SDK's request types. Each test gets the fake reset, and its teardown fails if any request
of the test left those types.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import pytest
from e2e.support import CLIENT_KEY, UPSTREAM_KEY, serve_proxy, write_config
from fakes import FakeOpenAI, serve_app


@dataclass(frozen=True)
class Upstream:
    fake: FakeOpenAI
    url: str


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    fake = FakeOpenAI(api_key=UPSTREAM_KEY, check_sdk_types=True)
    with serve_app(fake) as url:
        yield Upstream(fake, url)


@pytest.fixture(scope="module")
def config_path(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(tmp_path_factory.mktemp("e2e-config"), upstream.url)


@pytest.fixture(scope="module")
def proxy_url(config_path: Path) -> Iterator[str]:
    with serve_proxy(config_path) as url:
        yield url


@pytest.fixture
def fake(upstream: Upstream) -> Iterator[FakeOpenAI]:
    """The module's fake, reset; after the test, every body it received must fit the SDK types."""
    upstream.fake.reset()
    yield upstream.fake
    upstream.fake.assert_valid_with_sdk_types()


@pytest.fixture(params=[False, True], ids=["whole", "streamed"])
def streamed(request: pytest.FixtureRequest) -> bool:
    """Each test that takes it runs twice: the answer as one message, then streamed."""
    return bool(request.param)


@pytest.fixture
def client(proxy_url: str) -> Iterator[anthropic.Anthropic]:
    """The official SDK, never retrying (each retry would take the next scripted reply)."""
    with anthropic.Anthropic(base_url=proxy_url, api_key=CLIENT_KEY, max_retries=0, timeout=20) as sdk:
        yield sdk


@pytest.fixture
def http(proxy_url: str) -> Iterator[httpx.Client]:
    """A raw client, for what the SDK will not send or hides from us."""
    headers = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
    with httpx.Client(base_url=proxy_url, headers=headers, timeout=20) as raw:
        yield raw
