"""The fake Gemini upstream, proven with the google-genai SDK as its client.

If the official SDK can talk to the fake (generate, stream, call functions, send the calls back with
their signatures) and gets the errors it expects, the fake speaks Gemini's wire format; the
protocol checks it adds are tested here too, so a proxy test that passes against it means something.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fakes import serve_app
from fakes.gemini_upstream import (
    DUMMY_SIGNATURE,
    Blocked,
    Call,
    Calls,
    Chunks,
    Error,
    FakeGemini,
    Text,
    Thoughts,
    Usage,
    camel_case,
    check_sdk_types,
    validate_request,
)
from google import genai
from google.genai import errors, types

KEY = "gemini-test-key"
PRO, GEMINI_3 = "gemini-2.5-pro", "gemini-3-pro-preview"
WEATHER = types.FunctionDeclaration(
    name="get_weather", description="Current weather",
    parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                            "additionalProperties": False},
)
NO_AFC = types.AutomaticFunctionCallingConfig(disable=True)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeGemini, str]]:
    fake = FakeGemini(api_key=KEY)
    with serve_app(fake) as url:
        yield fake, url


@pytest.fixture
def fake(served: tuple[FakeGemini, str]) -> FakeGemini:
    served[0].reset()
    return served[0]


@pytest.fixture
def url(served: tuple[FakeGemini, str]) -> str:
    return served[1]


_clients: list[genai.Client] = []


def sdk(url: str, key: str = KEY) -> genai.Client:
    """The official client, never retrying; kept alive until the module ends (a client that is
    garbage collected closes its connection pool under a running call)."""
    options = types.HttpOptions(base_url=url, api_version="v1beta", retry_options=types.HttpRetryOptions(attempts=1))
    client = genai.Client(api_key=key, http_options=options)
    _clients.append(client)
    return client


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def config(**kwargs: Any) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(automatic_function_calling=NO_AFC, **kwargs)


def test_text_answer_and_usage(url: str, fake: FakeGemini) -> None:
    fake.queue(Text("Hello.", usage=Usage(prompt=100, candidates=3, thoughts=7, cached=40)))
    response = sdk(url).models.generate_content(model=PRO, contents="Hi", config=config(system_instruction="Terse."))
    assert response.text == "Hello."
    assert response.candidates is not None and response.candidates[0].finish_reason == types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.thoughts_token_count,
            usage.cached_content_token_count, usage.total_token_count) == (100, 3, 7, 40, 110)
    sent = fake.last
    assert sent.path == f"/v1beta/models/{PRO}:generateContent" and sent.query == {}
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.body["contents"] == [{"parts": [{"text": "Hi"}], "role": "user"}]


def test_streamed_text_arrives_in_slices_and_finishes_last(url: str, fake: FakeGemini) -> None:
    fake.queue(Text(chunks=["It ", "snows ", "in Oslo."]))
    chunks = list(sdk(url).models.generate_content_stream(model=PRO, contents="Weather?"))
    assert [c.text for c in chunks] == ["It ", "snows ", "in Oslo."]
    assert [c.candidates[0].finish_reason for c in chunks if c.candidates] == [
        None, None, types.FinishReason.STOP]
    assert fake.last.query == {"alt": ["sse"]} and fake.last.stream
    assert all(c.usage_metadata and c.usage_metadata.prompt_token_count == 12 for c in chunks)


def test_parallel_calls_carry_one_signature_and_go_back_with_it(url: str, fake: FakeGemini) -> None:
    step = Calls([Call("get_weather", {"city": "Oslo"}, id="c1"), Call("get_weather", {"city": "Bergen"}, id="c2")],
                 text_before="Checking.")
    fake.queue(step, Text("Snow in both."))
    client = sdk(url)
    tools = [types.Tool(function_declarations=[WEATHER])]
    question = types.Content(role="user", parts=[types.Part(text="Oslo and Bergen?")])
    chunks = list(client.models.generate_content_stream(model=GEMINI_3, contents=[question],
                                                        config=config(tools=tools)))
    parts = [p for c in chunks if c.candidates for p in (c.candidates[0].content.parts or [])]  # type: ignore[union-attr]
    calls = [p for p in parts if p.function_call]
    assert [(p.function_call.name, p.function_call.args, p.function_call.id) for p in calls] == [  # type: ignore[union-attr]
        ("get_weather", {"city": "Oslo"}, "c1"), ("get_weather", {"city": "Bergen"}, "c2")]
    assert step.signature is not None
    assert calls[0].thought_signature == base64.b64decode(step.signature)
    assert calls[1].thought_signature is None
    results = types.Content(role="user", parts=[
        types.Part(function_response=types.FunctionResponse(name="get_weather", id="c1", response={"output": "-3"})),
        types.Part(function_response=types.FunctionResponse(name="get_weather", id="c2", response={"output": "-1"})),
    ])
    history = [question, types.Content(role="model", parts=parts), results]
    answer = client.models.generate_content(model=GEMINI_3, contents=history, config=config(tools=tools))
    assert answer.text == "Snow in both."
    fake.assert_all_accepted()


def test_gemini_3_refuses_a_call_without_its_signature(url: str, fake: FakeGemini) -> None:
    history = [
        types.Content(role="user", parts=[types.Part(text="Weather?")]),
        types.Content(role="model", parts=[types.Part(function_call=types.FunctionCall(name="get_weather",
                                                                                        args={"city": "Oslo"}))]),
        types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
            name="get_weather", response={"output": "-3"}))]),
    ]
    tools = [types.Tool(function_declarations=[WEATHER])]
    with pytest.raises(errors.ClientError) as caught:
        sdk(url).models.generate_content(model=GEMINI_3, contents=history, config=config(tools=tools))
    assert caught.value.code == 400 and "missing a `thought_signature`" in str(caught.value.message)
    fake.queue(Text("ok"), Text("ok"))
    sdk(url).models.generate_content(model=PRO, contents=history, config=config(tools=tools))  # 2.5: optional
    history[1].parts[0].thought_signature = DUMMY_SIGNATURE.encode()  # type: ignore[index]
    # bytes are sent base64-encoded: the SDK turns b"skip_..." into another string: not the dummy
    with pytest.raises(errors.ClientError) as corrupted:
        sdk(url).models.generate_content(model=GEMINI_3, contents=history, config=config(tools=tools))
    assert "Corrupted thought signature" in str(corrupted.value.message)
    history[1].parts[0].thought_signature = base64.urlsafe_b64decode(DUMMY_SIGNATURE)  # type: ignore[index]
    sdk(url).models.generate_content(model=GEMINI_3, contents=history, config=config(tools=tools))


def test_thoughts_come_only_when_asked_for(url: str, fake: FakeGemini) -> None:
    reply = Thoughts(["Weigh ", "options."], signature="c2lnLTE=", then=Text("Done."))
    fake.queue(reply, reply)
    shown = sdk(url).models.generate_content(
        model=PRO, contents="Hi", config=config(thinking_config=types.ThinkingConfig(include_thoughts=True)))
    parts = shown.candidates[0].content.parts  # type: ignore[index,union-attr]
    assert [(p.thought, p.text) for p in parts] == [(True, "Weigh options."), (None, "Done.")]  # type: ignore[union-attr]
    assert parts[0].thought_signature == b"sig-1"  # type: ignore[index]
    hidden = sdk(url).models.generate_content(model=PRO, contents="Hi")
    assert hidden.text == "Done." and len(hidden.candidates[0].content.parts) == 1  # type: ignore[index,union-attr,arg-type]


def test_blocked_prompt_has_feedback_and_no_candidates(url: str, fake: FakeGemini) -> None:
    fake.queue(Blocked(block_reason="PROHIBITED_CONTENT"))
    response = sdk(url).models.generate_content(model=PRO, contents="Hi")
    assert response.candidates is None
    assert response.prompt_feedback is not None
    assert response.prompt_feedback.block_reason == types.BlockedReason.PROHIBITED_CONTENT


def test_finish_reason_and_message_without_content(url: str, fake: FakeGemini) -> None:
    reply = Text(finish_reason="MALFORMED_FUNCTION_CALL", finish_message="Malformed function call: x(")
    fake.queue(reply, reply)
    [chunk] = list(sdk(url).models.generate_content_stream(model=PRO, contents="Hi"))
    candidate = chunk.candidates[0]  # type: ignore[index]
    assert candidate.finish_reason == types.FinishReason.MALFORMED_FUNCTION_CALL and candidate.content is None
    # the SDK does not surface finishMessage; the wire has it
    raw = httpx.post(f"{url}/v1beta/models/{PRO}:generateContent", headers={"x-goog-api-key": KEY},
                     json={"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}).json()
    assert raw["candidates"][0]["finishMessage"] == "Malformed function call: x("


@pytest.mark.parametrize(("status", "name", "kind"), [
    (400, "INVALID_ARGUMENT", errors.ClientError), (403, "PERMISSION_DENIED", errors.ClientError),
    (429, "RESOURCE_EXHAUSTED", errors.ClientError), (500, "INTERNAL", errors.ServerError),
    (503, "UNAVAILABLE", errors.ServerError),
])
def test_scripted_errors_are_google_errors(url: str, fake: FakeGemini, status: int, name: str,
                                           kind: type[errors.APIError]) -> None:
    fake.queue(Error(status, "nope"))
    with pytest.raises(kind) as caught:
        sdk(url).models.generate_content(model=PRO, contents="Hi")
    assert (caught.value.code, caught.value.status, caught.value.message) == (status, name, "nope")


def test_wrong_key_is_api_key_invalid_and_a_key_in_the_url_is_refused(url: str, fake: FakeGemini) -> None:
    with pytest.raises(errors.ClientError) as caught:
        sdk(url, key="wrong").models.generate_content(model=PRO, contents="Hi")
    assert caught.value.code == 400
    assert caught.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    body = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    in_url = httpx.post(f"{url}/v1beta/models/{PRO}:generateContent?key={KEY}", json=body)
    assert in_url.status_code == 400 and "x-goog-api-key" in in_url.json()["error"]["message"]
    keyless = httpx.post(f"{url}/v1beta/models/{PRO}:generateContent", json=body)
    assert keyless.status_code == 403
    no_sse = httpx.post(f"{url}/v1beta/models/{PRO}:streamGenerateContent", json=body,
                        headers={"x-goog-api-key": KEY})
    assert no_sse.status_code == 400 and "alt=sse" in no_sse.json()["error"]["message"]


def test_parameters_refuse_json_schema_keywords_that_parameters_json_schema_takes(url: str, fake: FakeGemini) -> None:
    schema: dict[str, Any] = {"type": "object", "properties": {"n": {"type": "integer", "exclusiveMinimum": 0}},
                              "additionalProperties": False}
    raw = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
           "tools": [{"functionDeclarations": [{"name": "count", "parameters": schema}]}]}
    refused = httpx.post(f"{url}/v1beta/models/{PRO}:generateContent", json=raw, headers={"x-goog-api-key": KEY})
    assert refused.status_code == 400
    assert 'Unknown name "additionalProperties"' in refused.json()["error"]["message"]
    fake.queue(Text("ok"))
    modern = types.Tool(function_declarations=[types.FunctionDeclaration(name="count", parameters_json_schema=schema)])
    assert sdk(url).models.generate_content(model=PRO, contents="Hi", config=config(tools=[modern])).text == "ok"


def test_mid_stream_error_and_cut_stream(url: str, fake: FakeGemini) -> None:
    fake.queue(Text(chunks=["a", "b", "c"], mid_stream_error=Error(503, "overloaded")))
    seen: list[str | None] = []
    with pytest.raises(errors.APIError) as caught:
        seen.extend(chunk.text for chunk in sdk(url).models.generate_content_stream(model=PRO, contents="Hi"))
    assert seen == ["a", "b"] and caught.value.code == 503
    fake.queue(Text(chunks=["a", "b", "c"], cut_after=2))
    cut = list(sdk(url).models.generate_content_stream(model=PRO, contents="Hi"))
    assert [c.text for c in cut] == ["a", "b"]
    assert all(c.candidates[0].finish_reason is None for c in cut)  # type: ignore[index]


def test_raw_chunks_are_sent_as_given(url: str, fake: FakeGemini) -> None:
    fake.queue(Chunks([{"candidates": [{"content": {"role": "model", "parts": [{"text": "raw"}]},
                                        "finishReason": "STOP"}]}]))
    assert [c.text for c in sdk(url).models.generate_content_stream(model=PRO, contents="Hi")] == ["raw"]


# --- the protocol rules, directly -------------------------------------------------------------------


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "parts": list(parts)}


def model(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "model", "parts": list(parts)}


CALL = {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": DUMMY_SIGNATURE}
ANSWER = {"functionResponse": {"name": "f", "response": {"output": "1"}}}


@pytest.mark.parametrize(("contents", "needle"), [
    ([model(CALL)], "function call turn comes immediately after a user turn"),
    ([user({"text": "a"}), model({"text": "b"}), user(ANSWER)], "function response turn comes immediately after"),
    ([user({"text": "a"}), model(CALL), user(ANSWER, ANSWER)], "number of function response parts"),
    ([user({"text": "a"}), model(CALL), user({"text": "x"}, ANSWER)], "must come before the other parts"),
    ([user({"text": "a"}), user({"text": "b"})], "consecutive turns of role 'user'"),
    ([user({"text": ""})], "must not be empty"),
    ([user({"text": "a", "inlineData": {"mimeType": "image/png", "data": "AA=="}})], "exactly one of"),
    ([user({"text": "a"}), model({**CALL, "thoughtSignature": "bm90LW91cnM="}), user(ANSWER)],
     "Corrupted thought signature"),
    ([user({"text": "a"}), model({"functionCall": {"name": "f", "args": {}}}), user(ANSWER)],
     "missing a `thought_signature`"),
])
def test_protocol_rules(contents: list[dict[str, Any]], needle: str) -> None:
    problems = validate_request({"contents": contents}, GEMINI_3, issued_signatures=())
    assert any(needle in problem for problem in problems), problems


def test_consecutive_turns_pass_when_not_strict_and_older_models_need_no_signature() -> None:
    assert validate_request({"contents": [user({"text": "a"}), user({"text": "b"})]}, PRO, strict_turns=False) == []
    unsigned = [user({"text": "a"}), model({"functionCall": {"name": "f", "args": {}}}), user(ANSWER)]
    assert validate_request({"contents": unsigned}, PRO) == []
    # only the current turn is checked: a new user text starts a new one
    assert validate_request({"contents": [*unsigned, model({"text": "done"}), user({"text": "next"})]},
                            GEMINI_3) == []


@pytest.mark.parametrize(("schema", "needle"), [
    ({"type": "object", "$schema": "x"}, 'Unknown name "$schema"'),
    ({"type": "object", "properties": {"a": {"type": ["string", "null"]}}}, "cannot start list"),
    ({"type": "object", "properties": {"a": {"type": "integer", "enum": [1, 2]}}}, "TYPE_STRING"),
    ({"type": "object", "properties": {"a": {"type": "string", "format": "uri"}}}, "date-time"),
    ({"type": "object", "properties": {"a": {"anyOf": [{"const": "x"}]}}}, 'Unknown name "const"'),
])
def test_parameters_schema_rules(schema: dict[str, Any], needle: str) -> None:
    body = {"contents": [user({"text": "a"})],
            "tools": [{"functionDeclarations": [{"name": "f", "parameters": schema}]}]}
    assert any(needle in problem for problem in validate_request(body, PRO)), validate_request(body, PRO)


def test_property_names_are_not_keywords_and_names_are_checked() -> None:
    schema = {"type": "object", "properties": {"const": {"type": "string"}, "$ref": {"type": "string"}}}
    body = {"contents": [user({"text": "a"})],
            "tools": [{"functionDeclarations": [{"name": "f", "parameters": schema}, {"name": "9bad"}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["g"]}}}
    problems = validate_request(body, PRO)
    assert len(problems) == 2, problems
    assert "Invalid function name '9bad'" in problems[0] and "'g' is not declared" in problems[1]


def test_snake_case_field_names_are_read_like_camel_case() -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "a"}]}],
            "generation_config": {"thinking_config": {"include_thoughts": True}},
            "tools": [{"function_declarations": [{"name": "f", "parameters_json_schema": {
                "type": "object", "properties": {"snake_name": {"type": "string"}}}}]}]}
    assert camel_case(body)["generationConfig"] == {"thinkingConfig": {"includeThoughts": True}}
    assert camel_case(body)["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["properties"] == {
        "snake_name": {"type": "string"}}
    assert check_sdk_types(body) == [] and validate_request(body, PRO) == []
    assert validate_request({**body, "generation_config": {"thinking_config": {}}}, "gemini-2.0-flash") == [
        "Thinking is not supported by this model."]


def test_sdk_types_refuse_unknown_keys_and_bad_signatures() -> None:
    problems = check_sdk_types({"contents": [{"role": "user", "parts": [{"text": "a", "cache_control": {}}]}],
                                "model": "x"})
    assert problems[0] == 'Invalid JSON payload received. Unknown name "model": Cannot find field.'
    assert any("cache_control" in problem for problem in problems)
    assert check_sdk_types({"contents": [model({**CALL, "thoughtSignature": "not base64!"})]})
