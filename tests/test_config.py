"""Tests for `_config`: interpolation, schema positions, routes and the embedded default."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from ccproxy_engine._config import (
    DEFAULT_CONFIG_YAML,
    EMBEDDED_SOURCE,
    SCHEMA_PATH,
    RouteTarget,
    Settings,
    Timeouts,
    check_config,
    load_config,
)
from ccproxy_engine._errors import ConfigError, Diagnostic, DiagnosticCode

MINIMAL = """\
providers:
  openai: {base_url: "https://api.openai.com/v1", api_key: "${OPENAI_API_KEY}"}
routes:
  default: openai/gpt-4.1
"""


@pytest.fixture
def write(tmp_path: Path):
    def write(text: str) -> Path:
        path = tmp_path / "config.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


def load(path: Path, **env: str) -> Settings:
    return load_config(path, env)


def errors_of(path: Path, env: dict[str, str] | None = None, **kwargs: object) -> list[Diagnostic]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env or {}, **kwargs)  # type: ignore[arg-type]
    return caught.value.diagnostics


def at(diagnostic: Diagnostic) -> tuple[int, int, DiagnosticCode]:
    return diagnostic.line, diagnostic.col, diagnostic.code


# -- interpolation ------------------------------------------------------------------------------------


def test_set_variable_is_substituted_also_inside_longer_text(write) -> None:
    path = write("""\
        providers:
          openai:
            base_url: "https://${OPENAI_HOST}/v1"
            api_key: "${OPENAI_API_KEY}"
            headers: {X-Who: "team ${TEAM} via ${OPENAI_HOST}"}
        routes: {default: openai/gpt-4.1}
        """)
    settings = load(path, OPENAI_API_KEY="sk-test", OPENAI_HOST="gw.example", TEAM="infra")
    openai = settings.providers["openai"]
    assert openai.base_url == "https://gw.example/v1"
    assert openai.api_key == "sk-test"
    assert openai.headers == {"X-Who": "team infra via gw.example"}


def test_default_is_used_when_variable_is_unset_or_empty(write) -> None:
    path = write("""\
        providers:
          local: {rules: openai, base_url: "${LOCAL_URL:-http://localhost:8000/v1}"}
        routes: {default: local/qwen}
        """)
    assert load(path).providers["local"].base_url == "http://localhost:8000/v1"
    assert load(path, LOCAL_URL="").providers["local"].base_url == "http://localhost:8000/v1"
    assert load(path, LOCAL_URL="http://gpu:9000/v1").providers["local"].base_url == "http://gpu:9000/v1"


def test_plain_scalar_is_typed_after_interpolation_and_quoted_stays_a_string(write) -> None:
    path = write("""\
        server:
          port: ${PORT:-4000}
          api_key: ${PROXY_KEY:-}
          host: "${HOST:-0.0.0.0}"
        providers:
          openai: {api_key: "${KEY:-}"}
        routes: {default: openai/gpt-4.1}
        """)
    settings = load(path)
    assert (settings.port, settings.api_key, settings.host) == (4000, None, "0.0.0.0")
    assert settings.providers["openai"].api_key is None
    assert load(path, PORT="5000", PROXY_KEY="secret").port == 5000
    assert load(path, PROXY_KEY="secret").api_key == "secret"


def test_escaped_dollar_brace_is_literal(write) -> None:
    path = write("""\
        providers:
          openai:
            headers: {X-Template: "$${HOME} and ${HOME}", X-Plain: "cost $5"}
        routes: {default: openai/gpt-4.1}
        """)
    headers = load(path, HOME="/root").providers["openai"].headers
    assert headers == {"X-Template": "${HOME} and /root", "X-Plain": "cost $5"}


def test_missing_variable_in_routed_provider_is_an_error_at_the_scalar(write) -> None:
    path = write(MINIMAL)
    [error] = errors_of(path)
    assert at(error) == (2, 60, DiagnosticCode.MISSING_ENV)
    assert "OPENAI_API_KEY is not set" in error.message
    assert "used by routes.default" in error.message
    assert error.format().startswith(f"{path}:2:60: environment variable OPENAI_API_KEY")


def test_missing_variable_in_unused_provider_disables_it_with_a_warning(write) -> None:
    path = write("""\
        providers:
          openai: {api_key: "${OPENAI_API_KEY}"}
          gemini:
            api_key: ${GEMINI_API_KEY}
        routes: {default: openai/gpt-4.1}
        """)
    settings = load(path, OPENAI_API_KEY="sk")
    assert list(settings.providers) == ["openai"]
    [warning] = settings.warnings
    assert (*at(warning), warning.severity) == (4, 14, DiagnosticCode.MISSING_ENV, "warning")
    assert "provider 'gemini' is disabled" in warning.message
    assert check_config(path, {"OPENAI_API_KEY": "sk"}) == [warning]


def test_missing_variable_outside_providers_is_an_error(write) -> None:
    path = write("""\
        server: {api_key: "${PROXY_KEY}"}
        providers: {openai: {}}
        routes: {default: openai/gpt-4.1}
        """)
    [error] = errors_of(path)
    assert at(error) == (1, 19, DiagnosticCode.MISSING_ENV)


def test_malformed_reference_is_reported(write) -> None:
    path = write("""\
        providers:
          openai: {api_key: "${1BAD}"}
        routes: {default: openai/gpt-4.1}
        """)
    [error] = errors_of(path)
    assert at(error) == (2, 21, DiagnosticCode.SCHEMA)
    assert "malformed reference" in error.message


# -- schema positions ---------------------------------------------------------------------------------


def test_unknown_top_level_key_is_reported_at_the_key(write) -> None:
    path = write("""\
        server: {port: 3456}
        providers: {openai: {}}
        routes: {default: openai/gpt-4.1}
        logging:
          level: debug
        """)
    [error] = errors_of(path)
    assert at(error) == (4, 1, DiagnosticCode.UNKNOWN_KEY)
    assert error.message == "unknown key 'logging' in the top level"


def test_unknown_nested_key_suggests_the_near_name(write) -> None:
    path = write("""\
        providers:
          openai:
            base_ur: https://api.openai.com/v1
        routes: {default: openai/gpt-4.1, backgroud: openai/gpt-4.1-mini}
        """)
    errors = errors_of(path)
    assert [at(e) for e in errors] == [(3, 5, DiagnosticCode.UNKNOWN_KEY),
                                       (4, 35, DiagnosticCode.UNKNOWN_KEY)]
    assert errors[0].message == "unknown key 'base_ur' in providers.openai (did you mean 'base_url'?)"
    assert "(did you mean 'background'?)" in errors[1].message


def test_port_type_error_is_reported_at_the_value(write) -> None:
    path = write("""\
        server:
          host: 127.0.0.1
          port: "3456"
        providers: {openai: {}}
        routes: {default: openai/gpt-4.1}
        """)
    [error] = errors_of(path)
    assert at(error) == (3, 9, DiagnosticCode.SCHEMA)
    assert error.message == "server.port: '3456' is not of type 'integer'"


def test_every_problem_is_collected(write) -> None:
    path = write("""\
        server: {port: 70000, colour: red}
        providers:
          openai: {timeout: {connect: -1}}
        routes:
          default: gpt-4.1
          think: [nobody/o3]
        """)
    errors = errors_of(path)
    assert [at(e) for e in errors] == [
        (1, 16, DiagnosticCode.SCHEMA),
        (1, 23, DiagnosticCode.UNKNOWN_KEY),
        (3, 31, DiagnosticCode.SCHEMA),
        (5, 12, DiagnosticCode.SCHEMA),
        (6, 11, DiagnosticCode.BAD_ROUTE),
    ]
    assert errors[3].message == ("routes.default: 'gpt-4.1' does not have the expected form "
                                 "(for example 'openai/gpt-4.1')")


def test_bad_provider_name_is_reported_at_the_key(write) -> None:
    path = write("""\
        providers:
          openai: {}
          team/openai: {}
        routes: {default: openai/gpt-4.1}
        """)
    [error] = errors_of(path)
    assert at(error) == (3, 3, DiagnosticCode.SCHEMA)
    assert error.message == ("providers: bad name 'team/openai'; provider name: letters, digits, '.', '_' "
                             "and '-'.")


def test_required_keys_are_reported(write) -> None:
    path = write("""\
        server: {port: 1234}
        routes: {}
        """)
    messages = sorted(e.message for e in errors_of(path))
    assert messages == ["routes: 'default' is a required property",
                        "the config: 'providers' is a required property"]


def test_yaml_syntax_error_and_duplicate_key_have_positions(write, tmp_path: Path) -> None:
    broken = write("providers: {openai: {}\nroutes: {default: openai/x}\n")
    [error] = errors_of(broken)
    assert error.code is DiagnosticCode.YAML_SYNTAX
    assert (error.line, error.col) == (2, 1)
    assert error.message == ("expected ',' or '}', but got '<scalar>' "
                             "(while parsing a flow mapping started at 1:12)")

    duplicate = tmp_path / "dup.yaml"
    duplicate.write_text("providers: {openai: {}}\nroutes: {default: openai/x}\nroutes: {}\n")
    [error] = errors_of(duplicate)
    assert (error.line, error.col, error.code) == (3, 1, DiagnosticCode.YAML_SYNTAX)
    assert "duplicate key" in error.message


def test_unreadable_and_empty_files(tmp_path: Path, write) -> None:
    [error] = errors_of(tmp_path / "nope.yaml")
    assert error.code is DiagnosticCode.IO
    [error] = errors_of(write("# nothing here\n"))
    assert error.message == "the config is empty; expected a mapping with 'providers' and 'routes'"


# -- providers and routes -----------------------------------------------------------------------------


def test_bad_route_is_reported_at_the_target(write) -> None:
    path = write("""\
        providers: {openai: {}, deepseek: {}}
        routes:
          default: opnai/gpt-4.1
          models:
            claude-opus-4-1: [openai/o3, anthropic/claude-opus-4-1]
        """)
    errors = errors_of(path)
    assert [at(e) for e in errors] == [(3, 12, DiagnosticCode.BAD_ROUTE), (5, 34, DiagnosticCode.BAD_ROUTE)]
    assert errors[0].message == ("routes.default: 'opnai/gpt-4.1' names provider 'opnai', which is not "
                                 "configured (did you mean 'openai'?)")
    assert errors[1].message.endswith("(configured: openai, deepseek)")


def test_list_routes_split_at_the_first_slash(write) -> None:
    path = write("""\
        providers:
          openrouter: {rules: openai, base_url: "https://openrouter.ai/api/v1"}
          ollama: {rules: openai, base_url: "http://localhost:11434/v1"}
        routes:
          default: [openrouter/anthropic/claude-sonnet-4, ollama/llama3.1]
          background: ollama/llama3.1:8b
          long_context_threshold: 100000
          models:
            claude-opus-4-1: openrouter/openai/o3
            "claude-*haiku*": [ollama/qwen3, openrouter/qwen/qwen3-coder]
        """)
    routes = load(path).routes
    assert routes.default == [RouteTarget("openrouter", "anthropic/claude-sonnet-4"),
                              RouteTarget("ollama", "llama3.1")]
    assert routes.background == [RouteTarget("ollama", "llama3.1:8b")]
    assert routes.think == []
    assert routes.long_context_threshold == 100000
    assert list(routes.models) == ["claude-opus-4-1", "claude-*haiku*"]
    haiku = routes.models["claude-*haiku*"]
    assert [str(t) for t in haiku] == ["ollama/qwen3", "openrouter/qwen/qwen3-coder"]


def test_provider_settings_defaults_and_timeouts(write) -> None:
    path = write("""\
        providers:
          openai:
            base_url: https://api.openai.com/v1
            models: [gpt-4.1, o3]
            timeout: {connect: 5, read: 60, first_byte: 120.5, total: 600}
          deepseek: {}
        routes: {default: openai/gpt-4.1, think: deepseek/deepseek-reasoner}
        """)
    settings = load(path)
    openai, deepseek = settings.providers["openai"], settings.providers["deepseek"]
    assert openai.rules == "openai"
    assert openai.models == ["gpt-4.1", "o3"]
    assert openai.timeouts == Timeouts(connect=5.0, first_byte=120.5, idle=60.0, total=600.0)
    assert (deepseek.base_url, deepseek.api_key, deepseek.headers, deepseek.models) == (None, None, {}, [])
    assert deepseek.timeouts == Timeouts(connect=10.0, first_byte=300.0, idle=300.0, total=None)
    assert (settings.host, settings.port, settings.api_key) == ("127.0.0.1", 3456, None)


def test_unknown_rules_error_when_routed_and_warning_when_unused(write) -> None:
    path = write("""\
        providers:
          openai: {}
          gemini: {}
          mistral: {rules: mistrall}
        routes: {default: openai/gpt-4.1, think: gemini/gemini-2.5-pro}
        """)
    [error, warning] = check_config(path, {}, available_rules=["openai", "mistral"])
    assert (*at(error), error.severity) == (3, 3, DiagnosticCode.UNKNOWN_RULES, "error")
    assert "provider 'gemini' is used by routes.think" in error.message
    assert (*at(warning), warning.severity) == (4, 20, DiagnosticCode.UNKNOWN_RULES, "warning")
    assert "rule set 'mistrall' does not exist (did you mean 'mistral'?)" in warning.message


def test_api_keys_stay_out_of_repr(write) -> None:
    settings = load(write(MINIMAL), OPENAI_API_KEY="sk-very-secret")
    assert "sk-very-secret" not in repr(settings)


# -- embedded default ---------------------------------------------------------------------------------


def test_embedded_default_passes_the_schema_and_checks_clean() -> None:
    assert check_config(None, {}) == []
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    assert DEFAULT_CONFIG_YAML.startswith("server:")


def test_embedded_default_without_keys_is_ollama_only() -> None:
    settings = load_config(None, {})
    assert settings.source == EMBEDDED_SOURCE
    assert list(settings.providers) == ["ollama"]
    ollama = settings.providers["ollama"]
    assert (ollama.base_url, ollama.api_key, ollama.rules) == ("http://localhost:11434/v1", None, "ollama")
    assert settings.routes.default == [RouteTarget("ollama", "llama3.1")]
    assert settings.routes.background == settings.routes.think == []
    assert (settings.host, settings.port, settings.api_key) == ("127.0.0.1", 3456, None)


def test_embedded_default_switches_providers_on_by_their_variables() -> None:
    env = {"DEEPSEEK_API_KEY": "ds", "GROQ_API_KEY": "gq", "OPENAI_API_KEY": ""}
    settings = load_config(None, env)
    assert list(settings.providers) == ["deepseek", "groq", "ollama"]
    assert settings.providers["deepseek"].api_key == "ds"
    assert settings.providers["deepseek"].base_url == "https://api.deepseek.com"
    assert settings.routes.default == [RouteTarget("deepseek", "deepseek-chat")]
    assert settings.routes.think == [RouteTarget("deepseek", "deepseek-reasoner")]

    every = {f"{name}_API_KEY": "k" for name in
             ("OPENAI", "GEMINI", "DEEPSEEK", "OPENROUTER", "GROQ", "MISTRAL", "XAI")}
    settings = load_config(None, every)
    assert len(settings.providers) == 8
    routes = settings.routes
    chosen = [str(routes.default[0]), str(routes.background[0]), str(routes.think[0])]
    assert chosen == ["openai/gpt-4.1", "openai/gpt-4.1-mini", "openai/o3"]


def test_embedded_default_keeps_only_providers_with_shipped_rules() -> None:
    env = {"OPENAI_API_KEY": "sk", "DEEPSEEK_API_KEY": "ds", "OPENAI_BASE_URL": "https://gw.local/v1"}
    settings = load_config(None, env, available_rules=["openai"])
    assert list(settings.providers) == ["openai", "ollama"]
    assert settings.providers["openai"].base_url == "https://gw.local/v1"
    assert settings.providers["ollama"].rules == "openai"  # no ollama rule set yet: the family rules
    assert settings.warnings == []

    settings = load_config(None, {"DEEPSEEK_API_KEY": "ds"}, available_rules=["openai", "ollama"])
    assert list(settings.providers) == ["ollama"]
    assert settings.providers["ollama"].rules == "ollama"
    assert settings.routes.default == [RouteTarget("ollama", "llama3.1")]


def test_route_target_parse() -> None:
    assert RouteTarget.parse("openrouter/x-ai/grok-4") == RouteTarget("openrouter", "x-ai/grok-4")
    with pytest.raises(ValueError, match="expected provider/model"):
        RouteTarget.parse("gpt-4.1")
