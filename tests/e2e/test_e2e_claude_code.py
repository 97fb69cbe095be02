"""Real Claude Code requests (tests/fixtures/claude-code) through a running proxy, byte for byte.

Each fixture body is posted as the CLI sent it, headers and `?beta=true` included. The fake upstream
must accept the translation (it answers 400 to anything outside the `openai` SDK's request types),
and the answer must decode with the `anthropic` SDK's SSE decoder and accumulator into the blocks
the fake was scripted with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e.support import ROUTE_HEADER, Recorded, accumulate, each_claude_code_request, replay
from fakes import Call, FakeOpenAI, Reasoning, ToolCalls, Usage

pytestmark = pytest.mark.e2e


def reply_for(body: dict[str, Any]) -> Reasoning:
    """Reasoning, some text, then a call of the request's first tool (named as the upstream knows it)."""
    tool = body["tools"][0]["function"]["name"]
    call = Call(tool, {"file_path": "/home/dev/project/notes.md", "limit": 20})
    return Reasoning(chunks=["Decide ", "what to do."],
                     then=ToolCalls([call], text_before="Let me look.", split=6),
                     usage=Usage(prompt=9000, completion=40, cached=8000))


@each_claude_code_request
def test_claude_code_request_round_trip(http: httpx.Client, fake: FakeOpenAI, path: Path) -> None:
    recorded = Recorded.load(path)
    body = recorded.body
    fake.responder = reply_for
    response, events = replay(http, recorded)
    assert response.headers["x-ccproxy-route"] == ROUTE_HEADER
    assert fake.last.status == 200, fake.last.problems + [str(p) for p in fake.last.type_problems]
    message = accumulate(events)
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    tool_use = message.content[2]
    assert tool_use.type == "tool_use"
    assert tool_use.name == body["tools"][0]["name"]
    assert tool_use.input == {"file_path": "/home/dev/project/notes.md", "limit": 20}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (1000, 8000)
    sent = fake.last.body
    assert sent["stream"] is True
    system_messages = [m for m in sent["messages"] if m["role"] == "system"]
    in_place = [m for m in body["messages"] if m["role"] == "system"]
    assert len(system_messages) == 1 + len(in_place), "system prompt first, then each system-role message"
    assert not any("x-anthropic-billing-header" in m["content"] for m in system_messages)
    assert len(sent["tools"]) == len(body["tools"])
