"""Every error the engine raises on purpose, and how each one looks to an Anthropic client.

Hierarchy (bases match how callers catch, leaves match what happened)::

    EngineError                     anything with an Anthropic status and error type
    ├── RequestError                the client's request is invalid (400 invalid_request_error)
    ├── AuthenticationError         the server key is missing or wrong (401 authentication_error)
    ├── NotFoundError               unknown path or model (404 not_found_error)
    ├── RouteError                  no provider can serve the request (400 invalid_request_error)
    ├── RuleRuntimeError            a compiled rule failed on one request (500 api_error)
    └── UpstreamError               the provider failed; each names the provider
        ├── UpstreamStatusError     it answered non-2xx (status and type mapped by its rules)
        ├── UpstreamTimeoutError    it did not answer in time (504 timeout_error)
        ├── UpstreamConnectError    it could not be reached (502 api_error)
        └── UpstreamProtocolError   it answered something we cannot read (502 api_error)

    SetupError                      config or rules are broken; raised at start-up, never per request,
    ├── ConfigError                 so no client sees it (a plain Exception, not an EngineError)
    └── RuleError

`SetupError`s carry a list of `Diagnostic`s, printed as ``file:line:col: message [code]`` by both
``validate`` and ``serve``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ._redact import redact

#: HTTP status → Anthropic error type (protocols.md 1.9). Statuses not listed fall back by class.
STATUS_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for_status(status: int) -> str:
    """The Anthropic error type a client expects for `status`."""
    if status in STATUS_ERROR_TYPES:
        return STATUS_ERROR_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def error_envelope(error_type: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    """The Anthropic error body: ``{"type": "error", "error": {"type", "message"}}``."""
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return body


class EngineError(Exception):
    """Base of the errors a client can be shown. Subclasses set `status`; `error_type` follows it."""

    status: int = 500

    def __init__(self, message: str, *, status: int | None = None, error_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.error_type = error_type or error_type_for_status(self.status)
        self.headers: dict[str, str] = {}

    def envelope(self, request_id: str | None = None) -> dict[str, Any]:
        return error_envelope(self.error_type, self.message, request_id)


class RequestError(EngineError):
    """Raised when the client's request is malformed or asks for something the target cannot do."""

    status = 400


class AuthenticationError(EngineError):
    """Raised when the proxy has a server key and the request did not send it."""

    status = 401


class NotFoundError(EngineError):
    """Raised for an unknown path, model or provider."""

    status = 404


class RouteError(EngineError):
    """Raised when no configured provider can serve the request."""

    status = 400


class RuleRuntimeError(EngineError):
    """Raised when a compiled rule fails on a request; the message names the rule's file position."""

    status = 500


class UpstreamError(EngineError):
    """Base of provider failures; `provider` names the provider that failed.

    The message is shown as ``[provider] message``; pass ``named=True`` when `message` already
    names the provider where it must (``prompt is too long: … ([openai] …)`` keeps the phrase Claude
    Code looks for at the start). Upstream text can echo credentials, so the message is redacted
    (`_redact.redact`) before anyone can show or log it."""

    status = 502

    def __init__(self, provider: str, message: str, *, status: int | None = None,
                 error_type: str | None = None, named: bool = False) -> None:
        message = redact(message if named else f"[{provider}] {message}")
        super().__init__(message, status=status, error_type=error_type)
        self.provider = provider


class UpstreamStatusError(UpstreamError):
    """Raised when the provider answered non-2xx; status and type are already mapped to Anthropic's."""

    def __init__(self, provider: str, message: str, *, status: int, error_type: str | None = None,
                 upstream_status: int | None = None, retry_after: str | None = None,
                 named: bool = False, quota: bool = False) -> None:
        super().__init__(provider, message, status=status, error_type=error_type, named=named)
        self.upstream_status = upstream_status if upstream_status is not None else status
        self.quota = quota
        """The provider said a quota is exhausted (its rules' ``errors.quota``): retrying cannot help."""
        if retry_after:
            self.headers["retry-after"] = retry_after


class UpstreamTimeoutError(UpstreamError):
    """Raised when the provider did not connect, answer or send within its time limits."""

    status = 504


class UpstreamConnectError(UpstreamError):
    """Raised when the provider could not be reached or dropped the connection before answering."""

    status = 502

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(provider, message, error_type="api_error")


class UpstreamProtocolError(UpstreamError):
    """Raised when the provider answered something that is not its documented wire format."""

    status = 502

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(provider, message, error_type="api_error")


class DiagnosticCode(StrEnum):
    """Every kind of problem `validate` reports; each has a paragraph in docs/rules.md."""

    YAML_SYNTAX = "yaml-syntax"
    SCHEMA = "schema"
    UNKNOWN_KEY = "unknown-key"
    BAD_SELECTOR = "bad-selector"
    BAD_TEMPLATE = "bad-template"
    UNKNOWN_FUNCTION = "unknown-function"
    UNKNOWN_FILTER = "unknown-filter"
    UNKNOWN_TEMPLATE = "unknown-template"
    BAD_DIRECTIVE = "bad-directive"
    BAD_EXTENDS = "bad-extends"
    BAD_IMPORT = "bad-import"
    MISSING_ENV = "missing-env"
    UNKNOWN_RULES = "unknown-rules"
    BAD_ROUTE = "bad-route"
    IO = "io"


@dataclass(frozen=True, slots=True, order=True)
class Diagnostic:
    """One problem found in a rule or config file, with its 1-based position."""

    path: str
    line: int
    col: int
    code: DiagnosticCode = field(compare=False)
    message: str = field(compare=False)
    severity: str = field(default="error", compare=False)
    detail: str | None = field(default=None, compare=False)
    """Extra lines printed under the message, e.g. the expression with a caret under the column."""

    def format(self) -> str:
        head = f"{self.path}:{self.line}:{self.col}: {self.message} [{self.code}]"
        if self.severity != "error":
            head = f"{self.path}:{self.line}:{self.col}: {self.severity}: {self.message} [{self.code}]"
        return f"{head}\n{self.detail}" if self.detail else head


class SetupError(Exception):
    """Raised at start-up when config or rules are broken; holds every problem found, not just the first."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics)
        super().__init__("\n".join(d.format() for d in self.diagnostics))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]


class ConfigError(SetupError):
    """Raised when the config file is invalid."""


class RuleError(SetupError):
    """Raised when rule files fail to load or compile."""
