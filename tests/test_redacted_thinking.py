"""Encrypted reasoning (`RedactedThinkingDelta`) → whole ``redacted_thinking`` blocks, streamed and not.

OpenRouter returns Gemini's and OpenAI's encrypted reasoning as ``reasoning.encrypted`` details; the
client must be able to send it back, so each becomes one redacted_thinking block (complete in its
start event, protocols.md 1.8) whose data is the engine's envelope around the upstream's data.
"""

from __future__ import annotations

from test_stream import accumulate, build, sign, stream

from ccproxy_engine._types import FinishDelta, RedactedThinkingDelta, TextDelta, ThinkingDelta

DELTAS = [ThinkingDelta("plan"), ThinkingDelta(signature="s1"), RedactedThinkingDelta("enc-1"),
          RedactedThinkingDelta("enc-2"), RedactedThinkingDelta(""), TextDelta("ok"), FinishDelta("end_turn")]


def test_each_encrypted_item_is_its_own_whole_block_in_arrival_order() -> None:
    events = stream(DELTAS, sign=sign)
    starts = [(p["index"], p["content_block"]) for n, p in events if n == "content_block_start"]
    assert starts == [(0, {"type": "thinking", "thinking": "", "signature": ""}),
                      (1, {"type": "redacted_thinking", "data": "env:enc-1"}),
                      (2, {"type": "redacted_thinking", "data": "env:enc-2"}),
                      (3, {"type": "text", "text": ""})]
    deltas_of_redacted = [p for n, p in events if n == "content_block_delta" and p["index"] in (1, 2)]
    assert deltas_of_redacted == [], "a redacted_thinking block arrives complete in its start event"


def test_the_stream_and_the_message_agree() -> None:
    message = build(DELTAS, sign=sign)
    assert [block["type"] for block in message["content"]] == ["thinking", "redacted_thinking",
                                                              "redacted_thinking", "text"]
    assert message["content"][1] == {"type": "redacted_thinking", "data": "env:enc-1"}
    assert accumulate(stream(DELTAS, sign=sign)) == build(DELTAS, sign=sign)


def test_without_a_signer_the_data_goes_as_it_came() -> None:
    message = build([RedactedThinkingDelta("enc"), FinishDelta("end_turn")])
    assert message["content"] == [{"type": "redacted_thinking", "data": "enc"}]
