"""Config: a YAML file (or the embedded default) becomes `Settings`, and every problem gets a position.

Shape: ``server`` (where to listen), ``providers`` (upstreams by name) and ``routes`` (which
``provider/model`` serves which request). `schemas/config.schema.json` is the reference for every
key; the loader validates against it, so `validate`, `serve` and editors agree.

Interpolation. Every string value may hold environment references, also inside longer text::

    api_key: "${OPENAI_API_KEY}"                # the variable's value
    base_url: "${OPENAI_BASE_URL:-https://api.openai.com/v1}"   # or this default
    headers: {X-Note: "costs $${1}"}            # $${ is a literal ${

An empty variable counts as unset, references do not nest, and keys are never interpolated
(`_yaml.expand_references` has the details). A *plain* (unquoted) scalar that held a reference is
typed afterwards the way YAML types plain text, so ``port: ${PORT:-3456}`` is an int and
``api_key: ${KEY:-}`` is null; quote it to keep a string.

Missing variables (a design decision). People list providers "just in case" and set their keys on
some machines only, so a missing ``${VAR}`` (no default) is judged by where it sits:

- in a provider that a route names, or anywhere outside ``providers``: an error (``missing-env``) at
  the scalar. Failing at start-up beats a 401 on the first request.
- in a provider that no route names: the provider is disabled and a warning is reported at the
  scalar. `load_config` still succeeds and lists the warning in `Settings.warnings`.

A provider whose rule set is not in `available_rules` follows the same pattern (``unknown-rules``).

The embedded default (no ``--config``) is `DEFAULT_CONFIG_YAML`, read through the same parser and
schema but with lenient rules: a provider whose key variable is missing, or whose rule set is not
available, is dropped without a word, and each route takes the first of its targets whose provider
is left. Ollama needs no key, so ``default`` always ends at ``ollama/llama3.1``.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import ConfigError, Diagnostic, DiagnosticCode
from ._types import KeyPath
from ._yaml import (
    Interpolation,
    ParsedYaml,
    Positions,
    SourcePosition,
    Wording,
    did_you_mean,
    dotted,
    interpolate,
    nearest_position,
    parse_yaml,
    read_yaml,
    schema_diagnostics,
    schema_path,
)

__all__ = [
    "DEFAULT_CONFIG_YAML",
    "EMBEDDED_SOURCE",
    "BreakerSettings",
    "CustomRouter",
    "DashboardSettings",
    "ProviderSettings",
    "ResilienceSettings",
    "RetrySettings",
    "RouteTarget",
    "Routes",
    "Settings",
    "Timeouts",
    "check_config",
    "load_config",
]

EMBEDDED_SOURCE = "<embedded default>"
SCHEMA_NAME = "config.schema.json"
SCHEMA_PATH = schema_path(SCHEMA_NAME)

#: The config's messages name its parts in prose, and a syntax error needs no "invalid YAML" in front.
CONFIG_WORDING = Wording(top_level="the top level", document="the config", yaml_prefix="")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3456
DEFAULT_LONG_CONTEXT_THRESHOLD = 60000

#: What `serve` runs without --config. Every provider's usual key variable switches it on; Ollama is
#: keyless and always on. Route lists keep one provider order, so all routes pick the same provider.
#: Model ids (checked 2025): OpenAI gpt-4.1 / gpt-4.1-mini / o3; DeepSeek deepseek-chat /
#: deepseek-reasoner; Gemini 2.5 pro / flash; OpenRouter Claude Sonnet 4 / Claude 3.5 Haiku; Groq
#: gpt-oss-120b / llama-3.1-8b-instant; Mistral large / small / magistral-medium; xAI grok-4 /
#: grok-3-mini; Ollama llama3.1 (the model `ollama pull` users most often have).
DEFAULT_CONFIG_YAML = """\
server:
  host: 127.0.0.1
  port: 3456
  api_key: null
providers:
  openai:     {base_url: "${OPENAI_BASE_URL:-https://api.openai.com/v1}", api_key: "${OPENAI_API_KEY}"}
  deepseek:   {base_url: "https://api.deepseek.com", api_key: "${DEEPSEEK_API_KEY}"}
  gemini:     {base_url: "https://generativelanguage.googleapis.com/v1beta", api_key: "${GEMINI_API_KEY}"}
  openrouter: {base_url: "https://openrouter.ai/api/v1", api_key: "${OPENROUTER_API_KEY}"}
  groq:       {base_url: "https://api.groq.com/openai/v1", api_key: "${GROQ_API_KEY}"}
  mistral:    {base_url: "https://api.mistral.ai/v1", api_key: "${MISTRAL_API_KEY}"}
  xai:        {base_url: "https://api.x.ai/v1", api_key: "${XAI_API_KEY}"}
  ollama:     {rules: ollama, base_url: "${OLLAMA_BASE_URL:-http://localhost:11434/v1}", api_key: null}
routes:
  default:
    - openai/gpt-4.1
    - deepseek/deepseek-chat
    - gemini/gemini-2.5-pro
    - openrouter/anthropic/claude-sonnet-4
    - groq/openai/gpt-oss-120b
    - mistral/mistral-large-latest
    - xai/grok-4
    - ollama/llama3.1
  background:
    - openai/gpt-4.1-mini
    - deepseek/deepseek-chat
    - gemini/gemini-2.5-flash
    - openrouter/anthropic/claude-3.5-haiku
    - groq/llama-3.1-8b-instant
    - mistral/mistral-small-latest
    - xai/grok-3-mini
  think:
    - openai/o3
    - deepseek/deepseek-reasoner
    - gemini/gemini-2.5-pro
    - openrouter/anthropic/claude-sonnet-4
    - groq/openai/gpt-oss-120b
    - mistral/magistral-medium-latest
    - xai/grok-4
  long_context_threshold: 60000
"""

#: Embedded providers whose own rule set may not ship yet, and the family rules they speak meanwhile.
_EMBEDDED_RULE_FALLBACKS = {"ollama": "openai"}

_ROUTE_NAMES = ("default", "background", "think", "long_context", "web_search", "image")

@dataclass(frozen=True, slots=True)
class Timeouts:
    """Time limits (seconds) for one provider's calls. `idle` is the config's ``timeout.read``.

    ``connect`` covers getting a connection (pool wait included), ``first_byte`` the wait for
    response headers, ``idle`` the longest silence inside a body. ``total`` caps a non-streamed call
    end to end; streams never have an overall limit.
    """

    connect: float = 10.0
    first_byte: float = 300.0
    idle: float = 300.0
    total: float | None = None


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """One enabled upstream. ``base_url`` None means the rule set's own default; ``headers`` are extra
    headers for every request (the app merges them with the rules'); ``models`` are advertised ids."""

    name: str
    rules: str
    base_url: str | None
    api_key: str | None = field(default=None, repr=False)
    headers: dict[str, str] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    timeouts: Timeouts = field(default_factory=Timeouts)


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """A provider and the model id sent to it. ``RouteTarget.parse("openrouter/x-ai/grok-4")`` gives
    provider ``openrouter`` and model ``x-ai/grok-4``: the split is at the first slash."""

    provider: str
    model: str

    @classmethod
    def parse(cls, text: str) -> RouteTarget:
        provider, _, model = text.partition("/")
        if not provider or not model:
            raise ValueError(f"expected provider/model, got {text!r}")
        return cls(provider, model)

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class Routes:
    """Targets per route, each a list tried in order (fallbacks). An empty list means "not set": the
    router uses `default`. `models` keeps file order, because its glob keys are tried in that order."""

    default: list[RouteTarget]
    background: list[RouteTarget] = field(default_factory=list)
    think: list[RouteTarget] = field(default_factory=list)
    long_context: list[RouteTarget] = field(default_factory=list)
    long_context_threshold: int = DEFAULT_LONG_CONTEXT_THRESHOLD
    web_search: list[RouteTarget] = field(default_factory=list)
    image: list[RouteTarget] = field(default_factory=list)
    models: dict[str, list[RouteTarget]] = field(default_factory=dict)
    think_adaptive: bool = False
    custom: CustomRouter | None = None


@dataclass(frozen=True, slots=True)
class CustomRouter:
    """A user's routing function, ``module:function``; it gets `timeout` seconds to decide."""

    function: str
    timeout: float = 0.2


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    """``server.dashboard`` in the config."""

    capture: bool = False
    """Keep the translated upstream request and the answer (keys masked): anyone with the server key
    could read every prompt, so it is off unless the config says so."""
    max_records: int = 1000
    max_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Retries of one target before the route's next one (``server.retry``). Claude Code retries
    failed requests itself, so the defaults are small: one retry, half a second."""

    attempts: int = 2
    """Tries per target, the first included (1: no retry)."""
    backoff: float = 0.5
    """The first retry's delay in seconds; each later one doubles it, with jitter, up to `max_backoff`."""
    max_backoff: float = 4.0
    max_retry_after: float = 10.0
    """An upstream ``Retry-After`` is honoured up to this many seconds; a longer wait is not retried here."""


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """The circuit breaker per provider and model (``server.circuit_breaker``)."""

    failures: int = 5
    """Consecutive failures (connect errors, timeouts, 429, 5xx) that open it; 0 disables breakers."""
    open_seconds: float = 30.0
    """How long an open breaker skips its target before one request may try it again (half-open)."""


@dataclass(frozen=True, slots=True)
class ResilienceSettings:
    """Retries, breakers and fallbacks: how the proxy survives a failing upstream."""

    retry: RetrySettings = field(default_factory=RetrySettings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    fallback_on_unsupported: bool = False
    """A target whose rules refuse the request (a capability the model lacks) passes it to the next target."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `serve` needs from the config. `providers` holds only enabled providers, in file
    order; `warnings` lists what was disabled and why; `source` is the file path or EMBEDDED_SOURCE."""

    host: str
    port: int
    api_key: str | None = field(repr=False)
    providers: dict[str, ProviderSettings]
    routes: Routes
    source: str
    warnings: list[Diagnostic] = field(default_factory=list)
    allow_unauthenticated: bool = False
    """Serve a non-loopback host without `api_key` (the user opted in)."""
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    resilience: ResilienceSettings = field(default_factory=ResilienceSettings)
    shutdown_grace: float = 30.0
    """Seconds streams in flight get to finish after SIGTERM before they end with an ``error`` event."""
    access_log: bool = False
    """One structured INFO line per ``/v1/messages`` request."""


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None, *,
                available_rules: Collection[str] | None = None) -> Settings:
    """Read the config at `path` (None: the embedded default) and return its `Settings`.

    `env` defaults to ``os.environ``. `available_rules` names the rule sets that exist; None skips
    that check. Raises `ConfigError` holding every error found, not just the first.
    """
    settings, diagnostics = _Loader(path, env, available_rules).run()
    if settings is None:
        raise ConfigError(diagnostics)
    return settings


def check_config(path: str | Path | None, env: Mapping[str, str] | None = None, *,
                 available_rules: Collection[str] | None = None) -> list[Diagnostic]:
    """Every problem in the config at `path`, warnings included, sorted by position (for `validate`)."""
    return sorted(_Loader(path, env, available_rules).run()[1])


class _Loader:
    """One load: parse, interpolate, validate, resolve providers and routes, collecting diagnostics."""

    def __init__(self, path: str | Path | None, env: Mapping[str, str] | None,
                 available_rules: Collection[str] | None) -> None:
        self.path = path
        self.source = EMBEDDED_SOURCE if path is None else str(path)
        self.is_embedded = path is None
        self.env: Mapping[str, str] = os.environ if env is None else env
        self.available_rules = None if available_rules is None else frozenset(available_rules)
        self.diagnostics: list[Diagnostic] = []
        self.positions: Positions = {}
        self.key_positions: Positions = {}
        self.missing: list[tuple[KeyPath, str]] = []

    def run(self) -> tuple[Settings | None, list[Diagnostic]]:
        data = self._parse()
        if data is None:
            return None, self.diagnostics
        self._validate(data)
        enabled = self._resolve_providers(data)
        self._check_routes(data)
        if any(d.severity == "error" for d in self.diagnostics):
            return None, self.diagnostics
        return self._build(data, enabled), self.diagnostics

    # -- diagnostics -----------------------------------------------------------------------------

    def _report(self, pos: SourcePosition, code: DiagnosticCode, message: str, severity: str = "error") -> None:
        self.diagnostics.append(Diagnostic(pos.path, pos.line, pos.col, code, message, severity))

    def _pos(self, path: KeyPath) -> SourcePosition:
        """The position of the value at `path`, else of its nearest ancestor."""
        return nearest_position(self.positions, path, self.source)

    def _key_pos(self, path: KeyPath) -> SourcePosition:
        """The position of the key at `path`, else `_pos`'s."""
        return self.key_positions.get(path) or self._pos(path)

    # -- parse, interpolate, validate ------------------------------------------------------------

    def _parse(self) -> dict[str, Any] | None:
        parsed = self._read()
        self.diagnostics.extend(parsed.diagnostics)
        if parsed.diagnostics:
            return None
        if not isinstance(parsed.data, dict):
            tree = parsed.data
            what = "empty" if tree is None else "a list" if isinstance(tree, list) else f"just {tree!r}"
            self._report(self._pos(()), DiagnosticCode.SCHEMA,
                         f"the config is {what}; expected a mapping with 'providers' and 'routes'")
            return None
        self.positions, self.key_positions = parsed.positions, parsed.key_positions
        found = Interpolation()
        data: dict[str, Any] = interpolate(parsed.data, self.positions, self.env, found)
        self.missing = found.missing
        for path, text in found.malformed:
            self._report(self._pos(path), DiagnosticCode.SCHEMA,
                         f"{dotted(path)}: malformed reference in {text!r}: write ${{NAME}} or "
                         "${NAME:-default}, or $${ for a literal ${")
        return data

    def _read(self) -> ParsedYaml:
        if self.path is None:
            return parse_yaml(DEFAULT_CONFIG_YAML, self.source, CONFIG_WORDING)
        return read_yaml(Path(self.path), self.source, CONFIG_WORDING)

    def _validate(self, data: dict[str, Any]) -> None:
        """Schema errors, except in values a missing variable emptied: the provider check reports those."""
        self.diagnostics.extend(schema_diagnostics(
            data, SCHEMA_NAME, self.source, self.positions, self.key_positions, wording=CONFIG_WORDING,
            skip=[path for path, _ in self.missing]))

    # -- providers and routes --------------------------------------------------------------------

    def _resolve_providers(self, data: dict[str, Any]) -> dict[str, str]:
        """Enabled provider name → its rule set name; reports missing variables and rule sets."""
        providers = data.get("providers")
        providers = providers if isinstance(providers, dict) else {}
        users = _route_users(data.get("routes"))
        enabled: dict[str, str] = {}
        for name, raw in providers.items():
            rules = self._rules_of(name, raw)
            missing = [(p, var) for p, var in self.missing if p[:2] == ("providers", name)]
            if self._is_enabled(name, rules, missing, users.get(name)):
                enabled[name] = rules
        for path, var in self.missing:
            if path[:1] != ("providers",):
                self._report(self._pos(path), DiagnosticCode.MISSING_ENV,
                             f"environment variable {var} is not set; set it or write ${{{var}:-default}}")
        return enabled

    def _rules_of(self, name: str, raw: Any) -> str:
        rules = raw.get("rules") if isinstance(raw, dict) else None
        rules = rules if isinstance(rules, str) and rules else name
        available = self.available_rules
        if self.is_embedded and available is not None and rules not in available:
            rules = _EMBEDDED_RULE_FALLBACKS.get(rules, rules)
        return rules

    def _is_enabled(self, name: str, rules: str, missing: list[tuple[KeyPath, str]], user: str | None) -> bool:
        has_rules = self.available_rules is None or rules in self.available_rules
        if self.is_embedded or (not missing and has_rules):
            return not missing and has_rules
        severity = "error" if user else "warning"
        consequence = f"provider {name!r} is used by {user}" if user else \
            f"provider {name!r} is disabled (no route uses it)"
        for path, var in missing:
            self._report(self._pos(path), DiagnosticCode.MISSING_ENV,
                         f"environment variable {var} is not set; {consequence}", severity)
        if not has_rules:
            known = sorted(self.available_rules or ())
            where = ("providers", name, "rules")
            pos = self._pos(where) if where in self.positions else self._key_pos(where[:2])
            self._report(pos, DiagnosticCode.UNKNOWN_RULES,
                         f"rule set {rules!r} does not exist{did_you_mean(rules, known)}; {consequence}",
                         severity)
        return False

    def _check_routes(self, data: dict[str, Any]) -> None:
        providers = data.get("providers")
        configured = list(providers) if isinstance(providers, dict) else []
        listing = f" (configured: {', '.join(configured)})" if configured else ""
        for path, text in _route_texts(data.get("routes")):
            provider = text.partition("/")[0]
            if provider in configured or self.is_embedded:
                continue
            self._report(self._pos(path), DiagnosticCode.BAD_ROUTE,
                         f"{dotted(path)}: {text!r} names provider {provider!r}, which is not configured"
                         f"{did_you_mean(provider, configured) or listing}")

    # -- build -----------------------------------------------------------------------------------

    def _build(self, data: dict[str, Any], enabled: dict[str, str]) -> Settings:
        server = data.get("server") or {}
        providers = {name: _provider(name, rules, data["providers"][name]) for name, rules in enabled.items()}
        return Settings(
            host=server.get("host", DEFAULT_HOST),
            port=server.get("port", DEFAULT_PORT),
            api_key=server.get("api_key") or None,
            allow_unauthenticated=bool(server.get("allow_unauthenticated", False)),
            dashboard=DashboardSettings(**(server.get("dashboard") or {})),
            resilience=_resilience(server),
            shutdown_grace=float(server.get("shutdown_grace", 30.0)),
            access_log=bool(server.get("access_log", False)),
            providers=providers,
            routes=self._routes(data["routes"], providers),
            source=self.source,
            warnings=sorted(self.diagnostics),
        )

    def _routes(self, raw: dict[str, Any], providers: Mapping[str, ProviderSettings]) -> Routes:
        def targets(value: Any) -> list[RouteTarget]:
            texts = [value] if isinstance(value, str) else list(value or ())
            parsed = [RouteTarget.parse(text) for text in texts]
            if self.is_embedded:  # the first target whose provider is switched on
                parsed = [t for t in parsed if t.provider in providers][:1]
            return parsed

        routes = {name: targets(raw.get(name)) for name in _ROUTE_NAMES}
        models = {model: targets(value) for model, value in (raw.get("models") or {}).items()}
        custom = raw.get("custom")
        return Routes(
            **routes,
            long_context_threshold=raw.get("long_context_threshold", DEFAULT_LONG_CONTEXT_THRESHOLD),
            models={model: found for model, found in models.items() if found},
            think_adaptive=bool(raw.get("think_adaptive", False)),
            custom=CustomRouter(custom["function"], float(custom.get("timeout", 0.2))) if custom else None,
        )


def _provider(name: str, rules: str, raw: dict[str, Any]) -> ProviderSettings:
    timeout = raw.get("timeout") or {}
    defaults = Timeouts()
    return ProviderSettings(
        name=name,
        rules=rules,
        base_url=raw.get("base_url"),
        api_key=raw.get("api_key") or None,
        headers=dict(raw.get("headers") or {}),
        models=list(raw.get("models") or ()),
        timeouts=Timeouts(
            connect=float(timeout.get("connect", defaults.connect)),
            first_byte=float(timeout.get("first_byte", defaults.first_byte)),
            idle=float(timeout.get("read", defaults.idle)),
            total=float(timeout["total"]) if timeout.get("total") is not None else None,
        ),
    )


def _resilience(server: Mapping[str, Any]) -> ResilienceSettings:
    retry, breaker = server.get("retry") or {}, server.get("circuit_breaker") or {}
    retry_defaults, breaker_defaults = RetrySettings(), BreakerSettings()
    return ResilienceSettings(
        retry=RetrySettings(
            attempts=int(retry.get("attempts", retry_defaults.attempts)),
            backoff=float(retry.get("backoff", retry_defaults.backoff)),
            max_backoff=float(retry.get("max_backoff", retry_defaults.max_backoff)),
            max_retry_after=float(retry.get("max_retry_after", retry_defaults.max_retry_after)),
        ),
        breaker=BreakerSettings(
            failures=int(breaker.get("failures", breaker_defaults.failures)),
            open_seconds=float(breaker.get("open_seconds", breaker_defaults.open_seconds)),
        ),
        fallback_on_unsupported=bool(server.get("fallback_on_unsupported", False)),
    )


def _route_texts(routes: Any) -> Iterator[tuple[KeyPath, str]]:
    """Every ``provider/model`` string in `routes` with its path; tolerates a malformed shape."""
    if not isinstance(routes, dict):
        return
    for name, value in routes.items():
        if name == "models" and isinstance(value, dict):
            for model, targets in value.items():
                yield from _target_texts(("routes", "models", model), targets)
        elif name != "long_context_threshold":
            yield from _target_texts(("routes", name), value)


def _target_texts(path: KeyPath, value: Any) -> Iterator[tuple[KeyPath, str]]:
    if isinstance(value, str) and "/" in value:
        yield path, value
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str) and "/" in item:
                yield (*path, index), item


def _route_users(routes: Any) -> dict[str, str]:
    """Provider name → the first route (dotted) that names it."""
    users: dict[str, str] = {}
    for path, text in _route_texts(routes):
        users.setdefault(text.partition("/")[0], dotted(path))
    return users
