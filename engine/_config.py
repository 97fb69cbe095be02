"""Config: a YAML file (or the embedded default) becomes `Settings`, and every problem gets a position.

Shape: ``server`` (where to listen), ``providers`` (upstreams by name) and ``routes`` (which
``provider/model`` serves which request). `schemas/config.schema.json` is the reference for every
key; the loader validates against it, so `validate`, `serve` and editors agree.

Interpolation. Every string value may hold environment references, also inside longer text::

    api_key: "${OPENAI_API_KEY}"                # the variable's value
    base_url: "${OPENAI_BASE_URL:-https://api.openai.com/v1}"   # or this default
    headers: {X-Note: "costs $${1}"}            # $${ is a literal ${

As with the shell's ``:-``, an empty variable counts as unset, and that holds for plain ``${VAR}``
too: an empty API key is never what anyone meant. The default runs to the first ``}``; references do
not nest, and the text that comes in from the environment is not interpolated again. A *plain*
(unquoted) scalar that held a reference is typed afterwards the way YAML types plain text, so
``port: ${PORT:-3456}`` is an int and ``api_key: ${KEY:-}`` is null; quote it to keep a string.
Keys are never interpolated.

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

import datetime
import difflib
import functools
import json
import os
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from jsonschema import Draft202012Validator, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from ._errors import ConfigError, Diagnostic, DiagnosticCode

__all__ = [
    "DEFAULT_CONFIG_YAML",
    "EMBEDDED_SOURCE",
    "CustomRouter",
    "ProviderSettings",
    "RouteTarget",
    "Routes",
    "Settings",
    "Timeouts",
    "check_config",
    "load_config",
]

EMBEDDED_SOURCE = "<embedded default>"
SCHEMA_PATH = Path(__file__).parent / "schemas" / "config.schema.json"

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

_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")
_NULL = re.compile(r"~|null|Null|NULL")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")

_Path: TypeAlias = tuple[str | int, ...]
_Pos: TypeAlias = tuple[int, int]


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


@functools.cache
def _validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


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
        self.value_pos: dict[_Path, _Pos] = {}
        self.key_pos: dict[_Path, _Pos] = {}
        self.missing: list[tuple[_Path, str]] = []

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

    def _report(self, pos: _Pos, code: DiagnosticCode, message: str, severity: str = "error") -> None:
        self.diagnostics.append(Diagnostic(self.source, pos[0], pos[1], code, message, severity))

    def _pos(self, path: _Path, *, key: bool = False) -> _Pos:
        """1-based position of the value (or key) at `path`, else of its nearest ancestor."""
        while path:
            found = self.key_pos.get(path) if key else self.value_pos.get(path)
            if found is not None:
                return found
            path = path[:-1]
        return (1, 1)

    # -- parse and interpolate -------------------------------------------------------------------

    def _parse(self) -> dict[str, Any] | None:
        if self.path is None:
            text = DEFAULT_CONFIG_YAML
        else:
            try:
                text = Path(self.path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                self._report((1, 1), DiagnosticCode.IO, f"cannot read config: {reason}")
                return None
        yaml = YAML(typ="rt")
        yaml.preserve_quotes = True  # quoted scalars keep their type, so interpolation keeps them strings
        try:
            tree = yaml.load(text)
        except MarkedYAMLError as exc:
            self._report_yaml_error(exc)
            return None
        except YAMLError as exc:
            self._report((1, 1), DiagnosticCode.YAML_SYNTAX, str(exc))
            return None
        if not isinstance(tree, CommentedMap):
            what = "empty" if tree is None else "a list" if isinstance(tree, list) else f"just {tree!r}"
            self._report((1, 1), DiagnosticCode.SCHEMA,
                         f"the config is {what}; expected a mapping with 'providers' and 'routes'")
            return None
        data: dict[str, Any] = self._plain(tree, ())
        return data

    def _report_yaml_error(self, exc: MarkedYAMLError) -> None:
        mark, context = exc.problem_mark or exc.context_mark, exc.context_mark
        pos = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        message = str(exc.problem or exc.context or "invalid YAML")
        if exc.problem and exc.context and context is not None:
            message += f" ({exc.context} started at {context.line + 1}:{context.column + 1})"
        self._report(pos, DiagnosticCode.YAML_SYNTAX, message)

    def _plain(self, node: Any, path: _Path) -> Any:
        """`node` as plain dict/list/str/int/float/bool/None, interpolated; positions recorded."""
        if isinstance(node, CommentedMap):
            out: dict[str, Any] = {}
            for key, value in node.items():
                child = (*path, str(key))
                self._record(child, node.lc, key)
                out[str(key)] = self._plain(value, child)
            return out
        if isinstance(node, CommentedSeq):
            items = []
            for index, value in enumerate(node):
                child = (*path, index)
                try:
                    line, col = node.lc.item(index)
                    self.value_pos[child] = (line + 1, col + 1)
                except (KeyError, IndexError, TypeError):
                    pass
                items.append(self._plain(value, child))
            return items
        if isinstance(node, str):
            return self._interpolate(node, path)
        if isinstance(node, bool) or node is None:
            return node
        if isinstance(node, int):
            return int(node)
        if isinstance(node, float):
            return float(node)
        if isinstance(node, datetime.date):  # YAML's timestamp type; the schema wants its text
            return node.isoformat()
        return node

    def _record(self, child: _Path, lc: Any, key: Any) -> None:
        try:
            line, col = lc.key(key)
            self.key_pos[child] = (line + 1, col + 1)
            line, col = lc.value(key)
            self.value_pos[child] = (line + 1, col + 1)
        except (KeyError, IndexError, TypeError):  # merged (<<:) keys carry no position of their own
            pass

    def _interpolate(self, text: str, path: _Path) -> Any:
        if "$" not in text:
            return str(text)
        is_plain = type(text) is str  # ruamel's quoted and block scalars are str subclasses
        malformed = False

        def substitute(match: re.Match[str]) -> str:
            nonlocal malformed
            name, default = match.group(1), match.group(2)
            if match.group(0) == "$${":
                return "${"
            if name is None:
                malformed = True
                return match.group(0)
            value = self.env.get(name)
            if value:
                return value
            if default is not None:
                return default
            self.missing.append((path, name))
            return ""

        result = _REFERENCE.sub(substitute, text)
        if malformed:
            self._report(self._pos(path), DiagnosticCode.SCHEMA,
                         f"{_dotted(path)}: malformed reference in {str(text)!r}: write ${{NAME}} or "
                         "${NAME:-default}, or $${ for a literal ${")
        if is_plain and result != text:
            return _type_plain(result)
        return str(result)

    # -- schema ----------------------------------------------------------------------------------

    def _validate(self, data: dict[str, Any]) -> None:
        for error in _validator().iter_errors(data):
            self._schema_error(error)

    def _schema_error(self, error: ValidationError) -> None:
        path: _Path = tuple(error.absolute_path)
        if any(path[: len(m)] == m for m, _ in self.missing):
            return  # a missing variable emptied this value; the provider check reports it
        if error.validator == "additionalProperties":
            allowed = list(error.schema.get("properties", {}))
            for key in error.instance:
                if key not in allowed:
                    where = _dotted(path) if path else "the top level"
                    self._report(self._pos((*path, key), key=True), DiagnosticCode.UNKNOWN_KEY,
                                 f"unknown key {key!r} in {where}{_suggest(key, allowed)}")
        elif "propertyNames" in error.schema_path:  # the error is about a key, so point at the key
            rule = error.schema.get("description", error.message)
            self._report(self._pos((*path, str(error.instance)), key=True), DiagnosticCode.SCHEMA,
                         f"{_dotted(path)}: bad name {error.instance!r}; {rule[0].lower()}{rule[1:]}")
        elif error.validator == "required":
            self._report(self._pos(path, key=True), DiagnosticCode.SCHEMA,
                         f"{_dotted(path) or 'the config'}: {error.message}")
        elif error.validator == "anyOf":
            self._route_error(error, path)
        elif error.validator == "pattern":
            examples = error.schema.get("examples") or []
            hint = f" (for example {examples[0]!r})" if examples else ""
            self._report(self._pos(path), DiagnosticCode.SCHEMA,
                         f"{_dotted(path)}: {error.instance!r} does not have the expected form{hint}")
        else:
            self._report(self._pos(path), DiagnosticCode.SCHEMA, f"{_dotted(path)}: {error.message}")

    def _route_error(self, error: ValidationError, path: _Path) -> None:
        """A route is a string or a list; report the branch that matches the value's type."""
        branch = 0 if isinstance(error.instance, str) else 1 if isinstance(error.instance, list) else None
        errors = [e for e in error.context or () if e.relative_schema_path[0] == branch]
        if branch is None or not errors:
            self._report(self._pos(path), DiagnosticCode.SCHEMA, f"{_dotted(path)}: expected "
                         f"provider/model or a list of them, got {error.instance!r}")
        for sub in errors:
            self._schema_error(sub)

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

    def _is_enabled(self, name: str, rules: str, missing: list[tuple[_Path, str]], user: str | None) -> bool:
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
            pos = self._pos(where) if where in self.value_pos else self._pos(where[:2], key=True)
            self._report(pos, DiagnosticCode.UNKNOWN_RULES,
                         f"rule set {rules!r} does not exist{_suggest(rules, known)}; {consequence}",
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
                         f"{_dotted(path)}: {text!r} names provider {provider!r}, which is not configured"
                         f"{_suggest(provider, configured) or listing}")

    # -- build -----------------------------------------------------------------------------------

    def _build(self, data: dict[str, Any], enabled: dict[str, str]) -> Settings:
        server = data.get("server") or {}
        providers = {name: _provider(name, rules, data["providers"][name]) for name, rules in enabled.items()}
        return Settings(
            host=server.get("host", DEFAULT_HOST),
            port=server.get("port", DEFAULT_PORT),
            api_key=server.get("api_key") or None,
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


def _route_texts(routes: Any) -> Iterator[tuple[_Path, str]]:
    """Every ``provider/model`` string in `routes` with its path; tolerates a malformed shape."""
    if not isinstance(routes, dict):
        return
    for name, value in routes.items():
        if name == "models" and isinstance(value, dict):
            for model, targets in value.items():
                yield from _target_texts(("routes", "models", model), targets)
        elif name != "long_context_threshold":
            yield from _target_texts(("routes", name), value)


def _target_texts(path: _Path, value: Any) -> Iterator[tuple[_Path, str]]:
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
        users.setdefault(text.partition("/")[0], _dotted(path))
    return users


def _type_plain(text: str) -> Any:
    """Type `text` the way YAML 1.2 types a plain scalar: null, bool, int, float or str."""
    if not text or _NULL.fullmatch(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def _dotted(path: _Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else part
    return out


def _suggest(word: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
