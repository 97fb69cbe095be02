"""Stop-sequence emulation (protocols.md 5.5): `StopScanner`, and how the stream and the builder use it.

OpenAI and Gemini stop before a stop string and never say which one matched, so for providers whose
rules set `emulate_stop_sequences` the engine scans the answer text itself. What must hold: the same
text gives the same answer however it is split into deltas, the first sequence to complete wins,
held-back text is never lost, thinking and tool arguments are never scanned, nothing after the match
reaches the client, and the stream and the whole message agree.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from test_stream import BASE, accumulate, assert_well_formed, sign

from ccproxy_engine._compiler import compile_rules
from ccproxy_engine._loader import load_rules
from ccproxy_engine._stream import MessageBuilder, StopScanner, StreamMachine, emulated_stop_sequences, stop_scanner
from ccproxy_engine._types import (
    Delta,
    FinishDelta,
    SSEEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    UsageDelta,
)

T, R, C, F, U = TextDelta, ThinkingDelta, ToolCallDelta, FinishDelta, UsageDelta


def scan(sequences: list[str], pieces: list[str]) -> tuple[str, str | None]:
    """What a scanner lets through for `pieces` (the held tail flushed when nothing matched), and the match."""
    scanner = StopScanner(sequences)
    sent = "".join(scanner.feed(piece) for piece in pieces)
    if scanner.matched is None:
        sent += scanner.flush()
    return sent, scanner.matched


def random_split(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, min(8, len(text) - 1)))) if len(text) > 1 else []
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


# --- the scanner -------------------------------------------------------------------------------


@pytest.mark.parametrize(("sequences", "text", "sent", "matched"), [
    (["END"], "The END is near", "The ", "END"),
    (["###"], "no match here", "no match here", None),
    (["###"], "ends with ##", "ends with ##", None),
    # the first sequence to complete wins, not the first listed
    (["world", "lo w"], "hello world", "hel", "lo w"),
    (["abcd", "bc"], "xabcd", "xa", "bc"),
    # the same end: the one that starts earlier
    (["bc", "abc"], "xabc", "x", "abc"),
    # overlapping prefixes: "aab" inside "aaab", "abab" inside "abababx"
    (["aab"], "aaab", "a", "aab"),
    (["abac"], "ababac!", "ab", "abac"),
    (["\n\nHuman:"], "Sure.\n\nHuman: hi", "Sure.", "\n\nHuman:"),
    (["é✓"], "café✓ ok", "caf", "é✓"),
    ([""], "empty sequences are ignored", "empty sequences are ignored", None),
])
def test_scanner_whole_text(sequences: list[str], text: str, sent: str, matched: str | None) -> None:
    assert scan(sequences, [text]) == (sent, matched)


@pytest.mark.parametrize(("sequences", "text"), [
    (["END"], "The END is near"),
    (["world", "lo w"], "hello world"),
    (["abcd", "bc"], "xabcd"),
    (["bc", "abc"], "xabc"),
    (["aab"], "aaab"),
    (["abac"], "ababac!"),
    (["</answer>", "###"], "<answer>4</answer> ###"),
    (["###"], "ends with ##"),
    (["xyz", "yzzz"], "xyyzzzxyz"),
])
def test_scanner_gives_the_same_answer_however_the_text_is_split(sequences: list[str], text: str) -> None:
    whole = scan(sequences, [text])
    assert scan(sequences, list(text)) == whole  # one character per delta
    rng = random.Random(text)
    for _ in range(50):
        assert scan(sequences, random_split(text, rng)) == whole


def test_scanner_holds_back_only_a_possible_prefix() -> None:
    scanner = StopScanner(["</answer>"])
    assert scanner.feed("4 <") == "4 "
    assert scanner.feed("/an") == ""
    assert scanner.feed("x") == "</anx"  # no longer a prefix: released at once
    assert scanner.feed("</") == ""
    assert scanner.flush() == "</"
    assert scanner.matched is None


def test_scanner_sends_nothing_after_the_match() -> None:
    scanner = StopScanner(["STOP"])
    assert scanner.feed("go STOP more") == "go "
    assert scanner.feed("and more") == ""
    assert scanner.matched == "STOP"


@pytest.mark.parametrize(("body", "emulate", "sequences"), [
    ({"stop_sequences": ["a", "b"]}, True, ("a", "b")),
    ({"stop_sequences": ["a", "a", ""]}, True, ("a",)),
    ({"stop_sequences": ["a"]}, False, None),
    ({"stop_sequences": []}, True, None),
    ({"stop_sequences": [""]}, True, None),
    ({}, True, None),
])
def test_stop_scanner_only_when_the_rules_emulate_and_the_request_asks(
        body: dict[str, Any], emulate: bool, sequences: tuple[str, ...] | None) -> None:
    found = emulated_stop_sequences(body, emulate)
    assert found == (sequences or ())
    scanner = stop_scanner(found)
    assert (scanner.sequences if scanner else None) == sequences


# --- stream and message ------------------------------------------------------------------------


def run_stream(deltas: list[Delta], sequences: list[str]) -> tuple[list[SSEEvent], StreamMachine]:
    """As the translator runs the machine: after each delta, a match finishes the message."""
    machine = StreamMachine(**BASE, sign=sign, stop=StopScanner(sequences))
    events = machine.start()
    for delta in deltas:
        events += machine.feed(delta)
        if machine.is_stopped:
            events += machine.finish()
    events += machine.finish()
    assert_well_formed(events)
    return events, machine


def run_builder(deltas: list[Delta], sequences: list[str]) -> dict[str, Any]:
    builder = MessageBuilder(**BASE, sign=sign, stop=StopScanner(sequences))
    for delta in deltas:
        builder.feed(delta)
    return builder.build()


def both(deltas: list[Delta], sequences: list[str]) -> dict[str, Any]:
    """The message, checked to be the same streamed (through the SDK's accumulator) and whole. Usage
    may differ: a stream stops reading at the match, a whole answer was read to its end."""
    events, _ = run_stream(deltas, sequences)
    message = run_builder(deltas, sequences)
    accumulated = accumulate(events)
    assert {**accumulated, "usage": None} == {**message, "usage": None}
    return message


def test_a_match_split_across_deltas_ends_the_message_with_the_sequence() -> None:
    deltas: list[Delta] = [T("<answer>4</"), T("ans"), T("wer> trailing"), T(" text"), F("end_turn"),
                           U(input_tokens=5, output_tokens=9)]
    message = both(deltas, ["</answer>"])
    assert message["content"] == [{"type": "text", "text": "<answer>4"}]
    assert message["stop_reason"] == "stop_sequence"
    assert message["stop_sequence"] == "</answer>"


def test_the_stream_ends_at_the_match_and_says_which_sequence() -> None:
    events, machine = run_stream([T("one two"), T(" STOP three"), T("four")], ["STOP", "three"])
    assert machine.is_done and machine.is_stopped
    names = [name for name, _ in events]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "STOP"}
    texts = [p["delta"]["text"] for n, p in events if n == "content_block_delta"]
    assert "".join(texts) == "one two "


def test_usage_after_the_match_still_counts_in_the_message() -> None:
    message = run_builder([T("a END b"), F("end_turn"), U(input_tokens=7, output_tokens=11)], ["END"])
    assert message["usage"]["input_tokens"] == 7 and message["usage"]["output_tokens"] == 11


def test_usage_in_the_matching_chunk_reaches_the_stream() -> None:
    """The translator finishes after the whole chunk, so the chunk's usage (Gemini) is in message_delta."""
    machine = StreamMachine(**BASE, stop=StopScanner(["END"]))
    events = machine.start()
    for delta in [T("a END b"), U(input_tokens=3, output_tokens=4)]:
        events += machine.feed(delta)
    assert machine.is_stopped and not machine.is_done
    events += machine.finish()
    assert events[-2][1]["usage"] == {"output_tokens": 4, "input_tokens": 3}


def test_no_match_flushes_the_held_text_and_ends_the_turn() -> None:
    message = both([T("Score: #"), T("#"), F("end_turn")], ["###"])
    assert message["content"] == [{"type": "text", "text": "Score: ##"}]
    assert message["stop_reason"] == "end_turn" and message["stop_sequence"] is None


def test_thinking_is_not_scanned_and_a_match_cannot_span_blocks() -> None:
    deltas: list[Delta] = [R("I will write END soon"), R(signature="s"), T("Here EN"), R("D? no"), R(signature="t"),
                           T("D and done"), F("end_turn")]
    message = both(deltas, ["END"])
    assert [block["type"] for block in message["content"]] == ["thinking", "text", "thinking", "text"]
    assert message["content"][1]["text"] == "Here EN"
    assert message["content"][3]["text"] == "D and done"
    assert message["stop_reason"] == "end_turn"


def test_a_sequence_inside_tool_arguments_is_not_a_match() -> None:
    deltas: list[Delta] = [T("Noting. EN"), C(key=0, id="call_1", name="note", arguments='{"text": "THE'),
                           C(key=0, arguments=' END"}'), F("tool_use")]
    message = both(deltas, ["END"])
    assert message["content"][0] == {"type": "text", "text": "Noting. EN"}
    assert message["content"][1]["input"] == {"text": "THE END"}
    assert message["stop_reason"] == "tool_use" and message["stop_sequence"] is None


def test_everything_after_the_match_is_dropped_tool_calls_included() -> None:
    deltas: list[Delta] = [R("plan"), R(signature="s"), T("Done. STOP"),
                           C(key=0, id="call_1", name="f", arguments="{}"), T("more"), F("tool_use")]
    message = both(deltas, ["STOP"])
    assert [block["type"] for block in message["content"]] == ["thinking", "text"]
    assert message["content"][1]["text"] == "Done. "
    assert message["stop_reason"] == "stop_sequence" and message["stop_sequence"] == "STOP"


def test_a_match_at_the_very_start_gives_an_empty_answer() -> None:
    message = both([T("END of it"), F("end_turn")], ["END"])
    assert message["content"] == []
    assert message["stop_reason"] == "stop_sequence"


def test_without_a_scanner_nothing_is_cut() -> None:
    machine = StreamMachine(**BASE)
    events = machine.start() + machine.feed(T("a END b")) + machine.feed(F("end_turn")) + machine.finish()
    assert not machine.is_stopped
    assert "".join(p["delta"]["text"] for n, p in events if n == "content_block_delta") == "a END b"


def test_the_openai_family_and_gemini_emulate_and_the_passthrough_never_does() -> None:
    rule_sets, _ = load_rules()
    providers, _ = compile_rules(rule_sets)
    emulating = {name for name, provider in providers.items() if provider.emulate_stop_sequences}
    assert emulating == {name for name, provider in providers.items() if not provider.passthrough}
    assert "gemini" in emulating and "openai" in emulating and "anthropic" not in emulating
