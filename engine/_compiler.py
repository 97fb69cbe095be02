"""Rule sets → `CompiledRules`: the request chain, the response decoders and the error map.

Compiling happens once, at start-up. Compiled rules know no configured provider (two providers may
share one rule set); `_endpoint.Endpoint` binds them to one. What a request pays for is calling the
closures built here:

* `CompiledRules.build_request(body, model=…, provider_vars=…, stream=…)` runs the ``request:`` templates
  and returns the upstream URL, headers and body (a dict, encoded by the caller);
* `ResponseDecoder(rules, stream=…, provider=…)` turns one upstream JSON value (a stream chunk, or the
  whole body) into normalized deltas (`_types.Delta`), by the ``stream:`` or ``response:`` selectors;
* `ErrorMap.to_exception(status, body, …)` turns a non-2xx answer into an `UpstreamStatusError`
  with the Anthropic status and error type, by the ``errors:`` rules and the table of protocols.md 4.9.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ._errors import (
    Diagnostic,
    DiagnosticCode,
    RequestError,
    RuleError,
    UpstreamStatusError,
    error_type_for_status,
)
from ._functions import JINJA_GLOBALS
from ._loader import RuleSet
from ._redact import redact
from ._template import (
    CompileContext,
    Compiled,
    bound_names,
    compile_selector,
    compile_template,
    compile_url,
    named_template,
)
from ._types import (
    Delta,
    ErrorDelta,
    FinishDelta,
    JSONObject,
    KeyPath,
    RedactedThinkingDelta,
    Selector,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    UsageDelta,
)
from ._yaml import expand_references

#: Upstream HTTP status → the status an Anthropic client expects (protocols.md 4.9).
UPSTREAM_STATUS_MAP: dict[int, int] = {
    400: 400, 401: 401, 402: 402, 403: 403, 404: 404, 408: 504, 409: 400, 413: 413, 422: 400,
    429: 429, 500: 500, 502: 529, 503: 529, 504: 504, 529: 529,
}

#: Names every request template can use (docs/rules.md, "What a template sees").
SCOPE_NAMES = frozenset({"request", "model", "client_model", "caps", "provider", "stream", "tool_name",
                         "tool_id", "fail", "client_headers", "none", "true", "false"})


def fail(message: str) -> None:
    """Template global: refuse the request with a 400 ``invalid_request_error`` saying `message`."""
    raise RequestError(message)


def expand_env(value: Any, env: Mapping[str, str]) -> Any:
    """``${VAR}`` / ``${VAR:-default}`` in a rule's `defaults`; an unset variable without default → None."""
    if not isinstance(value, str):
        return value
    expanded = expand_references(value, env)
    return None if expanded.missing else expanded.text


@dataclass(slots=True)
class PreparedRequest:
    """What a provider's request chain produced for one request."""

    url: str
    headers: dict[str, str]
    body: JSONObject
    tool_names: dict[str, str]
    """upstream tool name → client tool name, for names the rules renamed."""


@dataclass(slots=True)
class _UsageSelectors:
    input: Selector
    output: Selector
    cache_read: Selector
    cache_write: Selector


@dataclass(slots=True)
class _DecoderSpec:
    """The compiled ``response:`` or ``stream:`` section."""

    parts: Selector
    thinking: Selector
    signature: Selector
    redacted: Selector
    text: Selector
    refusal: Selector
    tool_calls: Selector
    call_key: Selector
    call_id: Selector
    call_name: Selector
    call_arguments: Selector
    whole_calls: bool
    finish_reason: Selector
    usage: _UsageSelectors
    error: Selector
    done: str | None


def _none(data: Any) -> Any:
    return None


class ResponseDecoder:
    """Per-response state around a `_DecoderSpec`: upstream JSON values in, normalized deltas out.
    `provider` is the configured provider's name, which error messages carry."""

    __slots__ = ("_calls", "_errors", "_finish_errors", "_finish_reasons", "_provider", "_refused", "_spec")

    def __init__(self, rules: CompiledRules, *, stream: bool, provider: str) -> None:
        self._spec = rules.stream if stream else rules.response
        self._finish_reasons = rules.finish_reasons
        self._finish_errors = rules.finish_errors
        self._errors = rules.errors
        self._provider = provider
        self._refused = False
        self._calls = 0

    @property
    def provider(self) -> str:
        """The configured provider this decoder reads for (messages name it)."""
        return self._provider

    @property
    def done_marker(self) -> str | None:
        """The data line that ends a stream (``[DONE]`` for OpenAI), or None when EOF ends it."""
        return self._spec.done

    def decode(self, chunk: Any) -> list[Delta]:
        spec = self._spec
        error = spec.error(chunk)
        if error:
            error_type, message = self._errors.describe_inline(error, self._provider)
            return [ErrorDelta(error_type, redact(message))]
        out: list[Delta] = []
        for part in spec.parts(chunk) or ():
            if part is None:
                continue
            self._decode_part(part, out)
        raw = spec.finish_reason(chunk)
        if raw:
            failure = self._finish_errors.get(str(raw))
            if failure is not None:
                out.append(self._finish_error(str(raw), failure(chunk)))
            else:
                reason = "refusal" if self._refused else self._finish_reasons.get(str(raw))
                out.append(FinishDelta(reason, str(raw)))
        usage = self._usage(chunk)
        if usage is not None:
            out.append(usage)
        return out

    def _finish_error(self, raw: str, detail: Any) -> ErrorDelta:
        """A finish reason the rules list in ``finish_errors``: the answer failed (a malformed tool
        call, say), so the client gets an error naming it, never a stop_reason that hides it."""
        message = f"[{self._provider}] upstream stopped with finish reason '{raw}'"
        if isinstance(detail, str) and detail:
            message += f": {detail}"
        return ErrorDelta("api_error", redact(message))

    def _decode_part(self, part: Any, out: list[Delta]) -> None:
        spec = self._spec
        thinking = spec.thinking(part)
        signature = spec.signature(part)
        if thinking or signature:
            out.append(ThinkingDelta(thinking if isinstance(thinking, str) else "", signature or None))
        redacted = spec.redacted(part)
        out.extend(RedactedThinkingDelta(data) for data in ([redacted] if isinstance(redacted, str) else redacted or ())
                   if data and isinstance(data, str))
        text = spec.text(part)
        if text and isinstance(text, str):
            out.append(TextDelta(text))
        refusal = spec.refusal(part)
        if refusal and isinstance(refusal, str):
            self._refused = True
            out.append(TextDelta(refusal))
        out.extend(self._tool_call(call) for call in spec.tool_calls(part) or ())

    def _tool_call(self, call: Any) -> ToolCallDelta:
        spec = self._spec
        arguments = spec.call_arguments(call)
        if arguments is not None and not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        key = spec.call_key(call)
        if spec.whole_calls:
            key = f"call{self._calls}"
            self._calls += 1
        return ToolCallDelta(key=key if isinstance(key, int | str) else None,
                             id=spec.call_id(call) or None, name=spec.call_name(call) or None,
                             arguments=arguments or "")

    def _usage(self, chunk: Any) -> UsageDelta | None:
        selectors = self._spec.usage
        total_in = selectors.input(chunk)
        output = selectors.output(chunk)
        if total_in is None and output is None:
            return None
        cache_read = _as_int(selectors.cache_read(chunk))
        cache_write = _as_int(selectors.cache_write(chunk))
        output_tokens = None if output is None else _as_int(output)
        if total_in is None:  # an output-only count (Anthropic's message_delta) keeps the input counts
            return UsageDelta(output_tokens=output_tokens)
        return UsageDelta(input_tokens=max(0, _as_int(total_in) - cache_read - cache_write),
                          output_tokens=output_tokens,
                          cache_read_input_tokens=cache_read, cache_creation_input_tokens=cache_write)


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


@dataclass(slots=True)
class ErrorMap:
    """The compiled ``errors:`` section."""

    message: Selector
    type: Selector
    code: Selector
    by_code: dict[str, str]
    status: dict[int, int]
    context_overflow: Selector
    context_used: Selector
    context_limit: Selector
    quota: Selector

    def to_exception(self, status: int, body: bytes, retry_after: str | None, *,
                     provider: str) -> UpstreamStatusError:
        """An upstream non-2xx answer of `provider` as the error an Anthropic client would have received."""
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            data = None
        message = self._message(data) or body.decode("utf-8", "replace").strip()[:500] or f"HTTP {status}"
        anthropic_status = self.status.get(status) or UPSTREAM_STATUS_MAP.get(status) or (
            400 if status < 500 else 500)
        error_type = error_type_for_status(anthropic_status)
        code = self._code(data)
        if code in self.by_code:
            error_type = self.by_code[code]
            anthropic_status = _STATUS_FOR_TYPE.get(error_type, anthropic_status)
        overflow = data is not None and bool(self.context_overflow(data))
        if overflow:
            anthropic_status, error_type = 400, "invalid_request_error"
        if overflow:  # Claude Code compacts on a message that starts with this phrase
            return UpstreamStatusError(provider, self._overflow_message(data, message, provider),
                                       status=anthropic_status, error_type=error_type, upstream_status=status,
                                       retry_after=retry_after, named=True)
        return UpstreamStatusError(provider, message, status=anthropic_status, error_type=error_type,
                                   upstream_status=status, retry_after=retry_after,
                                   quota=error_type == "billing_error" or (data is not None and bool(self.quota(data))))

    def describe_inline(self, error: Any, provider: str) -> tuple[str, str]:
        """An error record inside a 200 stream of `provider` → (Anthropic error type, message)."""
        wrapped = error if isinstance(error, dict) and "error" in error else {"error": error}
        message = self._message(wrapped) or (
            error if isinstance(error, str) else orjson.dumps(error).decode())
        code = self._code(wrapped)
        if code in self.by_code:
            return self.by_code[code], f"[{provider}] {message}"
        if self.context_overflow(wrapped):
            return "invalid_request_error", self._overflow_message(wrapped, message, provider)
        return _INLINE_TYPES.get(str(code), "api_error"), f"[{provider}] {message}"

    def _overflow_message(self, data: Any, message: str, provider: str) -> str:
        """Anthropic's wording, which Claude Code's auto-compaction looks for: ``prompt is too long:
        <used> tokens > <limit> maximum``, when the rules can read both counts."""
        used, limit = self.context_used(data), self.context_limit(data)
        if _is_count(used) and _is_count(limit):
            return f"prompt is too long: {used} tokens > {limit} maximum ([{provider}] {message})"
        return f"prompt is too long: [{provider}] {message}"

    def _message(self, data: Any) -> str | None:
        value = self.message(data) if data is not None else None
        return value if isinstance(value, str) and value else None

    def _code(self, data: Any) -> str | None:
        if data is None:
            return None
        for selector in (self.code, self.type):
            value = selector(data)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value) in self.by_code:
                return str(value)
        value = self.code(data)
        return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_STATUS_FOR_TYPE = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                    "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                    "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529}
_INLINE_TYPES = {"rate_limit_exceeded": "rate_limit_error", "overloaded": "overloaded_error",
                 "server_error": "api_error", "timeout": "timeout_error"}


@dataclass(slots=True)
class CompiledRules:
    """A rule set, compiled: everything a request needs from `rules/<name>.yaml`, for any provider that
    the config binds to it (`_endpoint.Endpoint`)."""

    name: str
    rule_set: RuleSet
    defaults: dict[str, Any]
    models: list[tuple[str, dict[str, Any]]]
    url: Compiled
    method: str
    headers: list[tuple[str, Compiled]]
    body: Compiled
    tool_name: Compiled | None
    response: _DecoderSpec
    stream: _DecoderSpec
    finish_reasons: dict[str, str]
    errors: ErrorMap
    finish_errors: dict[str, Selector] = field(default_factory=dict)
    """Upstream finish reason → selector of the upstream's explanation; such an answer fails."""
    passthrough: bool = False
    """The provider speaks Anthropic Messages: bodies and answers go through byte for byte."""
    tool_id: Compiled | None = None
    """``request.tool_id``: a client tool-call id → the id sent upstream (given ``id`` and ``model``)."""
    emulate_stop_sequences: bool = False
    """The engine owns the client's stop_sequences (`_stream.StopScanner`); the rules send none upstream."""
    _caps_cache: dict[str, dict[str, Any]] = field(default_factory=dict)

    def capabilities(self, model: str) -> dict[str, Any]:
        """The capability row for `model`: ``*`` first, then every matching glob, most specific last."""
        cached = self._caps_cache.get(model)
        if cached is not None:
            return cached
        caps: dict[str, Any] = {}
        for pattern, row in self.models:
            if pattern == model or fnmatch.fnmatchcase(model, pattern):
                caps.update(row)
        if len(self._caps_cache) < 1024:
            self._caps_cache[model] = caps
        return caps

    def default(self, key: str, env: Mapping[str, str] | None = None) -> Any:
        """A value from the rule's ``defaults:`` with ``${VAR}`` expanded; in a mapping (``headers``)
        each value is expanded, and an entry whose variable is unset without a default is left out."""
        env = os.environ if env is None else env
        value = self.defaults.get(key)
        if isinstance(value, dict):
            expanded = {name: expand_env(item, env) for name, item in value.items()}
            return {name: item for name, item in expanded.items() if item is not None}
        return expand_env(value, env)

    def build_request(self, body: JSONObject, *, model: str, provider_vars: Mapping[str, Any],
                      stream: bool, client_headers: Mapping[str, str] | None = None) -> PreparedRequest:
        """Run the request chain. `provider_vars` is what templates see as ``provider``: name, base_url,
        api_key and headers (config merged over the rule's defaults); `client_headers` are the client's
        request headers, lower-cased. A passthrough rule set builds no body: the caller forwards the
        client's bytes."""
        tool_names: dict[str, str] = {}
        if self.tool_name is not None and not self.passthrough:
            for tool in body.get("tools") or ():
                name = tool.get("name") if isinstance(tool, dict) else None
                if isinstance(name, str):
                    upstream = self.tool_name({"name": name, "model": model})
                    if upstream != name:
                        tool_names[name] = upstream
        rename = _renamer(tool_names, self.tool_name, model)
        scope: dict[str, Any] = {
            **JINJA_GLOBALS,
            "request": body,
            "model": model,
            "client_model": body.get("model"),
            "caps": self.capabilities(model),
            "provider": provider_vars,
            "stream": stream,
            "tool_name": rename,
            "tool_id": _id_mapper(self.tool_id, model),
            "fail": fail,
            "client_headers": client_headers or {},
        }
        headers = {name: str(value) for name, fn in self.headers if (value := fn(scope)) is not None}
        for name, value in (provider_vars.get("headers") or {}).items():
            headers[name.lower()] = str(value)
        upstream_body = {} if self.passthrough else self.body(scope)
        return PreparedRequest(str(self.url(scope)), headers, upstream_body,
                               {upstream: client for client, upstream in tool_names.items()})


def _renamer(tool_names: dict[str, str], tool_name: Compiled | None, model: str) -> Callable[[Any], Any]:
    if tool_name is None:
        return lambda name: name

    def rename(name: Any) -> Any:
        if not isinstance(name, str):
            return name
        if name in tool_names:
            return tool_names[name]
        return tool_name({"name": name, "model": model})

    return rename


def _same(value: Any) -> Any:
    return value


def _id_mapper(tool_id: Compiled | None, model: str) -> Callable[[Any], Any]:
    """The ``tool_id(x)`` templates call: the rule's hook, or ids as they are. No map back is kept:
    ids in answers are the provider's own, which the hook leaves as they are when the client sends
    them back (``short_id`` is idempotent)."""
    if tool_id is None:
        return _same

    def map_id(value: Any) -> Any:
        return tool_id({"id": value, "model": model}) if isinstance(value, str) else value

    return map_id


# --- compiling ---------------------------------------------------------------------------------


def compile_rule_set(rule_set: RuleSet) -> tuple[CompiledRules | None, list[Diagnostic]]:
    """Compile one rule set; problems come back as diagnostics (the provider is None if any is an error)."""
    data = rule_set.data
    names = SCOPE_NAMES | frozenset(JINJA_GLOBALS)
    ctx = CompileContext(rule_set, names)
    request = data.get("request") or {}
    passthrough = bool(data.get("passthrough", False))
    required = ("url",) if passthrough else ("body",) if data.get("inbound") else ("url", "body")
    missing = [key for key in required if key not in request]
    for key in missing:
        pos = rule_set.key_position(("request",)) if "request" in data else rule_set.position(())
        ctx.report(pos, DiagnosticCode.SCHEMA, f"request.{key} is required (directly or through 'extends')")
    url = compile_url(request.get("url", ""), ("request", "url"), ctx)
    headers = [(name.lower(), compile_template(value, ("request", "headers", name), ctx))
               for name, value in (request.get("headers") or {}).items()]
    body = compile_template(request.get("body", {}), ("request", "body"), ctx)
    tool_name = _compile_hook(request, "tool_name", "name", ctx)
    tool_id = _compile_hook(request, "tool_id", "id", ctx)
    response = _compile_decoder("response", ctx)
    stream = _compile_decoder("stream", ctx, fallback="response")
    errors = _compile_errors(data.get("errors") or {}, ctx)
    # templates nobody uses are still checked, so a typo in one is not found by a user first; with
    # no call site to say what is bound, a name bound anywhere in the rule set is taken as known
    unused = [name for name in data.get("templates") or {} if name not in ctx.named]
    ctx.scope_names = names | frozenset(bound_names(data))
    for name in unused:
        named_template(name, ctx)
    models = [(pattern, dict(row or {})) for pattern, row in (data.get("models") or {}).items()]
    models.sort(key=lambda item: (item[0] != "*", len(item[0].replace("*", ""))))
    compiled = CompiledRules(
        name=rule_set.name, rule_set=rule_set, defaults=dict(data.get("defaults") or {}), models=models,
        url=url, method=str(request.get("method", "POST")).upper(), headers=headers, body=body,
        tool_name=tool_name, response=response, stream=stream,
        finish_reasons={str(k): str(v) for k, v in (data.get("finish_reasons") or {}).items()},
        finish_errors={str(k): _selector(data["finish_errors"], k, ("finish_errors",), ctx)
                       for k in data.get("finish_errors") or {}},
        errors=errors, passthrough=passthrough, tool_id=tool_id,
        emulate_stop_sequences=bool(data.get("emulate_stop_sequences", False)) and not passthrough,
    )
    has_error = any(d.severity == "error" for d in ctx.diagnostics)
    return (None if has_error else compiled), ctx.diagnostics


def _compile_hook(request: dict[str, Any], key: str, argument: str, ctx: CompileContext) -> Compiled | None:
    """A ``request`` hook such as ``tool_name``: a template that sees only `argument` and ``model``."""
    if not request.get(key):
        return None
    saved, ctx.scope_names = ctx.scope_names, frozenset({argument, "model", "none", "true", "false"})
    try:
        return compile_template(request[key], ("request", key), ctx)
    finally:
        ctx.scope_names = saved


def _selector(section: dict[str, Any], key: str, key_path: KeyPath, ctx: CompileContext) -> Selector:
    expression = section.get(key)
    if expression is None:
        return _none
    if not isinstance(expression, str):
        ctx.report(ctx.position((*key_path, key)), DiagnosticCode.BAD_SELECTOR,
                   f"{'.'.join(map(str, (*key_path, key)))} must be a JMESPath expression (a string)")
        return _none
    return compile_selector(expression, (*key_path, key), ctx)


_PART_KEYS = ("thinking", "signature", "redacted", "text", "refusal", "tool_calls")
_CALL_KEYS = ("key", "id", "name", "arguments")
_USAGE_KEYS = ("input", "output", "cache_read", "cache_write")


def _compile_decoder(name: str, ctx: CompileContext, fallback: str | None = None) -> _DecoderSpec:
    """Compile the ``name`` section; keys it does not set are taken from the ``fallback`` section."""
    data = ctx.rule_set.data
    sections = [s for s in (name, fallback) if s and isinstance(data.get(s), dict)]

    def pick(*path: str) -> Selector:
        for section in sections:
            node: Any = data[section]
            for part in path[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and path[-1] in node:
                return _selector(node, path[-1], (section, *path[:-1]), ctx)
        return _none

    def setting(*path: str) -> Any:
        for section in sections:
            node: Any = data[section]
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                return node
        return None

    parts = pick("parts") if setting("parts") is not None else (lambda chunk: (chunk,))
    part = {key: pick("part", key) for key in _PART_KEYS}
    call = {key: pick("tool_call", key) for key in _CALL_KEYS}
    usage = {key: pick("usage", key) for key in _USAGE_KEYS}
    done = setting("done")
    return _DecoderSpec(
        parts=parts,
        thinking=part["thinking"], signature=part["signature"], redacted=part["redacted"], text=part["text"],
        refusal=part["refusal"], tool_calls=part["tool_calls"],
        call_key=call["key"], call_id=call["id"], call_name=call["name"], call_arguments=call["arguments"],
        whole_calls=bool(setting("tool_call", "whole")),
        finish_reason=pick("finish_reason"),
        usage=_UsageSelectors(usage["input"], usage["output"], usage["cache_read"], usage["cache_write"]),
        error=pick("error"),
        done=str(done) if done is not None else None,
    )


def _compile_errors(section: dict[str, Any], ctx: CompileContext) -> ErrorMap:
    key_path: KeyPath = ("errors",)
    return ErrorMap(
        message=_selector(section, "message", key_path, ctx),
        type=_selector(section, "type", key_path, ctx),
        code=_selector(section, "code", key_path, ctx),
        by_code={str(k): str(v) for k, v in (section.get("by_code") or {}).items()},
        status={int(k): int(v) for k, v in (section.get("status") or {}).items()},
        context_overflow=_selector(section, "context_overflow", key_path, ctx),
        context_used=_selector(section, "context_used", key_path, ctx),
        context_limit=_selector(section, "context_limit", key_path, ctx),
        quota=_selector(section, "quota", key_path, ctx),
    )


def compile_rules(rule_sets: Mapping[str, RuleSet]) -> tuple[dict[str, CompiledRules], list[Diagnostic]]:
    """Compile every rule set; a set with errors is left out and its diagnostics returned."""
    compiled: dict[str, CompiledRules] = {}
    diagnostics: list[Diagnostic] = []
    for name, rule_set in rule_sets.items():
        rules, problems = compile_rule_set(rule_set)
        diagnostics.extend(problems)
        if rules is not None:
            compiled[name] = rules
    # a selector shared by response: and stream:, or a value a child inherits, is compiled more
    # than once; report each problem once
    unique = {(d.path, d.line, d.col, d.message): d for d in diagnostics}
    return compiled, list(unique.values())


def require_compiled(rule_sets: Mapping[str, RuleSet]) -> dict[str, CompiledRules]:
    """`compile_rules`, raising one `RuleError` with every diagnostic when any is an error."""
    compiled, diagnostics = compile_rules(rule_sets)
    if any(d.severity == "error" for d in diagnostics):
        raise RuleError(diagnostics)
    return compiled
