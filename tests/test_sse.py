"""SSE at the byte level: how reads are cut must never change the records, and encoding is exact."""

from __future__ import annotations

import random

import orjson
import pytest
from anthropic._streaming import SSEDecoder as SDKDecoder

from ccproxy_engine._sse import DONE, SSEDecoder, SSERecord, encode_event, encode_events
from ccproxy_engine._types import SSEEvent

# protocols.md 2.9, plus what real upstreams add: an OpenRouter keep-alive comment, a reasoning
# chunk, and text with CJK, an emoji, U+2028 and an escaped newline.
OPENAI_STREAM_LINES = [
    ": OPENROUTER PROCESSING",
    "",
    'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1767225600,"model":"gpt-4.1",'
    '"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}',
    "",
    'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{"reasoning_content":"先想一想"}}]}',
    "",
    'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1767225600,"model":"gpt-4.1",'
    '"choices":[{"index":0,"delta":{"content":"Checking both. 天気 🌦\u2028next\\nline"},'
    '"finish_reason":null}]}',
    "",
    'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_A",'
    '"type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}',
    "",
    'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,'
    '"function":{"arguments":"{\\"city\\":\\"Oslo\\"}"}}]},"finish_reason":null}]}',
    "",
    ": OPENROUTER PROCESSING",
    "",
    'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}',
    "",
    'data: {"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":2212,"completion_tokens":61,'
    '"total_tokens":2273,"prompt_tokens_details":{"cached_tokens":1792}}}',
    "",
    "data: [DONE]",
    "",
]


def stream_bytes(newline: str = "\n") -> bytes:
    return (newline.join(OPENAI_STREAM_LINES) + newline).encode()


def parse(chunks: list[bytes]) -> list[SSERecord]:
    decoder = SSEDecoder()
    records: list[SSERecord] = []
    for chunk in chunks:
        records += decoder.feed(chunk)
    return records + decoder.flush()


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def test_openai_stream_parses_into_its_chunks() -> None:
    records = parse([stream_bytes()])

    assert len(records) == 8
    assert all(record.event is None for record in records)
    assert records[-1].is_done
    assert not any(record.is_done for record in records[:-1])
    chunks = [orjson.loads(record.data) for record in records[:-1]]
    assert chunks[2]["choices"][0]["delta"]["content"] == "Checking both. 天気 🌦\u2028next\nline"
    assert chunks[3]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert chunks[6]["usage"]["prompt_tokens"] == 2212


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_byte_by_byte_feeding_yields_the_same_records_as_one_shot(newline: str) -> None:
    data = stream_bytes(newline)

    assert parse(one_byte_at_a_time(data)) == parse([data]) == parse([stream_bytes()])


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_random_read_sizes_yield_the_same_records(newline: str) -> None:
    data = stream_bytes(newline)
    expected = parse([data])
    rng = random.Random(20260101)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(data)), 12))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert parse(chunks) == expected


def test_records_are_returned_by_the_read_that_completes_them() -> None:
    decoder = SSEDecoder()

    assert decoder.feed(b'data: {"a"') == []
    assert decoder.feed(b":1}\n") == []
    assert decoder.feed(b"\ndata: x\n\n") == [SSERecord(None, '{"a":1}'), SSERecord(None, "x")]


def test_crlf_split_between_reads_counts_as_one_line_end() -> None:
    decoder = SSEDecoder()

    assert decoder.feed(b"data: a\r") == []
    # The LF completes the CRLF begun in the last read; only the next CRLF is the blank line.
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r\n") == [SSERecord(None, "a")]


def test_a_cr_ending_a_read_is_a_line_end_at_once() -> None:
    decoder = SSEDecoder()

    # CR CR is a complete record: it must not wait for the next read to come.
    assert decoder.feed(b"data: a\r\r") == [SSERecord(None, "a")]
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [SSERecord(None, "b")]


@pytest.mark.parametrize("text", ["你好\uff0c世界", "🙂👍🏽", "mixed ascii ✓ and 日本語 and 🦀"])
def test_multibyte_characters_split_across_reads(text: str) -> None:
    data = f"data: {text}\n\n".encode()
    for cut in range(1, len(data)):
        assert parse([data[:cut], data[cut:]]) == [SSERecord(None, text)]


def test_unicode_line_separators_do_not_end_lines() -> None:
    text = "a\u2028b\u2029c\x0bd\x1ce\x85f"

    assert parse([f"data: {text}\n\n".encode()]) == [SSERecord(None, text)]


def test_comments_are_skipped() -> None:
    data = b": OPENROUTER PROCESSING\n\n:\n\ndata: x\n: inside a record\n\n"

    assert parse([data]) == [SSERecord(None, "x")]


def test_data_with_or_without_the_space() -> None:
    data = b"data:{\"a\":1}\n\ndata: {}\n\ndata:  two spaces\n\n"

    assert [r.data for r in parse([data])] == ['{"a":1}', "{}", " two spaces"]


def test_done_marker() -> None:
    assert SSERecord(None, DONE).is_done
    assert SSERecord(None, " [DONE] ").is_done
    assert not SSERecord(None, '"[DONE]"').is_done
    assert not SSERecord(None, '{"text": "[DONE]"}').is_done
    assert parse([b"data:[DONE]\n\n"])[0].is_done


def test_event_field_names_the_record_and_resets_after_it() -> None:
    data = b"event: message_start\ndata: {}\n\ndata: {}\n\nevent:ping\ndata: {}\n\n"

    assert [r.event for r in parse([data])] == ["message_start", None, "ping"]


def test_multi_line_data_is_joined_with_lf() -> None:
    assert parse([b"data: a\ndata:\ndata: c\n\n"]) == [SSERecord(None, "a\n\nc")]


def test_id_retry_and_unknown_fields_are_ignored() -> None:
    data = b"id: 7\nretry: 1000\nfoo: bar\nevent: x\ndata: y\n\n"

    assert parse([data]) == [SSERecord("x", "y")]


def test_a_record_without_data_is_not_dispatched() -> None:
    assert parse([b"event: ping\n\nid: 3\n\n"]) == []
    # …and its event name does not leak into the next record.
    assert parse([b"event: ping\n\ndata: x\n\n"]) == [SSERecord(None, "x")]


def test_a_field_name_alone_is_a_field_with_an_empty_value() -> None:
    assert parse([b"data\n\n"]) == [SSERecord(None, "")]


def test_flush_dispatches_a_final_record_without_its_blank_line() -> None:
    decoder = SSEDecoder()

    assert decoder.feed(b'data: {"a":1}\n\ndata: {"b":2}') == [SSERecord(None, '{"a":1}')]
    assert decoder.flush() == [SSERecord(None, '{"b":2}')]
    assert decoder.flush() == []


@pytest.mark.parametrize("tail", [b"data: last\n", b"data: last\r", b"data: last\r\n", b"data: last"])
def test_flush_after_any_line_end(tail: bytes) -> None:
    assert parse([tail]) == [SSERecord(None, "last")]


def test_gemini_style_crlf_stream_ending_at_eof() -> None:
    data = b'data: {"candidates":[1]}\r\n\r\ndata: {"candidates":[2]}\r\n'

    assert [r.data for r in parse(one_byte_at_a_time(data))] == ['{"candidates":[1]}', '{"candidates":[2]}']


def test_a_leading_byte_order_mark_is_dropped() -> None:
    data = b"\xef\xbb\xbfdata: x\n\n"

    assert parse(one_byte_at_a_time(data)) == [SSERecord(None, "x")]


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert parse([b"data: a\xffb\n\n"]) == [SSERecord(None, "a\ufffdb")]


def test_encode_event_is_exact() -> None:
    event: SSEEvent = ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": "hi"}})

    assert encode_event(event) == (
        b'event: content_block_delta\n'
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}\n\n'
    )
    assert encode_event(("custom", {"type": "custom"})) == b'event: custom\ndata: {"type":"custom"}\n\n'


def test_encoded_data_stays_on_one_line() -> None:
    text = "line one\nline two\r\nthree\u2028four 🙂"
    data = encode_event(("content_block_delta", {"type": "content_block_delta", "delta": {"text": text}}))

    assert data.count(b"\n") == 3
    assert b"\r" not in data
    [record] = parse([data])
    assert orjson.loads(record.data)["delta"]["text"] == text


def test_encode_events_joins_records_and_round_trips() -> None:
    events: list[SSEEvent] = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_1"}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "天気 🌦"}}),
        ("message_stop", {"type": "message_stop"}),
        ("brand_new_event", {"type": "brand_new_event"}),
    ]
    data = encode_events(events)

    assert data == b"".join(encode_event(e) for e in events)
    assert encode_events([]) == b""
    records = parse(one_byte_at_a_time(data))
    assert [(r.event, orjson.loads(r.data)) for r in records] == events


def test_encoded_events_read_back_with_the_anthropic_sdk_decoder() -> None:
    events: list[SSEEvent] = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_1"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "a\nb\u2028c"}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    data = encode_events(events)

    decoded = list(SDKDecoder().iter_bytes(iter(one_byte_at_a_time(data))))
    assert [(sse.event, sse.json()) for sse in decoded] == events


def test_a_bare_json_error_body_mid_stream_comes_out_as_one_record() -> None:
    stream = (b'data: {"candidates": []}\n\n'
              b'{\n  "error": {\n    "code": 500,\n    "message": "Internal error"\n  }\n}\n')
    decoder = SSEDecoder()
    records = decoder.feed(stream) + decoder.flush()
    assert [r.data for r in records] == ['{"candidates": []}',
                                         '{\n  "error": {\n    "code": 500,\n    "message": "Internal error"\n  }\n}']
    one_line = SSEDecoder()
    records = one_line.feed(b'{"error": {"code": 429}}\n\ndata: x\n\n')
    assert [r.data for r in records] == ['{"error": {"code": 429}}', "x"]
