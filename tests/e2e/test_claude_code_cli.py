"""The real Claude Code CLI completes an agentic turn through `ccproxy-engine serve`.

Unit and SDK tests cannot show that the one client that matters works; this runs it. The pinned CLI
(tests/claude_code/VERSION, installed by scripts/install-claude-code into a cache outside the
checkout) gets a task in print mode, in a scratch directory with a fresh HOME, against the proxy
served as its own process, which routes to a scripted fake upstream. The scripted model first calls
Write, then answers with text once it sees the tool result. The test asserts what a user would see
(exit code, the JSON result, the file) and what the provider saw (a valid tool-result turn, the full
tool list, streamed requests only, bodies the provider accepts). Each provider in PROVIDERS runs it:
OpenAI (bodies inside the `openai` SDK's types), the Anthropic passthrough (the provider's key),
Gemini (bodies inside the google-genai SDK's types and Gemini's turn and signature rules) and the
OpenAI Responses API with a Responses-only model (bodies inside the `openai` SDK's
`ResponseCreateParams`, encrypted reasoning carried back through the CLI).

Run it with `./scripts/install-claude-code && .venv/bin/pytest -m claude_code`; without the CLI it
skips. `CCPROXY_RECORD_CLAUDE_CODE=<dir>` also writes the CLI's requests there as fixtures
(tests/fixtures/claude-code/README.md describes the format and the masking).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from e2e.test_e2e_cli import cli_command, free_port, stop, wait_healthy
from fakes import Call, FakeOpenAI, Text, ToolCalls, serve_app
from fakes.anthropic_upstream import MESSAGES_PATH as ANTHROPIC_MESSAGES_PATH
from fakes.anthropic_upstream import AnthropicMessage, AnthropicStream, FakeAnthropic
from fakes.asgi import read_body
from fakes.gemini_upstream import Call as GeminiCall
from fakes.gemini_upstream import Calls as GeminiCalls
from fakes.gemini_upstream import FakeGemini
from fakes.gemini_upstream import Text as GeminiText
from fakes.responses_upstream import Call as ResponsesCall
from fakes.responses_upstream import Calls as ResponsesCalls
from fakes.responses_upstream import FakeResponses, Reasoning
from fakes.responses_upstream import Text as ResponsesText
from fakes.server import ASGIApp, Receive, Scope, Send

REPO = Path(__file__).resolve().parents[2]
VERSION_FILE = REPO / "tests" / "claude_code" / "VERSION"
INSTALL_DIR = Path(os.environ.get("CCPROXY_CLAUDE_CODE_DIR") or Path.home() / ".cache/ccproxy-engine/claude-code")
RECORD_DIR = os.environ.get("CCPROXY_RECORD_CLAUDE_CODE")

UPSTREAM_KEY = "sk-claude-code-upstream"
CLIENT_KEY = "sk-ant-claude-code-dummy"
TASK = "Create hello.txt in the current directory containing the line 'hello from ccproxy'."
CONTENT = "hello from ccproxy\n"
DONE_TEXT = "Created hello.txt."
SIDE_TEXT = "OK"
WRITE_RESULT = "File created successfully at: "
#: The CLI's own limit: a model that never stops calling tools fails the run instead of hanging it.
MAX_TURNS = 4
CLI_TIMEOUT = 180.0


def pinned_version() -> str:
    """The version line of tests/claude_code/VERSION (lines starting with # are comments)."""
    lines = [line.strip() for line in VERSION_FILE.read_text(encoding="utf-8").splitlines()]
    return next(line for line in lines if line and not line.startswith("#"))


VERSION = pinned_version()
CLAUDE = INSTALL_DIR / VERSION / "node_modules" / ".bin" / "claude"


# --- the scripted model, whatever the provider's wire format -----------------------------------


@dataclass(frozen=True)
class Turn:
    """What one upstream request carried, read from the provider's wire format."""

    tools: list[str]
    streamed: bool
    calls: dict[str, tuple[str, dict[str, Any]]]
    """Tool calls of the assistant turns: call id → (tool name, arguments)."""
    results: dict[str, str]
    """Tool results anywhere in the conversation (not only last): call id → result text."""


@dataclass(frozen=True)
class Say:
    text: str


@dataclass(frozen=True)
class WriteFile:
    call_id: str
    path: Path
    content: str

    def arguments(self) -> dict[str, Any]:
        return {"file_path": str(self.path), "content": self.content}


@dataclass(frozen=True)
class ScriptedModel:
    """Writes `target` with one Write call, then says DONE_TEXT once that call's result is back.

    Requests that do not offer Write (title generation, warm-ups, haiku-class side calls) get a plain
    SIDE_TEXT, so the conversation requests alone drive the script.
    """

    target: Path
    call_id: str = "call_ccproxyWrite01"

    @property
    def write(self) -> WriteFile:
        return WriteFile(self.call_id, self.target, CONTENT)

    def answer(self, turn: Turn) -> Say | WriteFile:
        if "Write" not in turn.tools:
            return Say(SIDE_TEXT)
        if self.call_id in turn.results:
            return Say(DONE_TEXT)
        return self.write


# --- providers: a fake upstream that speaks the wire and answers as the scripted model ---------


class FakeUpstream(Protocol):
    app: ASGIApp

    def turns(self) -> list[Turn]:
        """Every request the fake answered, in order."""
        ...

    def assert_valid(self) -> None:
        """Fail if any request left the provider's request types or was refused."""
        ...


@dataclass(frozen=True)
class Provider:
    """One provider row: its rules name (also its config name), the routed model, and its fake."""

    name: str
    model: str
    base_path: str
    fake: Callable[[ScriptedModel], FakeUpstream]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


def openai_turn(body: Mapping[str, Any]) -> Turn:
    messages = body.get("messages") or []
    calls = {
        call["id"]: (call["function"]["name"], json.loads(call["function"]["arguments"] or "{}"))
        for message in messages if message.get("role") == "assistant"
        for call in message.get("tool_calls") or []
    }
    results = {m["tool_call_id"]: _text_of(m.get("content")) for m in messages if m.get("role") == "tool"}
    tools = [tool["function"]["name"] for tool in body.get("tools") or []]
    return Turn(tools=tools, streamed=body.get("stream") is True, calls=calls, results=results)


class OpenAIUpstream:
    """FakeOpenAI (strict: a body outside the `openai` SDK's types gets a 400) driven by the model."""

    def __init__(self, model: ScriptedModel) -> None:
        self.fake = FakeOpenAI(api_key=UPSTREAM_KEY, check_sdk_types=True, responder=self._respond)
        self.app: ASGIApp = self.fake
        self._model = model

    def _respond(self, body: dict[str, Any]) -> Text | ToolCalls:
        answer = self._model.answer(openai_turn(body))
        if isinstance(answer, Say):
            return Text(answer.text)
        return ToolCalls([Call("Write", answer.arguments(), id=answer.call_id)], split=3)

    def turns(self) -> list[Turn]:
        return [openai_turn(request.body) for request in self.fake.requests if isinstance(request.body, dict)]

    def assert_valid(self) -> None:
        self.fake.assert_valid_with_sdk_types()
        refused = [(r.path, r.status, r.problems) for r in self.fake.requests if r.status != 200]
        assert not refused, f"the fake refused requests: {refused}"


def anthropic_turn(body: Mapping[str, Any]) -> Turn:
    blocks = [
        (message.get("role"), block) for message in body.get("messages") or []
        if isinstance(message.get("content"), list) for block in message["content"]
    ]
    calls = {b["id"]: (b["name"], b["input"]) for role, b in blocks if role == "assistant" and b["type"] == "tool_use"}
    results = {b["tool_use_id"]: _text_of(b.get("content"))
               for role, b in blocks if role == "user" and b["type"] == "tool_result"}
    tools = [tool["name"] for tool in body.get("tools") or []]
    return Turn(tools=tools, streamed=body.get("stream") is True, calls=calls, results=results)


class AnthropicUpstream:
    """FakeAnthropic (which answers a script in order), given each reply by the model just before
    it answers the request the reply is for."""

    def __init__(self, model: ScriptedModel) -> None:
        self.fake = FakeAnthropic()
        self.app: ASGIApp = self
        self._model = model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fake(scope, receive, send)
            return
        raw = await read_body(receive)
        if scope["path"] == ANTHROPIC_MESSAGES_PATH:
            self.fake.queue(self._reply(json.loads(raw)))

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": raw, "more_body": False}

        await self.fake(scope, replay, send)  # no await between queue and the fake's pop

    def _reply(self, body: dict[str, Any]) -> AnthropicMessage | AnthropicStream:
        answer = self._model.answer(anthropic_turn(body))
        if isinstance(answer, Say):
            block: dict[str, Any] = {"type": "text", "text": answer.text}
            start, delta, stop = {**block, "text": ""}, {"type": "text_delta", "text": answer.text}, "end_turn"
        else:
            block = {"type": "tool_use", "id": answer.call_id, "name": "Write", "input": answer.arguments()}
            start, stop = {**block, "input": {}}, "tool_use"
            delta = {"type": "input_json_delta", "partial_json": json.dumps(answer.arguments())}
        if body.get("stream") is True:
            return AnthropicStream.of(body["model"], [(start, [delta])], stop)
        return AnthropicMessage([block], stop)

    def turns(self) -> list[Turn]:
        return [anthropic_turn(request.body) for request in self.fake.requests]

    def assert_valid(self) -> None:
        wrong = [(r.path, r.headers.get("x-api-key")) for r in self.fake.requests
                 if r.path != ANTHROPIC_MESSAGES_PATH or r.headers.get("x-api-key") != UPSTREAM_KEY]
        assert not wrong, f"requests on another path or without the provider's key: {wrong}"


def gemini_turn(body: Mapping[str, Any], *, streamed: bool) -> Turn:
    """Gemini says whether it streams in the path (streamGenerateContent), not in the body. Calls and
    responses are keyed by the `id` Gemini issued and the proxy sends back on both; the responses may
    sit in any user content, with other parts or contents after them."""
    parts = [(content.get("role"), part) for content in body.get("contents") or []
             for part in content.get("parts") or [] if isinstance(part, dict)]
    calls = {p["functionCall"].get("id"): (p["functionCall"]["name"], p["functionCall"].get("args") or {})
             for role, p in parts if role == "model" and "functionCall" in p}
    results = {p["functionResponse"].get("id"): _response_text(p["functionResponse"].get("response"))
               for role, p in parts if role == "user" and "functionResponse" in p}
    tools = [declaration["name"] for tool in body.get("tools") or []
             for declaration in tool.get("functionDeclarations") or []]
    return Turn(tools=tools, streamed=streamed, calls=calls, results=results)


def _response_text(response: Any) -> str:
    """The rules put a tool result's text in {"output": ...}, an error's in {"error": ...}."""
    if not isinstance(response, dict):
        return ""
    return str(response.get("output", response.get("error", "")))


class GeminiUpstream:
    """FakeGemini (a body outside the google-genai SDK's types or Gemini's protocol rules gets a 400)
    answering through its responder. The Write call carries an id, as Gemini 3 issues them, and a
    fresh thoughtSignature, which the fake accepts back only if it issued it."""

    def __init__(self, model: ScriptedModel) -> None:
        self.fake = FakeGemini(api_key=UPSTREAM_KEY, responder=self._respond)
        self.app: ASGIApp = self.fake
        self._model = model

    def _respond(self, body: dict[str, Any]) -> GeminiText | GeminiCalls:
        # the responder sees only the body; the fake records the request (path included) before it asks
        answer = self._model.answer(gemini_turn(body, streamed=self.fake.last.stream))
        if isinstance(answer, Say):
            return GeminiText(answer.text)
        return GeminiCalls([GeminiCall("Write", answer.arguments(), id=answer.call_id)])

    def turns(self) -> list[Turn]:
        return [gemini_turn(request.body, streamed=request.stream) for request in self.fake.requests
                if isinstance(request.body, dict)]

    def assert_valid(self) -> None:
        self.fake.assert_all_accepted()
        refused = [(r.path, r.status, r.problems) for r in self.fake.requests if r.status != 200]
        assert not refused, f"the fake refused requests: {refused}"
        # gemini-2.5 does not insist on signatures (gemini-3 does): check the round trip through the CLI
        bodies = [request.body for request in self.fake.requests if isinstance(request.body, dict)]
        unsigned = [part for body in bodies for content in body["contents"] for part in content["parts"]
                    if "functionCall" in part and part.get("thoughtSignature") not in self.fake.issued_signatures]
        assert not unsigned, f"function calls sent back without the signature the fake issued: {unsigned}"


def responses_turn(body: Mapping[str, Any]) -> Turn:
    """The Responses API pairs calls and outputs by `call_id`, anywhere in `input`; an output is text
    or a list of input parts."""
    items = [item for item in body.get("input") or [] if isinstance(item, dict)]
    calls = {item["call_id"]: (item["name"], json.loads(item["arguments"] or "{}"))
             for item in items if item.get("type") == "function_call"}
    results = {item["call_id"]: _text_of(item.get("output"))
               for item in items if item.get("type") == "function_call_output"}
    tools = [tool["name"] for tool in body.get("tools") or [] if tool.get("type") == "function"]
    return Turn(tools=tools, streamed=body.get("stream") is True, calls=calls, results=results)


class ResponsesUpstream:
    """FakeResponses (a body outside the openai SDK's `ResponseCreateParams` types or the protocol
    rules gets a 400) answering through its responder. The Write call comes after a reasoning item
    whose encrypted content the fake accepts back only if it issued it: the CLI must carry it."""

    def __init__(self, model: ScriptedModel) -> None:
        self.fake = FakeResponses(api_key=UPSTREAM_KEY, responder=self._respond)
        self.app: ASGIApp = self.fake
        self._model = model

    def _respond(self, body: dict[str, Any]) -> ResponsesText | Reasoning:
        answer = self._model.answer(responses_turn(body))
        if isinstance(answer, Say):
            return ResponsesText(answer.text)
        call = ResponsesCall("Write", answer.arguments(), id=answer.call_id)
        return Reasoning(["Write the file."], then=ResponsesCalls([call], split=4))

    def turns(self) -> list[Turn]:
        return [responses_turn(request.body) for request in self.fake.requests if isinstance(request.body, dict)]

    def assert_valid(self) -> None:
        self.fake.assert_all_accepted()
        refused = [(r.path, r.status, r.problems) for r in self.fake.requests if r.status != 200]
        assert not refused, f"the fake refused requests: {refused}"
        # the reasoning of the Write step went through the CLI and back, in front of its call
        bodies = [request.body for request in self.fake.requests if isinstance(request.body, dict)]
        carried = [items[i - 1] for body in bodies for items in [body["input"]] for i, item in enumerate(items)
                   if item.get("type") == "function_call" and i and items[i - 1].get("type") == "reasoning"]
        assert carried, "no request carried the Write step's reasoning back"
        assert all(item["encrypted_content"] in self.fake.issued_reasoning.values() for item in carried)


#: One row per provider; a new one needs its fake wrapped like the ones above (read a Turn from its
#: wire, answer the model's Say/WriteFile in it).
PROVIDERS = [
    Provider("openai", "gpt-4.1", "/v1", OpenAIUpstream),
    Provider("anthropic", "claude-sonnet-4-5", "", AnthropicUpstream),
    Provider("gemini", "gemini-2.5-flash", "/v1beta", GeminiUpstream),
    Provider("openai-responses", "gpt-5-codex", "/v1", ResponsesUpstream),
]


# --- serving and running -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def claude() -> Path:
    if not os.access(CLAUDE, os.X_OK):
        pytest.skip(f"Claude Code {VERSION} is not installed at {CLAUDE}: run scripts/install-claude-code (needs npm)")
    return CLAUDE


def write_config(directory: Path, provider: Provider, fake_url: str) -> Path:
    path = directory / "ccproxy.yaml"
    path.write_text(
        "providers:\n"
        f"  {provider.name}: {{base_url: '{fake_url}{provider.base_path}', api_key: {UPSTREAM_KEY}}}\n"
        "routes:\n"
        f"  default: [{provider.name}/{provider.model}]\n",
        encoding="utf-8",
    )
    return path


@dataclass
class Served:
    url: str
    output: str = ""
    returncode: int | None = None


@contextlib.contextmanager
def serve_proxy(config: Path) -> Iterator[Served]:
    """`ccproxy-engine serve --log-level info` as its own process; `output` and `returncode` are
    filled in when it has stopped (SIGTERM) at the end of the block."""
    port = free_port()
    process = subprocess.Popen(
        [*cli_command(), "serve", "--config", str(config), "--port", str(port), "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    served = Served(f"http://127.0.0.1:{port}")
    try:
        wait_healthy(served.url, process)
        yield served
    finally:
        served.output = stop(process)
        served.returncode = process.returncode


def claude_env(home: Path, base_url: str) -> dict[str, str]:
    """Only what the CLI needs: no proxy, key or config of the machine leaks in."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": CLIENT_KEY,
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_BUG_COMMAND": "1",
        # fail fast: the script is deterministic, so a retry would only hide a failure (and the
        # CLI's backoff makes a broken proxy cost minutes)
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "API_TIMEOUT_MS": "60000",
    }


def run_claude(claude: Path, base_url: str, project: Path, home: Path) -> subprocess.CompletedProcess[str]:
    command = [str(claude), "-p", TASK, "--output-format", "json", "--permission-mode", "acceptEdits",
               "--max-turns", str(MAX_TURNS)]
    return subprocess.run(command, cwd=project, env=claude_env(home, base_url), capture_output=True, text=True,
                          timeout=CLI_TIMEOUT, check=False)


# --- recording the CLI's requests as fixtures (CCPROXY_RECORD_CLAUDE_CODE) ----------------------


@dataclass
class Exchange:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    response: bytes = b""


@dataclass
class Recorder:
    """A pass-through in front of the proxy that keeps every request and answer, for fixtures."""

    target: str
    exchanges: list[Exchange] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        query = scope["query_string"].decode()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        exchange = Exchange(scope["method"], scope["path"] + (f"?{query}" if query else ""), headers, body)
        self.exchanges.append(exchange)
        hop = {"host", "content-length", "connection", "transfer-encoding"}
        forwarded = {k: v for k, v in headers.items() if k.lower() not in hop}
        async with httpx.AsyncClient(timeout=CLI_TIMEOUT) as client, \
                client.stream(exchange.method, self.target + exchange.path, headers=forwarded,
                              content=body) as response:
            exchange.status = response.status_code
            kept = [(k.encode(), v.encode()) for k, v in response.headers.multi_items()
                    if k.lower() not in hop]
            await send({"type": "http.response.start", "status": response.status_code, "headers": kept})
            async for piece in response.aiter_raw():
                exchange.response += piece
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


@contextlib.contextmanager
def recording(proxy_url: str, rewrites: Mapping[str, str]) -> Iterator[str]:
    """Without CCPROXY_RECORD_CLAUDE_CODE the CLI talks to the proxy directly; with it, through a
    Recorder, and its `POST /v1/messages` requests are written there as NNN.json at the end."""
    if not RECORD_DIR:
        yield proxy_url
        return
    recorder = Recorder(proxy_url)
    with serve_app(recorder) as url:
        yield url
    failed = [(e.method, e.path, e.status) for e in recorder.exchanges if e.status >= 400]
    assert not failed, f"the proxy answered the CLI with errors: {failed}"
    write_fixtures(Path(RECORD_DIR), recorder.exchanges, rewrites)


def write_fixtures(directory: Path, exchanges: Collection[Exchange], rewrites: Mapping[str, str]) -> None:
    """The fixture format of tests/fixtures/claude-code: scratch paths and the kernel version
    rewritten (`rewrites`), the client key masked; Content-Length is the rewritten body's."""
    directory.mkdir(parents=True, exist_ok=True)
    messages = [e for e in exchanges if e.method == "POST" and e.path.startswith("/v1/messages?")]
    for number, exchange in enumerate(messages, 1):
        text = exchange.body.decode()
        for old, new in rewrites.items():
            text = text.replace(old, new)
        text = re.sub(r"OS Version: [^\\\n\"]*", "OS Version: Linux 6.8.0-generic", text)
        headers = {**exchange.headers, "x-api-key": "sk-ant-***(masked)", "host": "127.0.0.1:8080",
                   "content-length": str(len(text.encode()))}
        fixture = {"path": exchange.path, "headers": headers, "body": json.loads(text)}
        (directory / f"{number:03d}.json").write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n",
                                                      encoding="utf-8")


def path_rewrites(project: Path, home: Path) -> dict[str, str]:
    """Scratch paths → the fixtures' /home/dev paths, also in the dash-slug form the CLI uses for
    its per-project directory (longest first, so the project wins over its parent)."""
    new_project, new_home = "/home/dev/project-fixture-5", "/home/dev"
    pairs = {str(project): new_project, str(home): new_home}
    slugs = {re.sub(r"[^A-Za-z0-9]", "-", old): re.sub(r"[^A-Za-z0-9]", "-", new) for old, new in pairs.items()}
    return dict(sorted({**pairs, **slugs}.items(), key=lambda item: -len(item[0])))


# --- the tests ----------------------------------------------------------------------------------


def test_the_scripted_model_sees_a_tool_result_that_system_messages_follow(tmp_path: Path) -> None:
    """Claude Code may append system-role messages after the tool result: the script must still
    see it, or it would ask for the same Write forever."""
    model = ScriptedModel(tmp_path / "hello.txt")
    call = Call("Write", model.write.arguments(), id=model.call_id).to_json()
    body: dict[str, Any] = {
        "stream": True,
        "tools": [{"type": "function", "function": {"name": name}} for name in ("Bash", "Write")],
        "messages": [
            {"role": "system", "content": "prompt"},
            {"role": "user", "content": "task"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": model.call_id, "content": [{"type": "text", "text": "created"}]},
            {"role": "system", "content": "<system-reminder>later</system-reminder>"},
        ],
    }
    assert model.answer(openai_turn(body)) == Say(DONE_TEXT)
    assert model.answer(openai_turn({**body, "messages": body["messages"][:2]})) == model.write
    assert model.answer(openai_turn({**body, "tools": []})) == Say(SIDE_TEXT)


def test_the_scripted_model_reads_the_anthropic_wire_too(tmp_path: Path) -> None:
    model = ScriptedModel(tmp_path / "hello.txt")
    write = model.write
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "task"}]},
        {"role": "system", "content": "environment"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": write.call_id, "name": "Write",
                                           "input": write.arguments()}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": write.call_id,
                                      "content": [{"type": "text", "text": "created"}]}]},
        {"role": "system", "content": "<system-reminder>later</system-reminder>"},
    ]
    body = {"stream": True, "tools": [{"name": "Write", "input_schema": {}}], "messages": messages}
    turn = anthropic_turn(body)
    assert turn.calls == {write.call_id: ("Write", write.arguments())}
    assert turn.results == {write.call_id: "created"}
    assert model.answer(turn) == Say(DONE_TEXT)
    assert model.answer(anthropic_turn({**body, "messages": messages[:2]})) == write


def test_the_scripted_model_finds_a_gemini_function_response_that_other_content_follows(tmp_path: Path) -> None:
    """On Gemini the tool result is a functionResponse part; the CLI's reminders come after it as text
    parts of the same content or as later user contents, so the last content alone is not enough."""
    model = ScriptedModel(tmp_path / "hello.txt")
    write = model.write
    call = GeminiCall("Write", write.arguments(), id=write.call_id).to_json()
    response = {"id": write.call_id, "name": "Write", "response": {"output": "created"}}
    contents: list[dict[str, Any]] = [
        {"role": "user", "parts": [{"text": "task"}]},
        {"role": "model", "parts": [{"functionCall": call, "thoughtSignature": "c2ln"}]},
        {"role": "user", "parts": [{"functionResponse": response},
                                   {"text": "<system-reminder>later</system-reminder>"}]},
        {"role": "model", "parts": [{"text": "Noted."}]},
        {"role": "user", "parts": [{"text": "<system-reminder>even later</system-reminder>"}]},
    ]
    body = {"tools": [{"functionDeclarations": [{"name": name} for name in ("Bash", "Write")]}], "contents": contents}
    turn = gemini_turn(body, streamed=True)
    assert turn.calls == {write.call_id: ("Write", write.arguments())}
    assert turn.results == {write.call_id: "created"}
    assert model.answer(turn) == Say(DONE_TEXT)
    assert model.answer(gemini_turn({**body, "contents": contents[:1]}, streamed=True)) == write
    assert model.answer(gemini_turn({**body, "tools": []}, streamed=True)) == Say(SIDE_TEXT)
    error = {**response, "response": {"error": "denied"}}
    refused = {"role": "user", "parts": [{"functionResponse": error}]}
    failed = gemini_turn({**body, "contents": [*contents[:2], refused]}, streamed=False)
    assert (failed.results, failed.streamed) == ({write.call_id: "denied"}, False)


def test_the_scripted_model_finds_a_responses_output_anywhere_in_the_input(tmp_path: Path) -> None:
    """On the Responses API the tool result is a function_call_output item paired by call_id; the
    CLI's reminders may follow it as messages."""
    model = ScriptedModel(tmp_path / "hello.txt")
    write = model.write
    arguments = json.dumps(write.arguments())
    output = [{"type": "input_text", "text": "created"}]
    items: list[dict[str, Any]] = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "task"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "e"},
        {"type": "function_call", "call_id": write.call_id, "name": "Write", "arguments": arguments},
        {"type": "function_call_output", "call_id": write.call_id, "output": output},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<system-reminder>"}]},
    ]
    body = {"stream": True, "tools": [{"type": "function", "name": name} for name in ("Bash", "Write")],
            "input": items}
    turn = responses_turn(body)
    assert turn.calls == {write.call_id: ("Write", write.arguments())}
    assert turn.results == {write.call_id: "created"}
    assert model.answer(turn) == Say(DONE_TEXT)
    assert model.answer(responses_turn({**body, "input": items[:1]})) == write
    assert model.answer(responses_turn({**body, "tools": []})) == Say(SIDE_TEXT)


@pytest.mark.e2e
@pytest.mark.claude_code
@pytest.mark.parametrize("provider", PROVIDERS, ids=[p.name for p in PROVIDERS])
def test_claude_code_writes_a_file_through_the_proxy(claude: Path, provider: Provider, tmp_path: Path) -> None:
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    model = ScriptedModel(project / "hello.txt")
    upstream = provider.fake(model)
    started = time.monotonic()
    with serve_app(upstream.app) as fake_url, \
            serve_proxy(write_config(tmp_path, provider, fake_url)) as proxy, \
            recording(proxy.url, path_rewrites(project, home)) as base_url:
        run = run_claude(claude, base_url, project, home)
    took = time.monotonic() - started
    context = f"CLI exit {run.returncode} after {took:.1f} s\nstdout: {run.stdout}\nstderr: {run.stderr}\n" \
              f"proxy:\n{proxy.output}"

    assert run.returncode == 0, context
    result = json.loads(run.stdout)
    assert (result["type"], result["subtype"], result["is_error"]) == ("result", "success", False), context
    assert result["result"] == DONE_TEXT, context
    assert model.target.read_text(encoding="utf-8") == CONTENT
    assert proxy.returncode == 0, context
    assert "Traceback" not in proxy.output, proxy.output

    upstream.assert_valid()
    turns = upstream.turns()
    assert all(turn.streamed for turn in turns), "the CLI fell back to a non-streamed request"
    assert any(len(turn.tools) >= 12 for turn in turns), [len(turn.tools) for turn in turns]
    write = model.write
    answered = [turn for turn in turns if write.call_id in turn.results]
    assert answered, f"no request carried the Write result: {turns}"
    assert answered[0].calls[write.call_id] == ("Write", write.arguments())
    assert answered[0].results[write.call_id].startswith(WRITE_RESULT + str(model.target))


@pytest.mark.e2e
@pytest.mark.claude_code
def test_claude_code_through_the_launcher(claude: Path, tmp_path: Path) -> None:
    """`ccproxy-engine code`, as a user runs it: the proxy starts in the background for the config,
    the real CLI finds it through the environment the launcher sets, and its exit code comes back."""
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    model = ScriptedModel(project / "hello.txt")
    provider = PROVIDERS[0]
    upstream = provider.fake(model)
    port = free_port()
    env = {key: value for key, value in claude_env(home, "unused").items() if key != "ANTHROPIC_BASE_URL"}
    env.update({"PATH": f"{claude.parent}{os.pathsep}{env['PATH']}", "XDG_STATE_HOME": str(tmp_path / "state")})
    with serve_app(upstream.app) as fake_url:
        config = write_config(tmp_path, provider, fake_url)
        config.write_text(f"server: {{port: {port}}}\n" + config.read_text(encoding="utf-8"), encoding="utf-8")
        command = [*cli_command(), "code", "--config", str(config), "-p", TASK, "--output-format", "json",
                   "--permission-mode", "acceptEdits", "--max-turns", str(MAX_TURNS)]
        try:
            run = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True,
                                 timeout=CLI_TIMEOUT, check=False)
        finally:
            stopped = subprocess.run([*cli_command(), "stop", "--config", str(config)], env=env,
                                     capture_output=True, text=True, timeout=60, check=False)
    context = f"exit {run.returncode}\nstdout: {run.stdout}\nstderr: {run.stderr}"
    assert run.returncode == 0, context
    assert f"ccproxy-engine started on http://127.0.0.1:{port}" in run.stderr, context
    result = json.loads(run.stdout)
    assert (result["subtype"], result["result"]) == ("success", DONE_TEXT), context
    assert model.target.read_text(encoding="utf-8") == CONTENT
    assert "ccproxy-engine stopped" in stopped.stderr
    upstream.assert_valid()
