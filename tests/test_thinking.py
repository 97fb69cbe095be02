"""Foreign reasoning kept out of requests to Anthropic (engine/_thinking.py).

What must hold: blocks Anthropic did not sign (engine envelopes, missing signatures) are dropped
from assistant messages and nothing else is; the client's body is never mutated; a body without
any is forwarded as the client's own bytes; a tool loop in progress that loses its only thinking
block is sent with thinking disabled (and without the clear_thinking edit that needs it).
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from ccproxy_engine._functions import encode_signature
from ccproxy_engine._thinking import NO_CONTENT, is_foreign_thinking, passthrough_body, strip_foreign_thinking

GEMINI_SIGNATURE = encode_signature("gemini", "gemini-2.5-pro", "c2lnLTE")
OPENROUTER_DATA = encode_signature("openrouter", "openai/gpt-5", '{"type":"reasoning.encrypted","data":"gAAA"}')
ANTHROPIC_SIGNATURE = "EqQBCkgIARABGAIiQJ2x0XxQ+uHqYyNWAw=="

OURS = {"type": "thinking", "thinking": "Gemini thought.", "signature": GEMINI_SIGNATURE}
REDACTED_OURS = {"type": "redacted_thinking", "data": OPENROUTER_DATA}
THEIRS = {"type": "thinking", "thinking": "Claude thought.", "signature": ANTHROPIC_SIGNATURE}
REDACTED_THEIRS = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"}
CALL = {"type": "tool_use", "id": "toolu_01", "name": "ls", "input": {}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_01", "content": "a.txt"}


def body(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": list(messages), **extra}


def user(*content: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(content) if len(content) != 1 or not isinstance(content[0], str)
            else content[0]}


def assistant(*content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": list(content)}


@pytest.mark.parametrize(("block", "foreign"), [
    (OURS, True),
    (REDACTED_OURS, True),
    ({"type": "thinking", "thinking": "x", "signature": ""}, True),
    ({"type": "thinking", "thinking": "x"}, True),
    (THEIRS, False),
    (REDACTED_THEIRS, False),
    ({"type": "text", "text": GEMINI_SIGNATURE}, False),
    (CALL, False),
    ("not a block", False),
])
def test_is_foreign_thinking(block: Any, foreign: bool) -> None:
    assert is_foreign_thinking(block) is foreign


def test_nothing_foreign_gives_none_and_the_clients_bytes() -> None:
    request = body(user("List."), assistant(THEIRS, REDACTED_THEIRS, CALL), user(RESULT),
                   thinking={"type": "enabled", "budget_tokens": 2048})
    assert strip_foreign_thinking(request) is None
    raw = b'{"model":  "x", "messages": []}'
    assert passthrough_body(request, raw) is raw
    assert passthrough_body(request, None) == orjson.dumps(request)


def test_foreign_blocks_are_dropped_and_the_rest_kept_in_order() -> None:
    request = body(user("Hi"), assistant(OURS, {"type": "text", "text": "Hello."}), user("List."),
                   assistant(THEIRS, REDACTED_OURS, {"type": "text", "text": "Listing."}, CALL), user(RESULT))
    before = copy.deepcopy(request)
    stripped = strip_foreign_thinking(request)
    assert request == before, "the client's body is never mutated"
    assert stripped is not None
    assert [m["content"] for m in stripped["messages"]] == [
        "Hi", [{"type": "text", "text": "Hello."}], "List.",
        [THEIRS, {"type": "text", "text": "Listing."}, CALL], [RESULT]]
    assert "thinking" not in stripped, "thinking was not on: nothing to disable"
    assert passthrough_body(request, b"ignored") == orjson.dumps(stripped)


def test_an_assistant_message_of_only_foreign_reasoning_keeps_a_placeholder() -> None:
    stripped = strip_foreign_thinking(body(user("Hi"), assistant(OURS), user("Again")))
    assert stripped is not None
    assert stripped["messages"][1]["content"] == [{"type": "text", "text": NO_CONTENT}]


CLEAR_THINKING = {"type": "clear_thinking_20251015", "keep": "all"}
CLEAR_TOOLS = {"type": "clear_tool_uses_20250919"}
ENABLED = {"type": "enabled", "budget_tokens": 2048}


def test_a_tool_loop_that_lost_its_thinking_is_sent_with_thinking_off() -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    request = body(user("List."), assistant(OURS, CALL), user(RESULT), thinking=thinking,
                   context_management={"edits": [CLEAR_THINKING]})
    stripped = strip_foreign_thinking(request)
    assert stripped is not None
    assert stripped["messages"][1]["content"] == [CALL]
    assert stripped["thinking"] == {"type": "disabled"}
    assert "context_management" not in stripped, "clear_thinking needs thinking on"
    assert request["thinking"] == thinking and request["context_management"] == {"edits": [CLEAR_THINKING]}


def test_other_context_edits_stay_when_thinking_goes_off() -> None:
    request = body(user("List."), assistant(OURS, CALL), user(RESULT), thinking=ENABLED,
                   context_management={"edits": [CLEAR_THINKING, CLEAR_TOOLS]})
    stripped = strip_foreign_thinking(request)
    assert stripped is not None
    assert stripped["context_management"] == {"edits": [CLEAR_TOOLS]}


def test_the_loop_is_judged_from_its_first_assistant_message() -> None:
    """Steps after the first of a tool loop have no thinking of their own (without interleaving)."""
    loop = [user("List."), assistant(THEIRS, CALL), user(RESULT), assistant(OURS, CALL), user(RESULT)]
    stripped = strip_foreign_thinking(body(*loop, thinking=ENABLED))
    assert stripped is not None and stripped["thinking"] == ENABLED
    loop[1] = assistant(OURS, CALL)
    stripped = strip_foreign_thinking(body(*loop, thinking=ENABLED))
    assert stripped is not None and stripped["thinking"] == {"type": "disabled"}


def test_adaptive_thinking_stays_on_since_the_model_may_skip_thinking() -> None:
    request = body(user("List."), assistant(OURS, CALL), user(RESULT), thinking={"type": "adaptive"},
                   context_management={"edits": [CLEAR_THINKING]})
    stripped = strip_foreign_thinking(request)
    assert stripped is not None
    assert stripped["thinking"] == {"type": "adaptive"}
    assert stripped["context_management"] == {"edits": [CLEAR_THINKING]}


@pytest.mark.parametrize("messages", [
    # a new user turn: earlier turns' thinking is not required
    [user("List."), assistant(OURS, CALL), user(RESULT), assistant({"type": "text", "text": "Done."}),
     user("Thanks, now more.")],
    # the loop's turn still starts with Anthropic's own thinking
    [user("List."), assistant(THEIRS, OURS, CALL), user(RESULT)],
])
def test_thinking_stays_on_when_anthropic_can_take_the_turn(messages: list[dict[str, Any]]) -> None:
    stripped = strip_foreign_thinking(body(*messages, thinking={"type": "enabled", "budget_tokens": 2048}))
    assert stripped is not None
    assert stripped["thinking"] == {"type": "enabled", "budget_tokens": 2048}


@pytest.mark.parametrize("request_body", [{}, {"messages": "nope"}, {"messages": [None, 3, {"role": "assistant"}]}])
def test_odd_bodies_are_left_alone(request_body: dict[str, Any]) -> None:
    assert strip_foreign_thinking(request_body) is None
