"""The endpoints besides message creation, through a running proxy: count_tokens, models, probes."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest
from e2e.support import MODEL, user
from fakes import FakeOpenAI

pytestmark = pytest.mark.e2e

TOOL: Any = {
    "name": "read_file",
    "description": "Read a file from disk",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
}


def test_count_tokens_grows_with_the_prompt(client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    short = client.messages.count_tokens(model=MODEL, messages=user("Hi"))
    long = client.messages.count_tokens(model=MODEL, messages=user("Tell me a long story about ships. " * 50))
    with_tools = client.messages.count_tokens(model=MODEL, messages=user("Hi"), tools=[TOOL],
                                              system="You are a careful assistant.")
    assert isinstance(short.input_tokens, int) and short.input_tokens > 0
    assert long.input_tokens > short.input_tokens + 200
    assert with_tools.input_tokens > short.input_tokens
    assert fake.requests == [], "counting is local, the upstream is never asked"


def test_count_tokens_rejects_an_invalid_body(http: httpx.Client) -> None:
    response = http.post("/v1/messages/count_tokens", json={"model": MODEL})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "messages" in response.json()["error"]["message"]


def test_models_list_and_retrieve(client: anthropic.Anthropic) -> None:
    page = client.models.list()
    ids = [model.id for model in page.data]
    assert "openai/gpt-4.1" in ids
    assert all(model.type == "model" for model in page.data)
    assert page.has_more is False
    model = client.models.retrieve("openai/gpt-4.1")
    assert model.id == "openai/gpt-4.1"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("nobody/nothing")


def test_health(http: httpx.Client) -> None:
    response = http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "providers": ["openai"]}


def test_head_root_answers_200(http: httpx.Client) -> None:
    response = http.head("/")
    assert response.status_code == 200
    assert response.content == b""
