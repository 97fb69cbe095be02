"""Rule cases: the YAML files in tests/rules/<provider>/ run through that provider's compiled rules.

A case file is a list of cases. Each case names an Anthropic request, what the rules must send
upstream, an upstream reply, and what the client must get back::

    - name: plain-text                 # unique in its file; the test id is "<provider>/<file>:<name>"
      model: gpt-4.1                   # the upstream model (default: the provider dialect's model)
      stream: false                    # default: the request's own "stream"; written into the request
      request:                         # an Anthropic body (model and max_tokens default), or
        messages: [{role: user, content: Hi}]
      # request: {fixture: claude-code/2.1.332-read-notes/002.json}   (that file's "body")
      expect_upstream: {messages: [{role: user, content: Hi}]}
      upstream_reply: {body: {...}}    # or {chunks: [{...}, "[DONE]"]}, or {status: 429, body: ..., headers: ...}
      expect_anthropic: {content: [{type: text, text: Hello}]}
      expect_error: {status: 429, type: rate_limit_error, message_contains: slow down}
      xfail: "why this case fails today"

Matching: a mapping matches when every key it gives matches (``$absent`` asserts a key is missing);
a list matches when it has the same length and each item matches; anything else must be equal.
A stream's answer is its event list, each event written as ``{event: <name>, ...data}``.

The provider is the case file's directory (tests/rules/deepseek/*.yaml run rules/deepseek.yaml). Its
`Dialect` (tests/fakes/dialects.py) gives the default upstream model, the request keys the
provider takes beyond the openai SDK's request types (every other key must fit those types) and the
provider's own request rules, which every upstream body must keep (Mistral's 9-character tool-call
ids, DeepSeek's reasoning_content on tool-call turns, ...). A
provider with a wire format of its own is in `NATIVE_UPSTREAMS` instead, with its default model and
its fake's request checks (Gemini: the google-genai SDK types and the protocol rules; the OpenAI
Responses API: the openai SDK's `ResponseCreateParams` types and the protocol rules). The
provider's settings are what a config naming only the provider would give: the rule's default
headers, and an API key unless the rule's defaults name none (a keyless local server).

Every case is also pinned whole by syrupy: the upstream request (URL, headers with the key masked,
body) and the answer (message, event list or error), so any behaviour change shows as a snapshot
diff. Each case file has its own snapshot file, ``__snapshots__/<provider>/<case file>.ambr``
(`CaseFileSnapshots`); in cases built from a real Claude Code request, a long value the rules pass
through unchanged (a tool description, a schema) is pinned by its size and digest
(`digest_unchanged`), so the snapshot shows what the rules change. Ids are deterministic
(`deterministic_ids`). A broken case fails as ``name [file:line]: reason``.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import jsonschema
import orjson
import pytest
from fakes import check_sdk_types, dialect
from fakes import gemini_upstream as gemini
from fakes import responses_upstream as responses
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from syrupy.assertion import SnapshotAssertion
from syrupy.extensions.amber import AmberSnapshotExtension
from syrupy.location import PyTestLocation
from syrupy.types import SnapshotIndex

from ccproxy_engine import _stream
from ccproxy_engine._compiler import CompiledRules, compile_rules
from ccproxy_engine._config import ProviderSettings
from ccproxy_engine._endpoint import Endpoint, PassthroughEndpoint, UpstreamCall
from ccproxy_engine._errors import EngineError
from ccproxy_engine._functions import deterministic_ids, new_id
from ccproxy_engine._loader import load_rules, load_schema

CASES_DIR = Path(__file__).resolve().parent
REPO_DIR = CASES_DIR.parents[1]
FIXTURES_DIR = REPO_DIR / "tests" / "fixtures"

DEFAULT_CLIENT_MODEL = "claude-sonnet-4-5"
DEFAULT_MAX_TOKENS = 1024
API_KEY = "sk-test"
ABSENT = "$absent"

CASE_KEYS = frozenset({"name", "model", "stream", "request", "expect_upstream", "upstream_reply",
                       "expect_anthropic", "expect_error", "xfail"})
REPLY_KEYS = frozenset({"body", "chunks", "status", "headers"})
ERROR_KEYS = frozenset({"status", "type", "message_contains"})

KeyPath = tuple[str | int, ...]


# --- cases -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Case:
    """One case as read from its file: plain data for running, the ruamel node for line numbers."""

    provider: str
    file: Path
    line: int
    name: str
    data: dict[str, Any]
    node: CommentedMap | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        # one ":" only: pytest and syrupy split node ids at "::"
        return f"{self.file.relative_to(CASES_DIR).as_posix()}:{self.name}"

    def line_of(self, path: KeyPath) -> int:
        """The line of the deepest value along `path` that the case file spells out."""
        line, node = self.line, self.node
        for key in path:
            if isinstance(node, CommentedMap) and key in node:
                line = node.lc.key(key)[0] + 1
                node = node[key]
            elif isinstance(node, CommentedSeq) and isinstance(key, int) and key < len(node):
                line = node.lc.item(key)[0] + 1
                node = node[key]
            else:
                break
        return line

    def report(self, path: KeyPath, reason: str) -> str:
        where = self.file.relative_to(REPO_DIR).as_posix()
        return f"{self.name} [{where}:{self.line_of(path)}]: {reason}"


def plain(value: Any) -> Any:
    """ruamel's commented containers and scalar subclasses → dict, list, str, int, float, bool.
    JMESPath checks types by name, so the rules must never see a CommentedMap."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    for kind in (str, int, float):
        if isinstance(value, kind):
            return kind(value)
    raise TypeError(f"not a JSON value: {value!r}")


def load_case_file(provider: str, path: Path) -> list[Case]:
    """Every case in one file; a file that cannot be read becomes one failing case."""
    try:
        document = YAML(typ="rt").load(path.read_text(encoding="utf-8"))
    except (OSError, YAMLError) as exc:
        return [Case(provider, path, 1, "<unreadable>", {}, problems=[str(exc)])]
    if not isinstance(document, CommentedSeq):
        return [Case(provider, path, 1, "<not a list>", {}, problems=["a case file is a list of cases"])]
    cases: list[Case] = []
    for index, node in enumerate(document):
        line = document.lc.item(index)[0] + 1
        if not isinstance(node, CommentedMap):
            cases.append(Case(provider, path, line, f"<case {index}>", {}, problems=["a case is a mapping"]))
            continue
        name = str(node.get("name") or f"<case {index}>")
        try:
            data = plain(node)
        except TypeError as exc:  # e.g. an unquoted date: YAML reads it as a timestamp
            broken = Case(provider, path, line, name, {}, node)
            broken.problems.append(broken.report((), str(exc)))
            cases.append(broken)
            continue
        case = Case(provider, path, line, name, data, node)
        case.problems = [case.report(p, reason) for p, reason in case_problems(case.data)]
        if any(other.name == case.name for other in cases):
            case.problems.append(case.report(("name",), "a case with this name comes earlier in the file"))
        cases.append(case)
    return cases


def case_problems(data: dict[str, Any]) -> Iterator[tuple[KeyPath, str]]:
    """Shape errors in a case: unknown or missing keys, and replies that do not fit `stream`."""
    for key in data.keys() - CASE_KEYS:
        yield (key,), f"unknown key {key!r} (known: {', '.join(sorted(CASE_KEYS))})"
    if not isinstance(data.get("name"), str):
        yield ("name",), "'name' is required"
    if not isinstance(data.get("model", ""), str):
        yield ("model",), "'model' is an upstream model name"
    if not isinstance(data.get("stream", False), bool):
        yield ("stream",), "'stream' is true or false"
    request = data.get("request")
    if not isinstance(request, dict):
        yield ("request",), "'request' is required: an Anthropic body or {fixture: <path>}"
    elif "fixture" in request and len(request) != 1:
        yield ("request",), "a fixture request has no other keys"
    reply = data.get("upstream_reply")
    if reply is not None:
        if not isinstance(reply, dict):
            yield ("upstream_reply",), "upstream_reply is a mapping"
            return
        for key in reply.keys() - REPLY_KEYS:
            yield ("upstream_reply", key), f"unknown key {key!r} (known: {', '.join(sorted(REPLY_KEYS))})"
        if "status" not in reply and ("body" in reply) == ("chunks" in reply):
            yield ("upstream_reply",), "give 'body' (a whole answer) or 'chunks' (a stream), not both"
    expected_error = data.get("expect_error")
    if isinstance(expected_error, dict):
        for key in expected_error.keys() - ERROR_KEYS:
            yield ("expect_error", key), f"unknown key {key!r} (known: {', '.join(sorted(ERROR_KEYS))})"


def collect_cases() -> list[Case]:
    return [case
            for provider_dir in sorted(p for p in CASES_DIR.iterdir() if p.is_dir() and p.name[0] not in "._")
            for path in sorted(provider_dir.glob("*.yaml"))
            for case in load_case_file(provider_dir.name, path)]


def case_param(case: Case) -> Any:
    reason = case.data.get("xfail")
    marks = [pytest.mark.xfail(reason=str(reason), strict=True)] if reason else []
    return pytest.param(case, id=case.id, marks=marks)


# --- matching ----------------------------------------------------------------------------------


def show(value: Any, limit: int = 200) -> str:
    text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    return text if len(text) <= limit else text[:limit] + "…"


def show_path(path: KeyPath) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def mismatches(expected: Any, actual: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, str]]:
    """Where `actual` does not match `expected` (the module docstring says how they match)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            yield path, f"expected an object, got {show(actual)}"
            return
        for key, want in expected.items():
            if want == ABSENT:
                if key in actual:
                    yield (*path, key), f"expected no such key, got {show(actual[key])}"
            elif key not in actual:
                yield (*path, key), f"missing; the object has {show(sorted(actual))}"
            else:
                yield from mismatches(want, actual[key], (*path, key))
    elif isinstance(expected, list):
        if not isinstance(actual, list):
            yield path, f"expected a list, got {show(actual)}"
        elif len(expected) != len(actual):
            yield path, f"expected {len(expected)} items, got {len(actual)}: {show(actual, 600)}"
        else:
            for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
                yield from mismatches(want, got, (*path, index))
    elif not _same_scalar(expected, actual):
        yield path, f"expected {show(expected)}, got {show(actual)}"


def _same_scalar(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool) or expected is None or actual is None:
        return expected is actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return expected == actual
    return type(expected) is type(actual) and expected == actual


# --- running -----------------------------------------------------------------------------------


@functools.cache
def compiled_rules() -> dict[str, CompiledRules]:
    """The built-in rules, compiled once for the whole session."""
    rule_sets, diagnostics = load_rules()
    compiled, problems = compile_rules(rule_sets)
    errors = [d.format() for d in (*diagnostics, *problems) if d.severity == "error"]
    assert not errors, "\n".join(errors)
    return compiled


@functools.cache
def endpoint(provider: str) -> Endpoint:
    """The endpoint the app binds for a provider configured with a base URL and (unless the rules name
    no key) an API key; ${VAR:-default} in the rule's defaults take their defaults."""
    rules = compiled_rules()[provider]
    settings = ProviderSettings(name=provider, rules=provider, base_url=f"https://api.{provider}.test/v1",
                                api_key=API_KEY if "api_key" in rules.defaults else None)
    kind = PassthroughEndpoint if rules.passthrough else Endpoint
    return kind(settings, rules, env={})


@functools.cache
def anthropic_request_schema() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema("anthropic.messages.schema.json"))


@functools.cache
def fixture_body(name: str) -> dict[str, Any]:
    body = orjson.loads((FIXTURES_DIR / name).read_bytes())["body"]
    assert isinstance(body, dict)
    return body


def gemini_problems(url: str, body: dict[str, Any]) -> list[str]:
    """What the fake Gemini would refuse in a request (signatures are checked for presence only:
    the cases make their own up)."""
    model = url.rsplit("/models/", 1)[-1].split(":", 1)[0]
    return gemini.check_sdk_types(body) + gemini.validate_request(body, model)


def anthropic_problems(url: str, body: dict[str, Any]) -> list[str]:
    """What Anthropic's request checks would refuse in a passthrough body (the client's, re-routed)."""
    return [f"{show_path(tuple(error.absolute_path)) or 'body'}: {error.message}"
            for error in anthropic_request_schema().iter_errors(body)]


def responses_problems(url: str, body: dict[str, Any]) -> list[str]:
    """What the fake Responses API would refuse in a request (encrypted reasoning is checked for
    presence and placement only: the cases make their own up)."""
    return [str(problem) for problem in responses.check_sdk_types(body)] + responses.validate_request(body)


NATIVE_UPSTREAMS: dict[str, tuple[str, Callable[[str, dict[str, Any]], list[str]]]] = {
    "gemini": ("gemini-2.5-pro", gemini_problems),
    "openai-responses": ("gpt-5-codex", responses_problems),
    "anthropic": ("claude-sonnet-4-5", anthropic_problems),
}
"""Providers that do not speak OpenAI's wire format: default upstream model, request checks (url, body)."""


def default_model(provider: str) -> str:
    native = NATIVE_UPSTREAMS.get(provider)
    return native[0] if native else dialect(provider).model


def upstream_problems(provider: str, url: str, body: dict[str, Any]) -> list[str]:
    """Why the provider's fake upstream would refuse this request body (empty when it takes it)."""
    native = NATIVE_UPSTREAMS.get(provider)
    if native:
        return [f"fails the fake {provider} upstream's checks: {problem}" for problem in native[1](url, body)]
    speaks = dialect(provider)
    found = [f"leaves the openai SDK types: {problem}"
             for problem in check_sdk_types(body) if problem.pattern not in speaks.allow_extra]
    refused = speaks.check(body)
    if refused is not None:
        found.append(f"breaks a rule of {provider}'s own (its fake answers {refused.status}): {refused.message}")
    return found


def request_body(case: Case) -> dict[str, Any]:
    """The Anthropic body a client would send (a fresh copy: rules must not see another case's edits)."""
    request = case.data["request"]
    if "fixture" in request:
        body = orjson.loads(orjson.dumps(fixture_body(request["fixture"])))
    else:
        body = {"model": DEFAULT_CLIENT_MODEL, "max_tokens": DEFAULT_MAX_TOKENS,
                **orjson.loads(orjson.dumps(request))}
    if "stream" in case.data:
        body["stream"] = case.data["stream"]
    assert isinstance(body, dict)
    return body


def mask(text: str) -> str:
    return text.replace(API_KEY, "<api_key>")


def error_view(exc: EngineError) -> dict[str, Any]:
    view: dict[str, Any] = {"status": exc.status, "type": exc.error_type, "message": exc.message}
    if exc.headers:
        view["headers"] = exc.headers
    return view


def reply_bytes(body: Any) -> bytes:
    """An upstream body as sent: a string as it is (an HTML error page), anything else as JSON."""
    return body.encode() if isinstance(body, str) else orjson.dumps(body)


def stream_events(provider: Endpoint, call: UpstreamCall, chunks: list[Any]) -> list[dict[str, Any]]:
    """A 200 stream, one SSE record per chunk then EOF, through the endpoint's own translator; the
    chunks after the translator is done are never read, as the app closes the upstream then."""
    translator = provider.events(call, 0)
    events = translator.start()
    for chunk in chunks:
        if translator.is_done:
            break
        events += translator.feed_record(chunk if isinstance(chunk, str) else orjson.dumps(chunk).decode())
    events += translator.finish()
    return [{"event": name, **payload} for name, payload in events]


@dataclass(slots=True)
class Outcome:
    upstream: dict[str, Any] | None = None
    answer: Any = None
    error: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


def run_case(case: Case) -> Outcome:
    data = case.data
    provider = endpoint(case.provider)
    model = data.get("model", default_model(case.provider))
    body = request_body(case)
    outcome = Outcome()
    schema_error = jsonschema.exceptions.best_match(anthropic_request_schema().iter_errors(body))
    if schema_error is not None:
        where = show_path(tuple(schema_error.absolute_path)) or "body"
        outcome.problems.append(case.report(("request",), f"not a valid Anthropic request: {where}: "
                                                          f"{schema_error.message}"))
        return outcome
    try:
        call = provider.prepare(body, model=model)
    except EngineError as exc:
        outcome.error = error_view(exc)
        return outcome
    upstream_body = call.body if call.body is not None else orjson.loads(call.request.body)
    outcome.upstream = {"url": mask(call.request.url),
                        "headers": {k: mask(v) for k, v in call.request.headers.items()}, "body": upstream_body}
    outcome.problems += [case.report(("request",), f"upstream body {problem}")
                         for problem in upstream_problems(case.provider, call.request.url, upstream_body)]
    reply = data.get("upstream_reply")
    if reply is None:
        return outcome
    try:
        if "status" in reply and not 200 <= reply["status"] < 300:
            retry_after = {k.lower(): str(v) for k, v in (reply.get("headers") or {}).items()}.get("retry-after")
            raise provider.error(reply["status"], reply_bytes(reply.get("body", "")), retry_after)
        if "chunks" in reply:
            outcome.answer = stream_events(provider, call, reply["chunks"])
        else:
            outcome.answer = provider.message(call, reply_bytes(reply["body"]))
    except EngineError as exc:
        outcome.error = error_view(exc)
    return outcome


def check_expectations(case: Case, outcome: Outcome) -> list[str]:
    data = case.data
    problems = list(outcome.problems)
    if "expect_upstream" in data:
        if outcome.upstream is None:
            problems.append(case.report(("expect_upstream",), f"no upstream request was built: {outcome.error}"))
        else:
            problems += [case.report(("expect_upstream", *path), f"upstream {show_path(path) or 'body'}: {reason}")
                         for path, reason in mismatches(data["expect_upstream"], outcome.upstream["body"])]
    if "expect_anthropic" in data:
        if outcome.answer is None:
            problems.append(case.report(("expect_anthropic",), f"no answer: {outcome.error or 'no upstream_reply'}"))
        else:
            problems += [case.report(("expect_anthropic", *path), f"answer {show_path(path) or '(whole)'}: {reason}")
                         for path, reason in mismatches(data["expect_anthropic"], outcome.answer)]
    expected_error = data.get("expect_error")
    if expected_error is not None:
        problems += error_problems(case, expected_error, outcome.error)
    elif outcome.error is not None:
        problems.append(case.report((), f"unexpected error: {outcome.error}"))
    return problems


def error_problems(case: Case, expected: dict[str, Any], error: dict[str, Any] | None) -> list[str]:
    if error is None:
        return [case.report(("expect_error",), "expected an error, got none")]
    problems = [case.report(("expect_error", key),
                            f"error {key}: expected {show(expected[key])}, got {show(error[key])}")
                for key in ("status", "type") if key in expected and expected[key] != error[key]]
    needle = expected.get("message_contains")
    if needle is not None and str(needle) not in error["message"]:
        problems.append(case.report(("expect_error", "message_contains"),
                                    f"error message {show(error['message'])} does not contain {show(needle)}"))
    return problems


# --- the test ----------------------------------------------------------------------------------


CASES = collect_cases()


# --- snapshots ---------------------------------------------------------------------------------

SNAPSHOTS_DIR = CASES_DIR / "__snapshots__"
#: A string at least this long that reaches the upstream exactly as the client sent it is pinned by
#: a digest in the snapshots of real Claude Code requests: what the rules change is what a reviewer
#: needs to read, not 100 KB of system prompt.
UNCHANGED_DIGEST_CHARS = 200
_CASE_ID = re.compile(r"\[(?P<provider>[^/\]]+)/(?P<file>[^:\]]+)\.yaml:")


class CaseFileSnapshots(AmberSnapshotExtension):
    """One snapshot file per rule-case file, ``__snapshots__/<provider>/<case file>.ambr``, so each
    is small enough to read in a review."""

    @classmethod
    def _parts(cls, test_location: PyTestLocation) -> tuple[str, str]:
        match = _CASE_ID.search(test_location.testname)
        assert match is not None, f"not a rule case: {test_location.testname}"
        return match.group("provider"), match.group("file")

    @classmethod
    def dirname(cls, *, test_location: PyTestLocation) -> str:
        return str(SNAPSHOTS_DIR / cls._parts(test_location)[0])

    @classmethod
    def discovery_dirname(cls, *, test_location: PyTestLocation) -> str:
        return str(SNAPSHOTS_DIR)

    @classmethod
    def get_file_basename(cls, *, test_location: PyTestLocation, index: SnapshotIndex) -> str:
        return cls._parts(test_location)[1]

    @classmethod
    def matches_test_location(cls, *, test_location: PyTestLocation, snapshot_location: str) -> bool:
        return Path(snapshot_location) == Path(cls.get_location(test_location=test_location, index=0))


@pytest.fixture
def case_snapshot(snapshot: SnapshotAssertion) -> SnapshotAssertion:
    return snapshot.use_extension(CaseFileSnapshots)


def digest_unchanged(upstream: Any, request: Any) -> Any:
    """`upstream` with every long value (a string, or a whole object or list such as a tool's schema)
    that the client sent verbatim replaced by its size and digest."""
    sent: set[bytes] = set()
    _collect(request, sent)

    def walk(value: Any) -> Any:
        if isinstance(value, str | dict | list):
            text = _canonical(value)
            if len(text) >= UNCHANGED_DIGEST_CHARS and text in sent:
                kind = {str: "text", dict: "object", list: "list"}[type(value)]
                digest = hashlib.sha256(text).hexdigest()[:16]
                return f"<{kind} unchanged from the request: {len(text)} bytes, sha256 {digest}>"
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    return walk(upstream)


def _canonical(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _collect(value: Any, into: set[bytes]) -> None:
    if isinstance(value, str | dict | list):
        text = _canonical(value)
        if len(text) >= UNCHANGED_DIGEST_CHARS:
            into.add(text)
    if isinstance(value, dict):
        for item in value.values():
            _collect(item, into)
    elif isinstance(value, list):
        for item in value:
            _collect(item, into)


@pytest.mark.parametrize("case", [case_param(case) for case in CASES])
def test_rule_case(case: Case, case_snapshot: SnapshotAssertion) -> None:
    snapshot = case_snapshot
    if case.problems:
        pytest.fail("\n".join(case.problems), pytrace=False)
    with deterministic_ids(), mock.patch.object(_stream, "new_tool_use_id", lambda: new_id("toolu_")):
        outcome = run_case(case)
    problems = check_expectations(case, outcome)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
    if outcome.upstream is not None:
        if "fixture" in case.data["request"]:
            outcome.upstream = digest_unchanged(outcome.upstream, request_body(case))
        assert outcome.upstream == snapshot(name="upstream")
    if outcome.answer is not None:
        assert outcome.answer == snapshot(name="answer")
    if outcome.error is not None:
        assert outcome.error == snapshot(name="error")


def test_case_names_are_unique_and_every_provider_has_cases() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    # a passthrough provider builds no body, but its answers are decoded for OpenAI-format clients
    assert {case.provider for case in CASES} >= set(compiled_rules())
