"""The fake OpenAI upstream is faithful: the official `openai` SDK, over a real socket, reads it.

The SDK (and its strict `ChatCompletionStreamState` accumulator behind `chat.completions.stream`)
is the judge: if it accumulates our chunks into the completion we scripted, proxy tests built on
the fake exercise the real wire format. Raw-byte tests pin what the SDK is lenient about.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from fakes import (
    Call,
    Chunks,
    Error,
    FakeOpenAI,
    Reasoning,
    Text,
    ToolCalls,
    Usage,
    aserve_app,
    check_sdk_types,
    chunk,
    completion_body,
    encode_stream,
    serve_app,
    validate_chat_request,
)
from openai.types.chat import ChatCompletion, ChatCompletionChunk

MODEL = "gpt-4.1"
USER: Any = [{"role": "user", "content": "Weather in Oslo and Bergen?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOLS: Any = [WEATHER_TOOL]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeOpenAI, str]]:
    """One server for the module: it runs on its own thread, so it outlives each test's loop."""
    fake = FakeOpenAI()
    with serve_app(fake) as base_url:
        yield fake, base_url


@pytest.fixture
def fake(served: tuple[FakeOpenAI, str]) -> Iterator[FakeOpenAI]:
    served[0].reset()
    yield served[0]
    served[0].reset()


@pytest.fixture
def base_url(served: tuple[FakeOpenAI, str]) -> str:
    return served[1]


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
    yield sdk
    await sdk.close()


async def collect(
    client: openai.AsyncOpenAI, *, messages: Any = USER, **params: Any
) -> list[ChatCompletionChunk]:
    stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True, **params)
    return [item async for item in stream]


async def raw_stream(base_url: str, body: dict[str, Any]) -> bytes:
    async with httpx.AsyncClient(base_url=base_url) as http:
        response = await http.post("/v1/chat/completions", json=body)
        return response.content


# --- streaming text ---------------------------------------------------------------------------


async def test_streamed_text_arrives_in_the_scripted_chunks(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.queue(Text("hello", chunks=["he", "llo"], usage=Usage(prompt=900, completion=4, cached=512)))

    chunks = await collect(client, stream_options={"include_usage": True})

    assert [c.choices[0].delta.content for c in chunks if c.choices] == ["", "he", "llo", None]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (900, 4)
    assert usage_chunk.usage.prompt_tokens_details is not None
    assert usage_chunk.usage.prompt_tokens_details.cached_tokens == 512
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.id for c in chunks} == {chunks[0].id}
    assert chunks[0].id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {MODEL}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}


async def test_stream_helper_accumulates_the_text(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.queue(Text(chunks=["Sn", "ow ", "in Oslo."]))

    async with client.chat.completions.stream(model=MODEL, messages=USER) as stream:
        deltas = [event.delta async for event in stream if event.type == "content.delta"]
        final = await stream.get_final_completion()

    assert deltas == ["", "Sn", "ow ", "in Oslo."]
    assert final.choices[0].message.content == "Snow in Oslo."
    assert final.choices[0].finish_reason == "stop"


async def test_wire_format_is_exactly_openais(fake: FakeOpenAI, base_url: str) -> None:
    fake.queue(Text("hi", model="gpt-4.1-2025-04-14"))

    raw = await raw_stream(base_url, {"model": MODEL, "messages": USER, "stream": True})

    records = raw.split(b"\n\n")
    assert records[-2:] == [b"data: [DONE]", b""]
    payloads = [orjson.loads(r.removeprefix(b"data: ")) for r in records[:-2]]
    assert all(r.startswith(b"data: {") for r in records[:-2])
    assert payloads[0]["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": "", "refusal": None},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert payloads[-1]["choices"][0]["delta"] == {}
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in p for p in payloads), "no usage key unless include_usage was asked for"
    assert {p["model"] for p in payloads} == {"gpt-4.1-2025-04-14"}
    assert list(payloads[0]) == ["id", "object", "created", "model", "choices"]


# --- tool calls -------------------------------------------------------------------------------


async def test_split_arguments_reassemble_in_the_sdk_accumulator(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    call = Call("get_weather", {"city": "Oslo", "unit": "celsius"})
    fake.queue(ToolCalls([call], split=5))

    async with client.chat.completions.stream(model=MODEL, messages=USER, tools=TOOLS) as stream:
        pieces = [e.arguments_delta async for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = await stream.get_final_completion()

    assert pieces[0] == "", "the head fragment carries arguments: ''"
    assert len(pieces[1:]) == 5
    assert "".join(pieces) == call.arguments
    message = final.choices[0].message
    assert message.tool_calls is not None
    (tool_call,) = message.tool_calls
    assert (tool_call.id, tool_call.function.name) == (call.id, "get_weather")
    assert json.loads(tool_call.function.arguments) == {"city": "Oslo", "unit": "celsius"}
    assert final.choices[0].finish_reason == "tool_calls"


async def test_tool_only_stream_puts_the_role_on_the_first_tool_chunk(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.queue(ToolCalls([Call("get_weather", {"city": "Oslo"})]))

    first, *_ = await collect(client, tools=TOOLS)

    delta = first.choices[0].delta
    assert (delta.role, delta.content) == ("assistant", None)
    assert delta.tool_calls is not None
    assert delta.tool_calls[0].function is not None
    assert (delta.tool_calls[0].function.name, delta.tool_calls[0].function.arguments) == ("get_weather", "")


@pytest.mark.parametrize("interleave", [False, True])
async def test_parallel_calls_after_text(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, interleave: bool
) -> None:
    calls = [Call("get_weather", {"city": "Oslo"}), Call("get_weather", {"city": "Bergen"})]
    fake.queue(ToolCalls(calls, split=3, text_before="Checking both.", interleave=interleave))

    async with client.chat.completions.stream(model=MODEL, messages=USER, tools=TOOLS) as stream:
        chunk_indexes = [
            e.chunk.choices[0].delta.tool_calls[0].index
            async for e in stream
            if e.type == "chunk" and e.chunk.choices and e.chunk.choices[0].delta.tool_calls
        ]
        final = await stream.get_final_completion()

    message = final.choices[0].message
    assert message.content == "Checking both."
    assert message.tool_calls is not None
    assert [(t.id, json.loads(t.function.arguments)) for t in message.tool_calls] == [
        (calls[0].id, {"city": "Oslo"}),
        (calls[1].id, {"city": "Bergen"}),
    ]
    expected = [0, 1, 0, 1, 0, 1, 0, 1] if interleave else [0, 0, 0, 0, 1, 1, 1, 1]
    assert chunk_indexes == expected


async def test_omitted_index_is_really_omitted(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, base_url: str
) -> None:
    reply = ToolCalls([Call("get_weather", {"city": "Oslo"})], split=2, omit_index=True)
    fake.queue(reply, reply)

    with pytest.raises(TypeError, match="list indices must be integers"):
        async with client.chat.completions.stream(model=MODEL, messages=USER, tools=TOOLS) as stream:
            async for _ in stream:
                pass

    raw = await raw_stream(base_url, {"model": MODEL, "messages": USER, "tools": TOOLS, "stream": True})
    payloads = [orjson.loads(r[6:]) for r in raw.split(b"\n\n") if r.startswith(b"data: {")]
    fragments = [t for p in payloads for t in p["choices"][0]["delta"].get("tool_calls", [])]
    assert len(fragments) == 3
    assert all("index" not in f for f in fragments)


async def test_quirks_repeat_id_and_name_after_arguments(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    call = Call("get_weather", '{"city":"Oslo"}')
    fake.queue(ToolCalls([call], split=2, repeat_id=True, name_after_arguments=True))

    chunks = await collect(client, tools=TOOLS)

    fragments = [
        c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls
    ]
    assert [f.id for f in fragments] == [call.id] * 4
    assert [f.function.name if f.function else None for f in fragments] == [None, None, None, "get_weather"]
    assert "".join((f.function.arguments or "") if f.function else "" for f in fragments) == call.arguments


async def test_whole_call_in_one_chunk(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.queue(ToolCalls([Call("get_weather", {"city": "Oslo"}, id="call_1")], whole_call_in_one_chunk=True))

    chunks = await collect(client, tools=TOOLS)

    (fragment,) = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert fragment.model_dump(exclude_none=True) == {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
    }


async def test_non_streamed_tool_call_parses_into_chat_completion(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    call = Call("get_weather", {"city": "Oslo"})
    fake.queue(
        ToolCalls([call], text_before="Let me check.", usage=Usage(prompt=2212, completion=96, cached=1792))
    )

    completion = await client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS)

    assert isinstance(completion, ChatCompletion)
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert choice.message.tool_calls is not None
    tool_call = choice.message.tool_calls[0]
    assert tool_call.type == "function"
    assert (tool_call.id, tool_call.function.arguments) == (call.id, '{"city":"Oslo"}')
    assert completion.usage is not None
    assert completion.usage.total_tokens == 2308
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 1792


# --- reasoning --------------------------------------------------------------------------------


async def test_reasoning_streams_before_the_answer(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.queue(Reasoning("Snow is likely.", chunks=["Snow ", "is likely."], then=Text("It snows.")))

    chunks = await collect(client)

    extras = [c.choices[0].delta.model_extra or {} for c in chunks if c.choices]
    assert [e.get("reasoning_content") for e in extras] == [None, "Snow ", "is likely.", None, None]
    assert [c.choices[0].delta.content for c in chunks if c.choices] == ["", None, None, "It snows.", None]
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_non_streamed_reasoning_uses_the_named_field(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.queue(Reasoning("Two cities.", field="reasoning", then=ToolCalls([Call("get_weather")])))

    completion = await client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS)

    message = completion.choices[0].message
    assert (message.model_extra or {})["reasoning"] == "Two cities."
    assert message.tool_calls is not None
    assert completion.choices[0].finish_reason == "tool_calls"


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (422, openai.UnprocessableEntityError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
async def test_scripted_error_raises_the_matching_sdk_exception(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, status: int, exception: type[openai.APIStatusError]
) -> None:
    fake.queue(Error(status, f"scripted {status}", code="some_code", retry_after=7))

    with pytest.raises(exception, match=f"scripted {status}") as caught:
        await client.chat.completions.create(model=MODEL, messages=USER, stream=True)

    assert caught.value.status_code == status
    assert caught.value.code == "some_code"
    assert caught.value.response.headers["retry-after"] == "7"


async def test_error_type_defaults_by_status(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.queue(Error(429, "slow down"), Error(502, "down"))

    with pytest.raises(openai.RateLimitError) as rate_limited:
        await client.chat.completions.create(model=MODEL, messages=USER)
    with pytest.raises(openai.InternalServerError) as bad_gateway:
        await client.chat.completions.create(model=MODEL, messages=USER)

    assert rate_limited.value.type == "rate_limit_exceeded"
    assert bad_gateway.value.type == "server_error"


async def test_mid_stream_error_raises_after_the_chunks_before_it(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, base_url: str
) -> None:
    reply = Text(
        chunks=["a", "b", "c"], mid_stream_error=Error(500, "overloaded mid-way", type="server_error")
    )
    fake.queue(reply)

    received: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIError, match="overloaded mid-way"):
        async for item in await client.chat.completions.create(model=MODEL, messages=USER, stream=True):
            received.append(item)  # noqa: PERF401 -- a loop keeps the chunks that came before the error

    assert [c.choices[0].delta.content for c in received] == ["", "a", "b", "c"]
    fake.queue(reply)
    raw = await raw_stream(base_url, {"model": MODEL, "messages": USER, "stream": True})
    assert raw.endswith(
        b'data: {"error":{"message":"overloaded mid-way","type":"server_error","param":null,"code":null}}\n\n'
    )


async def test_cut_stream_ends_without_finish_reason(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.queue(Text(chunks=["a", "b", "c"], cut_after=2))

    chunks = await collect(client, stream_options={"include_usage": True})

    assert [c.choices[0].delta.content for c in chunks] == ["", "a"]
    assert all(c.choices[0].finish_reason is None for c in chunks)


async def test_aborted_stream_raises_a_connection_error(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.queue(Text(chunks=["a", "b", "c"], cut_after=2, abort=True))

    received: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIConnectionError):
        async for item in await client.chat.completions.create(model=MODEL, messages=USER, stream=True):
            received.append(item)  # noqa: PERF401 -- a loop keeps the chunks that came before the error

    assert [c.choices[0].delta.content for c in received] == ["", "a"]


# --- request validation -----------------------------------------------------------------------


async def test_tool_message_without_preceding_tool_calls_gets_400(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.queue(Text("never sent"))
    messages = [*USER, {"role": "tool", "tool_call_id": "call_1", "content": "-3°C"}]

    with pytest.raises(openai.BadRequestError, match="must be a response to a preceding message") as caught:
        await client.chat.completions.create(model=MODEL, messages=messages)

    assert caught.value.type == "invalid_request_error"
    assert caught.value.param == "messages[1]"
    assert fake.last.status == 400
    assert fake.last.problems
    assert len(fake.script) == 1, "a rejected request consumes no scripted reply"


async def test_unknown_key_such_as_cache_control_gets_400(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.default = Text("ok")
    part = {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}
    messages: Any = [{"role": "user", "content": [part]}]

    with pytest.raises(
        openai.BadRequestError, match=r"messages\[0\]\.content\[0\]\.cache_control: unknown key"
    ):
        await client.chat.completions.create(model=MODEL, messages=messages)

    fake.allow_extra = {"messages[].content[].cache_control"}
    completion = await client.chat.completions.create(model=MODEL, messages=messages)
    assert completion.choices[0].message.content == "ok"


async def test_type_problems_are_recorded_when_not_enforced(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.default = Text("ok")
    fake.check_sdk_types = False

    await client.chat.completions.create(model=MODEL, messages=USER, extra_body={"thinking": {"type": "on"}})

    assert [str(p) for p in fake.last.type_problems] == [
        "thinking: unknown key, not in CompletionCreateParamsNonStreaming"
    ]
    with pytest.raises(AssertionError, match="thinking: unknown key"):
        fake.assert_valid_with_sdk_types()


def test_sdk_type_check_accepts_the_reference_request() -> None:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a build assistant."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What's in this picture?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo", "detail": "auto"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_7Yx",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_7Yx", "content": "-3°C, light snow"},
        ],
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": True,
        "max_completion_tokens": 4096,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    assert check_sdk_types(body) == []
    assert validate_chat_request(body) == []


def test_sdk_type_check_names_the_closest_shape() -> None:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "x"}}]},
            {"role": "assistant", "content": "ok", "reasoning_content": "hmm"},
            {"role": "tool", "content": 3},
        ],
        "max_tokens": "many",
    }

    assert [str(p) for p in check_sdk_types(body)] == [
        "messages[0].content[0]: expected ChatCompletionContentPartTextParam"
        " | ChatCompletionContentPartImageParam | ChatCompletionContentPartInputAudioParam | File,"
        " got object with 'image'",
        "messages[1].reasoning_content: unknown key, not in ChatCompletionAssistantMessageParam",
        "messages[2].tool_call_id: missing, required by ChatCompletionToolMessageParam",
        "messages[2].content: expected string | array, got number",
        "max_tokens: expected integer | null, got string",
    ]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"model": ""}, "model: required"),
        ({"messages": []}, "messages: required, a non-empty array"),
        ({"messages": [{"role": "human", "content": "hi"}]}, "messages[0].role: 'human' is not one of"),
        (
            {"messages": [{"role": "assistant", "content": None}]},
            "messages[0].content: required unless 'tool_calls'",
        ),
        (
            {
                "messages": [
                    {"role": "tool", "tool_call_id": "a", "content": [{"type": "image_url", "image_url": {}}]}
                ]
            },
            "messages[0].content[0].type: 'image_url' is not one of ['text']",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "read file"}}]},
            "tools[0].function.name: 'read file'",
        ),
        ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "does not match"),
        ({"tools": []}, "tools: expected a non-empty array"),
        ({"tool_choice": "auto"}, "tool_choice: only allowed when 'tools' are specified"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "'nope' is not one",
        ),
        ({"stream_options": {"include_usage": True}}, "stream_options: only allowed when 'stream' is true"),
    ],
)
def test_protocol_rules(change: dict[str, Any], problem: str) -> None:
    body = {"model": MODEL, "messages": USER, **change}

    assert any(p.startswith(problem) or problem in p for p in validate_chat_request(body)), (
        validate_chat_request(body)
    )


def test_tool_results_must_answer_every_call_of_the_assistant_message_before_them() -> None:
    calls = [
        {"id": i, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
        for i in ("a", "b")
    ]
    assistant = {"role": "assistant", "content": None, "tool_calls": calls}
    answered = [*USER, assistant, {"role": "tool", "tool_call_id": "a", "content": "1"}]

    assert validate_chat_request({"model": MODEL, "messages": [*answered, *USER]}) == [
        "messages[1]: an assistant message with 'tool_calls' must be followed by tool messages responding "
        "to each 'tool_call_id'; these had none: ['b']"
    ]
    stray = [*answered, {"role": "tool", "tool_call_id": "zzz", "content": "2"}]
    assert "messages[3].tool_call_id: 'zzz' matches no tool call of messages[1]" in validate_chat_request(
        {"model": MODEL, "messages": stray}
    )


# --- scripting --------------------------------------------------------------------------------


async def test_responder_answers_by_looking_at_the_conversation(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    call = Call("get_weather", {"city": "Oslo"})

    def responder(body: dict[str, Any]) -> Text | ToolCalls:
        last = body["messages"][-1]
        return Text(f"Oslo: {last['content']}") if last["role"] == "tool" else ToolCalls([call])

    fake.responder = responder
    first = await client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS)
    assistant = first.choices[0].message.model_dump(exclude_none=True, exclude={"annotations"})
    follow_up = [*USER, assistant, {"role": "tool", "tool_call_id": call.id, "content": "-3°C"}]
    second = await client.chat.completions.create(model=MODEL, messages=follow_up, tools=TOOLS)

    assert second.choices[0].message.content == "Oslo: -3°C"
    assert [r.body["messages"][-1]["role"] for r in fake.requests] == ["user", "tool"]


async def test_script_goes_first_then_default(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.queue(Text("one"), Text("two"))
    fake.default = Text("again")

    answers = [
        (await client.chat.completions.create(model=MODEL, messages=USER)).choices[0].message.content
        for _ in range(4)
    ]

    assert answers == ["one", "two", "again", "again"]


async def test_empty_script_answers_500_loudly(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError, match="no scripted reply left"):
        await client.chat.completions.create(model=MODEL, messages=USER)


async def test_requests_are_recorded_with_headers_and_body(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.queue(Text("ok"))

    await client.chat.completions.create(model=MODEL, messages=USER, temperature=0.5)

    request = fake.last
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer x"
    assert request.body == {"model": MODEL, "messages": USER, "temperature": 0.5}
    assert orjson.loads(request.raw) == request.body


async def test_api_key_is_checked_when_set(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.api_key = "sk-right"

    with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
        await client.chat.completions.create(model=MODEL, messages=USER)


async def test_models_are_listed(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in client.models.list()]

    assert models == ["gpt-4.1", "gpt-4.1-mini", "o3"]


# --- stream modifiers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "modifiers",
    [
        {"sse_comments": True},
        {"crlf": True},
        {"split_bytes": 1},
        {"split_bytes": 7, "crlf": True, "sse_comments": True, "delay_between_chunks": 0.001},
    ],
)
async def test_modified_streams_still_parse(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, modifiers: dict[str, Any]
) -> None:
    text = "Snø i Tromsø ✓ 🌨"
    fake.queue(Text(text, chunks=["Snø i ", "Tromsø ✓ ", "🌨"], **modifiers))

    async with client.chat.completions.stream(model=MODEL, messages=USER) as stream:
        final = await stream.get_final_completion()

    assert final.choices[0].message.content == text


def test_modifiers_change_the_bytes_as_documented() -> None:
    request = {"model": MODEL, "messages": USER, "stream": True}
    plain = b"".join(encode_stream(Text("ééé"), request))
    commented = encode_stream(Text("ééé", sse_comments=True, crlf=True), request)
    pieces = encode_stream(Text("ééé", split_bytes=3), request)

    assert commented[0] == b": OPENROUTER PROCESSING\r\n\r\n"
    assert commented[-1] == b"data: [DONE]\r\n\r\n"
    assert all(len(p) == 3 for p in pieces[:-1])
    assert len(b"".join(pieces)) == len(plain)
    with pytest.raises(UnicodeDecodeError):
        for piece in pieces:
            piece.decode()


async def test_split_pieces_reach_the_client_apart_when_delayed(fake: FakeOpenAI, base_url: str) -> None:
    fake.queue(Text("ééé", split_bytes=3, delay_between_chunks=0.002))

    async with (
        httpx.AsyncClient(base_url=base_url) as http,
        http.stream(
            "POST", "/v1/chat/completions", json={"model": MODEL, "messages": USER, "stream": True}
        ) as r,
    ):
        reads = [piece async for piece in r.aiter_raw()]

    assert len(reads) > 100
    assert max(len(piece) for piece in reads) <= 6
    assert b"".join(reads).endswith(b"data: [DONE]\n\n")


def test_reset_restores_the_constructed_settings() -> None:
    fake = FakeOpenAI(Text("a"), api_key="k", allow_extra={"thinking"})
    fake.script.clear()
    fake.api_key, fake.check_sdk_types, fake.default = None, False, Text("b")
    fake.allow_extra.add("x")

    fake.reset()

    settings: tuple[Any, ...] = (len(fake.script), fake.api_key, fake.check_sdk_types, fake.default)
    assert settings == (1, "k", True, None)
    assert fake.allow_extra == {"thinking"}


async def test_delays_are_honoured(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.queue(Text(chunks=["a", "b", "c"], first_byte_delay=0.2, delay_between_chunks=0.05))

    started = time.monotonic()
    stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    headers_after = time.monotonic() - started
    items = [item async for item in stream]
    total = time.monotonic() - started

    assert headers_after >= 0.2
    assert total >= 0.2 + 4 * 0.05
    assert len(items) == 5


async def test_client_disconnect_is_recorded(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.queue(Text(chunks=list("abcdefghij"), delay_between_chunks=0.05))

    stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    await anext(aiter(stream))
    await stream.close()

    for _ in range(100):
        if fake.last.disconnected:
            break
        await asyncio.sleep(0.01)
    assert fake.last.disconnected


async def test_raw_chunks_are_sent_as_given(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.queue(
        Chunks(
            [
                ": keep-alive",
                chunk({"role": "assistant", "content": "x"}),
                chunk({}, "stop", usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}),
            ]
        )
    )

    chunks = await collect(client)

    assert [c.choices[0].finish_reason for c in chunks] == [None, "stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 2


def test_completion_body_matches_the_documented_shape() -> None:
    body = completion_body(Text("hi"), {"model": MODEL})

    assert ChatCompletion.model_validate(body).choices[0].message.content == "hi"
    assert body["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "hi", "refusal": None, "annotations": []},
        "logprobs": None,
        "finish_reason": "stop",
    }


# --- the server helper ------------------------------------------------------------------------


async def test_aserve_app_serves_without_blocking_the_loop() -> None:
    fake = FakeOpenAI(default=Text("ok"))

    async with aserve_app(fake) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/v1/models")
        missing = await http.get("/v2/nothing")

    assert response.status_code == 200
    assert response.json()["object"] == "list"
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v1/models")
