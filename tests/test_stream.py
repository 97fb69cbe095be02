"""Normalized deltas → Anthropic events and messages.

Every event list a test produces is checked twice: against the stream grammar of protocols.md 1.8
(`assert_well_formed`), and by replaying it through the official `anthropic` SDK accumulator, whose
message must equal what `MessageBuilder` builds from the same deltas.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter

from ccproxy_engine import _stream
from ccproxy_engine._errors import UpstreamProtocolError, UpstreamStatusError
from ccproxy_engine._stream import (
    MessageBuilder,
    StreamMachine,
    new_message_id,
    new_tool_use_id,
    repair_json,
)
from ccproxy_engine._types import (
    Delta,
    ErrorDelta,
    FinishDelta,
    SSEEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    UsageDelta,
)

T, R, C, F, U, E = TextDelta, ThinkingDelta, ToolCallDelta, FinishDelta, UsageDelta, ErrorDelta

BASE = {"provider": "openai", "message_id": "msg_test", "model": "gpt-4.1"}
EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
DELTA_TYPE_FOR_BLOCK = {
    "text": {"text_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
    "tool_use": {"input_json_delta"},
}


class MintedIds:
    """Stands in for `new_tool_use_id`: toolu_minted0, 1, … restarting per run, so runs compare equal."""

    def __init__(self) -> None:
        self.numbers = itertools.count()

    def __call__(self) -> str:
        return f"toolu_minted{next(self.numbers)}"


MINTED = MintedIds()


@pytest.fixture(autouse=True)
def _counted_tool_ids() -> Iterator[None]:
    with mock.patch.object(_stream, "new_tool_use_id", MINTED):
        yield


def reset_ids() -> None:
    MINTED.numbers = itertools.count()


def stream(deltas: list[Delta], **options: Any) -> list[SSEEvent]:
    """start() + feed() each delta + finish(), checked against the grammar."""
    reset_ids()
    machine = StreamMachine(**BASE, **options)
    events = machine.start()
    for delta in deltas:
        events += machine.feed(delta)
    events += machine.finish()
    assert machine.is_done
    assert_well_formed(events)
    return events


def build(deltas: list[Delta], **options: Any) -> dict[str, Any]:
    reset_ids()
    builder = MessageBuilder(**BASE, **options)
    for delta in deltas:
        builder.feed(delta)
    return builder.build()


def assert_well_formed(events: list[SSEEvent]) -> None:
    """The grammar of protocols.md 1.8 and the invariants in `StreamMachine`'s docstring."""
    names = [name for name, _ in events]
    for name, payload in events:
        assert payload["type"] == name
        assert orjson.loads(orjson.dumps(payload)) == payload
    if "error" in names:
        assert names.count("error") == 1 and names[-1] == "error", names
        assert "message_stop" not in names and "message_delta" not in names
    if names != ["error"]:
        assert names[0] == "message_start", names
        assert names.count("message_start") == 1
    if "message_stop" in names:
        assert names.count("message_stop") == 1 and names[-1] == "message_stop"
        assert names.count("message_delta") == 1 and names[-2] == "message_delta"
    open_index: int | None = None
    open_type = ""
    next_index = 0
    previous_delta = ""
    for name, payload in events:
        if name == "content_block_start":
            assert open_index is None, "a block started while another was open"
            assert payload["index"] == next_index
            open_index, open_type = next_index, payload["content_block"]["type"]
            next_index += 1
            previous_delta = ""
        elif name == "content_block_delta":
            assert payload["index"] == open_index
            assert payload["delta"]["type"] in DELTA_TYPE_FOR_BLOCK[open_type]
            previous_delta = payload["delta"]["type"]
        elif name == "content_block_stop":
            assert payload["index"] == open_index
            if open_type == "thinking":
                assert previous_delta == "signature_delta", "thinking block closed without its signature"
            open_index = None
        elif name == "message_delta":
            assert open_index is None, "message_delta with a block still open"
            assert isinstance(payload["usage"]["output_tokens"], int)


def accumulate(events: list[SSEEvent]) -> dict[str, Any]:
    """The message the official SDK builds from these events (it skips pings, as its Stream does)."""
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for name, payload in events:
        assert name != "error", "an error event raises in the SDK"
        if name == "ping":
            continue
        event = EVENT_ADAPTER.validate_python(payload)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    message = snapshot.to_dict()
    message.pop("stop_details", None)
    return message


def short(events: list[SSEEvent]) -> list[tuple[Any, ...]]:
    """Events in a form a table can spell out."""
    out: list[tuple[Any, ...]] = []
    for name, p in events:
        if name == "content_block_start":
            block = p["content_block"]
            extra = (block["id"], block["name"]) if block["type"] == "tool_use" else ()
            out.append(("start", p["index"], block["type"], *extra))
        elif name == "content_block_delta":
            delta = p["delta"]
            value = next(v for k, v in delta.items() if k != "type")
            out.append((delta["type"].removesuffix("_delta"), p["index"], value))
        elif name == "content_block_stop":
            out.append(("stop", p["index"]))
        elif name == "message_delta":
            out.append(("end", p["delta"]["stop_reason"], p["usage"]))
        elif name == "error":
            out.append(("error", p["error"]["type"], p["error"]["message"]))
        elif name not in ("message_start", "ping", "message_stop"):
            out.append((name,))
    return out


@dataclass
class Case:
    name: str
    deltas: list[Delta]
    expected: list[tuple[Any, ...]]
    options: dict[str, Any] = field(default_factory=dict)


def fragments(text: str, count: int) -> list[str]:
    bounds = [len(text) * i // count for i in range(count + 1)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


WEATHER_ARGS = '{"city": "Oslo", "units": "metric", "days": [1, 2, 3], "note": "skiing \\"Holmenkollen\\""}'
TWENTY = fragments(WEATHER_ARGS, 20)
assert len(TWENTY) == 20


def sign(upstream: str | None) -> str:
    return f"env:{upstream}"


CASES = [
    Case("text only",
         [T("Hel"), T("lo"), F("end_turn"), U(input_tokens=10, output_tokens=2)],
         [("start", 0, "text"), ("text", 0, "Hel"), ("text", 0, "lo"), ("stop", 0),
          ("end", "end_turn", {"output_tokens": 2, "input_tokens": 10})]),
    Case("reasoning then text",
         [R("Let me"), R(" think"), R(signature="sig-1"), T("Answer"), F("end_turn")],
         [("start", 0, "thinking"), ("thinking", 0, "Let me"), ("thinking", 0, " think"),
          ("signature", 0, "sig-1"), ("stop", 0), ("start", 1, "text"), ("text", 1, "Answer"), ("stop", 1),
          ("end", "end_turn", {"output_tokens": 0})]),
    Case("thinking block closed with signature_delta from sign()",
         [R("hmm", signature="upstream-sig"), T("ok"), R("again"), F("end_turn")],
         [("start", 0, "thinking"), ("thinking", 0, "hmm"), ("signature", 0, "env:upstream-sig"), ("stop", 0),
          ("start", 1, "text"), ("text", 1, "ok"), ("stop", 1),
          ("start", 2, "thinking"), ("thinking", 2, "again"), ("signature", 2, "env:None"), ("stop", 2),
          ("end", "end_turn", {"output_tokens": 0})],
         {"sign": sign}),
    Case("thinking without any signature still gets an empty signature_delta",
         [R("quiet"), F("max_tokens")],
         [("start", 0, "thinking"), ("thinking", 0, "quiet"), ("signature", 0, ""), ("stop", 0),
          ("end", "max_tokens", {"output_tokens": 0})]),
    Case("signature-only thinking delta makes a carrier block before a tool call",
         [R(signature="gemini-sig"), C(id="call_g", name="lookup", arguments='{"q": 1}'), F("end_turn")],
         [("start", 0, "thinking"), ("signature", 0, "gemini-sig"), ("stop", 0),
          ("start", 1, "tool_use", "call_g", "lookup"), ("input_json", 1, '{"q": 1}'), ("stop", 1),
          ("end", "tool_use", {"output_tokens": 0})]),
    Case("tool arguments split into 20 fragments",
         [C(key=0, id="call_1", name="get_weather", arguments=""), *[C(key=0, arguments=f) for f in TWENTY],
          F("tool_use")],
         [("start", 0, "tool_use", "call_1", "get_weather"), *[("input_json", 0, f) for f in TWENTY],
          ("stop", 0), ("end", "tool_use", {"output_tokens": 0})]),
    Case("two parallel tool calls by index",
         [C(key=0, id="call_A", name="a", arguments=""), C(key=0, arguments='{"x": 1}'),
          C(key=1, id="call_B", name="b", arguments='{"y"'), C(key=1, arguments=": 2}"), F("tool_use")],
         [("start", 0, "tool_use", "call_A", "a"), ("input_json", 0, '{"x": 1}'), ("stop", 0),
          ("start", 1, "tool_use", "call_B", "b"), ("input_json", 1, '{"y"'), ("input_json", 1, ": 2}"),
          ("stop", 1), ("end", "tool_use", {"output_tokens": 0})]),
    Case("index missing: routed by id",
         [C(id="call_A", name="a", arguments='{"x"'), C(id="call_A", arguments=": 1}"),
          C(id="call_B", name="b", arguments="{}"), F("tool_use")],
         [("start", 0, "tool_use", "call_A", "a"), ("input_json", 0, '{"x"'), ("input_json", 0, ": 1}"),
          ("stop", 0), ("start", 1, "tool_use", "call_B", "b"), ("input_json", 1, "{}"), ("stop", 1),
          ("end", "tool_use", {"output_tokens": 0})]),
    Case("neither index nor id: continuation of the last call, id minted",
         [C(name="search", arguments='{"q":'), C(arguments=' "x"}'), F("tool_use")],
         [("start", 0, "tool_use", "toolu_minted0", "search"), ("input_json", 0, '{"q":'),
          ("input_json", 0, ' "x"}'), ("stop", 0), ("end", "tool_use", {"output_tokens": 0})]),
    Case("id first, then fragments with neither index nor id",
         [C(id="call_A", name="a", arguments=""), C(arguments='{"k": '), C(arguments='"v"}'), F("tool_use")],
         [("start", 0, "tool_use", "call_A", "a"), ("input_json", 0, '{"k": '), ("input_json", 0, '"v"}'),
          ("stop", 0), ("end", "tool_use", {"output_tokens": 0})]),
    Case("name after arguments: buffered until the name is known",
         [C(key=0, id="call_1", arguments='{"q":'), C(key=0, arguments=' "x"}'), T(""),
          C(key=0, name="search"), F("tool_use")],
         [("start", 0, "tool_use", "call_1", "search"), ("input_json", 0, '{"q": "x"}'), ("stop", 0),
          ("end", "tool_use", {"output_tokens": 0})]),
    Case("id and name repeated on every chunk",
         [C(key=0, id="call_1", name="f", arguments='{"a"'),
          C(key=0, id="call_1", name="f", arguments=": 1}"), C(id="call_1", name="f", arguments=""),
          F("tool_use")],
         [("start", 0, "tool_use", "call_1", "f"), ("input_json", 0, '{"a"'), ("input_json", 0, ": 1}"),
          ("stop", 0), ("end", "tool_use", {"output_tokens": 0})]),
    Case("an index reused by a call with a new id starts a new call",
         [C(key=0, id="call_A", name="a", arguments="{}"), C(key=0, id="call_B", name="b", arguments='{"n"'),
          C(key=0, arguments=": 2}"), F("tool_use")],
         [("start", 0, "tool_use", "call_A", "a"), ("input_json", 0, "{}"), ("stop", 0),
          ("start", 1, "tool_use", "call_B", "b"), ("input_json", 1, '{"n"'), ("input_json", 1, ": 2}"),
          ("stop", 1), ("end", "tool_use", {"output_tokens": 0})]),
    Case("text after a tool opens a new text block",
         [T("Before."), C(key=0, id="call_1", name="f", arguments="{}"), T("After."), F("tool_use")],
         [("start", 0, "text"), ("text", 0, "Before."), ("stop", 0),
          ("start", 1, "tool_use", "call_1", "f"), ("input_json", 1, "{}"), ("stop", 1),
          ("start", 2, "text"), ("text", 2, "After."), ("stop", 2),
          ("end", "tool_use", {"output_tokens": 0})]),
    Case("finish then usage: usage goes into message_delta",
         [T("x"), F("end_turn"),
          U(input_tokens=420, output_tokens=61, cache_read_input_tokens=1792, cache_creation_input_tokens=0)],
         [("start", 0, "text"), ("text", 0, "x"), ("stop", 0),
          ("end", "end_turn", {"output_tokens": 61, "input_tokens": 420, "cache_creation_input_tokens": 0,
                               "cache_read_input_tokens": 1792})]),
    Case("usage merges field by field",
         [U(input_tokens=5, cache_read_input_tokens=3), T("x"), U(output_tokens=1), U(output_tokens=7),
          F("end_turn")],
         [("start", 0, "text"), ("text", 0, "x"), ("stop", 0),
          ("end", "end_turn", {"output_tokens": 7, "input_tokens": 5, "cache_read_input_tokens": 3})]),
    Case("empty text is skipped: no empty block",
         [T(""), T(""), R(""), F("end_turn")],
         [("end", "end_turn", {"output_tokens": 0})]),
    Case("tool name mapped back to the client's name",
         [C(key=0, id="call_1", name="mcp__srv__long_9f3a", arguments="{}"),
          C(key=1, id="call_2", name="unmapped", arguments="{}"), F("tool_use")],
         [("start", 0, "tool_use", "call_1", "mcp__server__a_very_long_tool_name"), ("input_json", 0, "{}"),
          ("stop", 0), ("start", 1, "tool_use", "call_2", "unmapped"), ("input_json", 1, "{}"), ("stop", 1),
          ("end", "tool_use", {"output_tokens": 0})],
         {"tool_names": {"mcp__srv__long_9f3a": "mcp__server__a_very_long_tool_name"}}),
    Case("unknown finish reason becomes end_turn",
         [T("x"), F(None, raw="insufficient_system_resource")],
         [("start", 0, "text"), ("text", 0, "x"), ("stop", 0), ("end", "end_turn", {"output_tokens": 0})]),
    Case("tool_use without a tool block becomes end_turn",
         [T("x"), F("tool_use")],
         [("start", 0, "text"), ("text", 0, "x"), ("stop", 0), ("end", "end_turn", {"output_tokens": 0})]),
    Case("max_tokens with a partial tool call stays max_tokens",
         [C(key=0, id="call_1", name="f", arguments='{"a": 1}'), F("max_tokens")],
         [("start", 0, "tool_use", "call_1", "f"), ("input_json", 0, '{"a": 1}'), ("stop", 0),
          ("end", "max_tokens", {"output_tokens": 0})]),
    Case("stop_sequence keeps the matched sequence",
         [T("x"), F("stop_sequence", stop_sequence="###")],
         [("start", 0, "text"), ("text", 0, "x"), ("stop", 0),
          ("end", "stop_sequence", {"output_tokens": 0})]),
    Case("zero blocks is a legal answer",
         [F("end_turn"), U(output_tokens=0)],
         [("end", "end_turn", {"output_tokens": 0})]),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_stream_machine_events(case: Case) -> None:
    assert short(stream(case.deltas, **case.options)) == case.expected


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_sdk_accumulates_the_stream_into_the_built_message(case: Case) -> None:
    accumulated = accumulate(stream(case.deltas, input_tokens=99, **case.options))

    assert accumulated == build(case.deltas, input_tokens=99, **case.options)


def test_worked_trace_text_then_two_tool_calls() -> None:
    """protocols.md 5.2 worked trace, chunk by chunk, every event in full."""
    machine = StreamMachine(provider="openai", message_id="msg_01", model="claude-sonnet-4-5",
                            input_tokens=2300)

    def delta(index: int, partial: str) -> SSEEvent:
        return ("content_block_delta", {"type": "content_block_delta", "index": index,
                                        "delta": {"type": "input_json_delta", "partial_json": partial}})

    def stop(index: int) -> SSEEvent:
        return ("content_block_stop", {"type": "content_block_stop", "index": index})

    def tool(index: int, call_id: str) -> SSEEvent:
        return ("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
            "type": "tool_use", "id": call_id, "name": "get_weather", "input": {}}})

    steps: list[tuple[list[Delta], list[SSEEvent]]] = [
        ([T("")], []),
        ([T("Checking both.")], [
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "Checking both."}}),
        ]),
        ([C(key=0, id="call_A", name="get_weather", arguments="")], [stop(0), tool(1, "call_A")]),
        ([C(key=0, arguments='{"city":"Oslo"}')], [delta(1, '{"city":"Oslo"}')]),
        ([C(key=1, id="call_B", name="get_weather", arguments="")], [stop(1), tool(2, "call_B")]),
        ([C(key=1, arguments='{"city":"Bergen"}')], [delta(2, '{"city":"Bergen"}')]),
        ([F("tool_use", raw="tool_calls")], []),
        ([U(input_tokens=420, output_tokens=61, cache_read_input_tokens=1792, cache_creation_input_tokens=0)],
         []),
    ]

    assert machine.start() == [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 2300, "output_tokens": 1, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}}}),
        ("ping", {"type": "ping"}),
    ]
    for deltas, expected in steps:
        assert [e for d in deltas for e in machine.feed(d)] == expected
    assert machine.finish() == [
        stop(2),
        ("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 61, "input_tokens": 420, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 1792}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    assert machine.is_done
    assert machine.finish() == machine.feed(T("late")) == machine.ping() == []


def test_interleaved_tool_fragments_for_a_closed_block_are_logged_not_sent(
        caplog: pytest.LogCaptureFixture) -> None:
    deltas: list[Delta] = [
        C(key=0, id="call_A", name="a", arguments='{"x": '),
        C(key=1, id="call_B", name="b", arguments='{"y": '),
        C(key=0, arguments="1"), C(key=0, arguments="}"), C(key=1, arguments="2}"), F("tool_use"),
    ]

    with caplog.at_level(logging.WARNING, logger="ccproxy_engine.stream"):
        events = stream(deltas)

    assert short(events) == [
        ("start", 0, "tool_use", "call_A", "a"), ("input_json", 0, '{"x": '), ("stop", 0),
        ("start", 1, "tool_use", "call_B", "b"), ("input_json", 1, '{"y": '), ("input_json", 1, "2}"),
        ("stop", 1), ("end", "tool_use", {"output_tokens": 0}),
    ]
    messages = [r.getMessage() for r in caplog.records]
    dropped = [m for m in messages if "after its block closed" in m]
    assert len(dropped) == 1 and "call_A" in dropped[0] and "'1'" in dropped[0]
    assert any("call_A" in m and "not a JSON object" in m for m in messages)
    # Not streamed, nothing is lost: the builder has every fragment.
    content = build(deltas)["content"]
    assert [block["input"] for block in content] == [{"x": 1}, {"y": 2}]


def test_a_tool_call_that_never_gets_a_name_is_dropped_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    deltas: list[Delta] = [T("x"), C(key=0, id="call_1", arguments='{"a": 1}'), F("tool_use")]

    with caplog.at_level(logging.WARNING, logger="ccproxy_engine.stream"):
        events = stream(deltas)

    assert short(events) == [("start", 0, "text"), ("text", 0, "x"), ("stop", 0),
                             ("end", "end_turn", {"output_tokens": 0})]
    assert any("call_1" in r.getMessage() and "no name" in r.getMessage() for r in caplog.records)
    assert build(deltas)["content"] == [{"type": "text", "text": "x"}]


def test_no_finish_reason_is_an_error_event_not_end_turn() -> None:
    events = stream([T("partial answer")])

    assert short(events)[-1] == ("error", "api_error", "[openai] upstream stream ended prematurely")
    assert "message_delta" not in [name for name, _ in events]


def test_no_output_and_no_finish_is_an_error_without_a_response() -> None:
    events = stream([T(""), U(input_tokens=3)])

    assert short(events) == [("error", "api_error", "[openai] upstream stream ended without a response")]


def test_error_delta_mid_stream_ends_the_stream() -> None:
    machine = StreamMachine(**BASE)
    events = machine.start() + machine.feed(T("Hel"))

    events += machine.feed(E("overloaded_error", "[openai] Overloaded"))  # the decoder names the provider

    assert_well_formed(events)
    assert events[-1] == ("error", {"type": "error",
                                    "error": {"type": "overloaded_error", "message": "[openai] Overloaded"}})
    assert machine.is_done
    assert machine.feed(T("more")) == machine.feed(F("end_turn")) == machine.finish() == []
    assert machine.ping() == machine.fail("api_error", "again") == []


def test_fail_before_start_is_a_lone_error_event() -> None:
    machine = StreamMachine(**BASE)

    assert not machine.is_started
    assert machine.fail("rate_limit_error", "slow down") == [
        ("error", {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})]
    assert machine.start() == []
    assert not machine.is_started


def test_feed_starts_the_message_when_start_was_not_called() -> None:
    machine = StreamMachine(**BASE)

    events = machine.feed(T("hi"))

    assert [name for name, _ in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta"]
    assert machine.is_started
    assert machine.start() == []


def test_ping_only_between_start_and_end() -> None:
    machine = StreamMachine(**BASE)

    assert machine.ping() == []
    machine.start()
    assert machine.ping() == [("ping", {"type": "ping"})]
    machine.feed(F("end_turn"))
    machine.finish()
    assert machine.ping() == []


def test_message_stop_exactly_once() -> None:
    machine = StreamMachine(**BASE)
    events = machine.start() + machine.feed(T("x")) + machine.feed(F("end_turn"))

    events += machine.finish() + machine.finish()

    assert [name for name, _ in events].count("message_stop") == 1


def test_feed_rejects_what_is_not_a_delta() -> None:
    with pytest.raises(TypeError):
        StreamMachine(**BASE).feed("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        MessageBuilder(**BASE).feed({"text": "x"})  # type: ignore[arg-type]


def test_upstream_ids_pass_through_and_minted_ids_look_like_anthropics() -> None:
    with mock.patch.object(_stream, "new_tool_use_id", new_tool_use_id):
        events = StreamMachine(**BASE).feed(C(name="f", arguments="{}"))
    minted = events[2][1]["content_block"]["id"]

    assert re.fullmatch(r"toolu_[A-Za-z0-9]{24}", minted)
    assert short(stream([C(key=0, id="call_abc", name="f"), F("tool_use")]))[0] == (
        "start", 0, "tool_use", "call_abc", "f")


def test_new_ids() -> None:
    message_ids = {new_message_id() for _ in range(1000)}
    tool_ids = {new_tool_use_id() for _ in range(1000)}

    assert len(message_ids) == len(tool_ids) == 1000
    assert all(re.fullmatch(r"msg_[A-Za-z0-9]{24}", i) for i in message_ids)
    assert all(re.fullmatch(r"toolu_[A-Za-z0-9]{24}", i) for i in tool_ids)


# MessageBuilder


def test_builder_message_shape() -> None:
    message = build([R("why", signature="s"), T("Let me "), T("check."),
                     C(key=0, id="toolu_01Hq", name="get_weather", arguments='{"city": "Oslo"}'),
                     F("tool_use"), U(input_tokens=412, output_tokens=96, cache_read_input_tokens=1800)],
                    sign=sign)

    assert message == {
        "id": "msg_test", "type": "message", "role": "assistant", "model": "gpt-4.1",
        "content": [
            {"type": "thinking", "thinking": "why", "signature": "env:s"},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01Hq", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 412, "output_tokens": 96, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 1800},
    }


def test_builder_usage_defaults_to_the_estimate_and_zeros() -> None:
    usage = build([T("x"), F("end_turn")], input_tokens=77)["usage"]

    assert usage == {"input_tokens": 77, "output_tokens": 0, "cache_creation_input_tokens": 0,
                     "cache_read_input_tokens": 0}


def test_builder_repairs_truncated_arguments(caplog: pytest.LogCaptureFixture) -> None:
    deltas: list[Delta] = [C(key=0, id="call_1", name="f", arguments='{"city": "Os'), F("max_tokens")]

    with caplog.at_level(logging.WARNING, logger="ccproxy_engine.stream"):
        message = build(deltas)

    assert message["content"][0]["input"] == {"city": "Os"}
    assert message["stop_reason"] == "max_tokens"
    assert any("repaired" in r.getMessage() for r in caplog.records)


def test_builder_rejects_arguments_that_cannot_be_read() -> None:
    garbage = '{"a": 1 "b": 2}' + "x" * 300
    deltas: list[Delta] = [C(key=0, id="call_1", name="lookup", arguments=garbage), F("tool_use")]

    with pytest.raises(UpstreamProtocolError) as caught:
        build(deltas)

    assert caught.value.message == (
        f"[openai] tool call lookup returned arguments that are not valid JSON: {garbage[:200]}")
    assert (caught.value.status, caught.value.error_type) == (502, "api_error")


@pytest.mark.parametrize(("arguments", "expected"), [
    ("", {}),
    ("  ", {}),
    ('{"a": {"b": [1]}}', {"a": {"b": [1]}}),
    ("[1, 2]", {"value": [1, 2]}),
    ('"just text"', {"value": "just text"}),
    ("42", {"value": 42}),
    ("null", {"value": None}),
])
def test_builder_tool_input(arguments: str, expected: dict[str, Any]) -> None:
    message = build([C(key=0, id="call_1", name="f", arguments=arguments), F("tool_use")])

    assert message["content"][0]["input"] == expected


def test_builder_without_finish_ends_the_turn_when_there_is_content() -> None:
    assert build([T("complete enough")])["stop_reason"] == "end_turn"
    assert build([C(key=0, id="call_1", name="f", arguments="{}")])["stop_reason"] == "tool_use"


def test_builder_without_content_or_finish_fails() -> None:
    with pytest.raises(UpstreamProtocolError, match=r"^\[openai\] upstream answer had no content and no"):
        build([T(""), U(input_tokens=4)])


@pytest.mark.parametrize(("error_type", "status"), [
    ("overloaded_error", 529), ("rate_limit_error", 429), ("invalid_request_error", 400),
    ("authentication_error", 401), ("api_error", 500), ("something_new", 500),
])
def test_builder_error_delta_raises_with_the_mapped_status(error_type: str, status: int) -> None:
    builder = MessageBuilder(**BASE)
    builder.feed(T("x"))

    with pytest.raises(UpstreamStatusError) as caught:
        builder.feed(E(error_type, "[openai] it broke"))

    assert (caught.value.status, caught.value.error_type) == (status, error_type)
    assert caught.value.message == "[openai] it broke"


@pytest.mark.parametrize(("text", "expected"), [
    ('{"a": 1}', {"a": 1}),
    ('{"city": "Os', {"city": "Os"}),
    ('{"a": "x\\', {"a": "x"}),
    ('{"a": 1,', {"a": 1}),
    ('{"a": 1, "b', {"a": 1}),
    ('{"a": [1, 2], "b": tr', {"a": [1, 2]}),
    ('{"a": {"b": [1, {"c": 2', {"a": {"b": [1, {"c": 2}]}}),
    ('{"a": 12', {"a": 12}),
    ('{"a": {"b":', {"a": {}}),
    ('{"a": 1}}', {"a": 1}),
    ('{"a": 1} trailing words', {"a": 1}),
    ('{"a": "}"} {"b": 2}', {"a": "}"}),
    ('```json\n{"a": 1}\n```', {"a": 1}),
    ('{"a":', None),
    ('{"a', None),
    ('{"a": 1 "b": 2}', None),
    ('{"a": [1}', None),
    ("[1, 2", None),
    ("plain text", None),
    ("", None),
])
def test_repair_json(text: str, expected: dict[str, Any] | None) -> None:
    assert repair_json(text) == expected
