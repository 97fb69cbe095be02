"""``ccproxy-engine import-ccr``: a claude-code-router ``config.json`` as a ccproxy-engine config.

What maps: ``Providers[]`` (name, ``api_base_url``, ``api_key``, ``models``, and the rule set named
by the host or by a provider transformer), ``Router`` (``"provider,model"`` values become
``provider/model``), ``HOST``/``PORT``/``APIKEY``. Keys are never copied: an ``api_key`` that is a
``$VAR``/``${VAR}`` reference stays one, a literal key becomes ``${NAME_API_KEY}`` and the report
says to export it. Everything else (request transformers other than a provider's format, custom
routers in JavaScript, logging and proxy settings) is listed as not mapped, with what to do instead.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ._config import check_config
from ._loader import BUILTIN_RULES_DIR

__all__ = ["Conversion", "convert", "run_import"]

#: Host → our rule set, for providers whose transformer does not say.
HOST_RULES = {
    "api.openai.com": "openai", "openrouter.ai": "openrouter", "api.deepseek.com": "deepseek",
    "generativelanguage.googleapis.com": "gemini", "api.groq.com": "groq", "api.mistral.ai": "mistral",
    "api.x.ai": "xai", "api.anthropic.com": "anthropic",
}
#: Path suffixes of a full endpoint URL (claude-code-router's api_base_url) that our base_url leaves off.
ENDPOINT_SUFFIXES = ("/chat/completions", "/messages", "/models/", "/models")
ROUTER_KEYS = {"default": "default", "background": "background", "think": "think", "longContext": "long_context",
               "webSearch": "web_search", "image": "image"}
#: claude-code-router transformers whose job the rule sets do already, and how: reported as covered.
COVERED_TRANSFORMERS = {
    "cleancache": "the rule sets never send cache_control to a provider that does not take it",
    "reasoning": "the rule sets turn reasoning_content/reasoning into thinking blocks",
    "maxtoken": "the rule sets cap max_tokens at the model's max_output (a rule file's `models:` sets it)",
}
IGNORED_TOP = {"Providers", "Router", "HOST", "PORT", "APIKEY", "transformers", "Transformers"}
_REFERENCE = re.compile(r"^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$")


@dataclass
class Conversion:
    """The config text, what could not be mapped, and the transformers the rule sets cover (one line each)."""

    text: str = ""
    unmapped: list[str] = field(default_factory=list)
    covered: list[str] = field(default_factory=list)


def _rule_sets() -> set[str]:
    return {path.stem for path in BUILTIN_RULES_DIR.glob("*.yaml")}


def _q(value: Any) -> str:
    return json.dumps(value)


def _key_reference(name: str, key: Any, notes: list[str]) -> str | None:
    if not isinstance(key, str) or not key:
        return None
    if match := _REFERENCE.match(key):
        return f"${{{match.group(1)}}}"
    var = re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_API_KEY"
    notes.append(f"Providers[{name}].api_key: the key was not copied; export {var}=<the key> before serving")
    return f"${{{var}}}"


def _transformer_names(entry: Any) -> list[str]:
    """Transformer names in a ``{"use": [...]}`` entry (a name, or ``[name, options]``)."""
    used = entry.get("use", []) if isinstance(entry, dict) else []
    names = [item[0] if isinstance(item, list) and item else item for item in used]
    return [name for name in names if isinstance(name, str)]


def _provider(raw: dict[str, Any], rule_sets: set[str], notes: list[str],
              covered: list[str]) -> tuple[str, list[str]] | None:
    name = str(raw.get("name") or "")
    if not name:
        notes.append("Providers[]: an entry without a name was skipped")
        return None
    url = str(raw.get("api_base_url") or "")
    transformer: dict[str, Any] = raw["transformer"] if isinstance(raw.get("transformer"), dict) else {}
    names = [str(n) for n in _transformer_names(transformer)]
    rules = next((n for n in names if n in rule_sets), None) or HOST_RULES.get(urlsplit(url).hostname or "")
    if rules is None:
        rules = "ollama" if urlsplit(url).port == 11434 else "openai-compatible"
    for other in (n for n in names if n != rules):
        (covered if other in COVERED_TRANSFORMERS else notes).append(_transformer_note(name, other, rules))
    for model, entry in transformer.items():
        if model != "use":
            notes.append(f"Providers[{name}].transformer[{model}]: per-model transformers "
                         f"({', '.join(map(str, _transformer_names(entry)))}) are not mapped")
    base_url = url
    for suffix in ENDPOINT_SUFFIXES:
        if base_url.endswith(suffix):
            base_url = base_url[: -len(suffix)]
            break
    fields = [f"rules: {rules}"] if rules != name else []
    if base_url:
        fields.append(f"base_url: {_q(base_url.rstrip('/'))}")
    key = _key_reference(name, raw.get("api_key"), notes) if rules not in {"ollama", "openai-compatible"} or \
        raw.get("api_key") not in {None, "", "ollama"} else None
    if key:
        fields.append(f"api_key: {_q(key)}")
    models = [str(m) for m in raw.get("models", []) if isinstance(m, str)]
    if models:
        fields.append(f"models: {_q(models)}")
    return name, [f"  {_yaml_key(name)}: {{{', '.join(fields)}}}"]


def _transformer_note(provider: str, transformer: str, rules: str) -> str:
    where = f"Providers[{provider}].transformer: {transformer!r}"
    if transformer in COVERED_TRANSFORMERS:
        return f"{where} is covered: {COVERED_TRANSFORMERS[transformer]}"
    return (f"{where} has no equivalent; the {rules} rule set decides the request format "
            "(write a rule file to change it: docs/adding-a-provider.md)")


def _yaml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_.-]+", name) else _q(name)


def _route(value: Any, key: str, notes: list[str]) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    provider, _, model = value.partition(",")
    if not model:
        notes.append(f"Router.{key}: {value!r} is not \"provider,model\"")
        return None
    return f"{provider.strip()}/{model.strip()}"


def convert(data: dict[str, Any]) -> Conversion:
    """The conversion of a parsed claude-code-router config."""
    notes: list[str] = []
    covered: list[str] = []
    rule_sets = _rule_sets()
    lines = ["# converted from a claude-code-router config by `ccproxy-engine import-ccr`", "server:"]
    lines.append(f"  host: {_q(str(data.get('HOST') or '127.0.0.1'))}")
    lines.append(f"  port: {int(data.get('PORT') or 3456)}")
    if data.get("APIKEY"):
        lines.append(f"  api_key: {_q(_key_reference('CCPROXY', data['APIKEY'], notes))}")
    lines.append("providers:")
    for raw in data.get("Providers") or []:
        converted = _provider(raw, rule_sets, notes, covered) if isinstance(raw, dict) else None
        if converted:
            lines += converted[1]
    router: dict[str, Any] = data["Router"] if isinstance(data.get("Router"), dict) else {}
    lines.append("routes:")
    for key, value in router.items():
        if key in ROUTER_KEYS:
            if target := _route(value, key, notes):
                lines.append(f"  {ROUTER_KEYS[key]}: {_q(target)}")
        elif key == "longContextThreshold":
            lines.append(f"  long_context_threshold: {int(value)}")
        else:
            notes.append(f"Router.{key}: not mapped")
    if data.get("CUSTOM_ROUTER_PATH"):
        notes.append("CUSTOM_ROUTER_PATH: a JavaScript router cannot run here; write it in Python as "
                     "routes.custom (docs/routing.md)")
    notes.extend(f"{key}: not mapped" for key in data if key not in IGNORED_TOP and key != "CUSTOM_ROUTER_PATH")
    if data.get("transformers") or data.get("Transformers"):
        notes.append("transformers: custom JavaScript transformers cannot run here; a rule file does their job")
    return Conversion("\n".join(lines) + "\n", notes, covered)


def run_import(path: Path, output: Path | None, *, force: bool = False) -> int:
    """``import-ccr``: print (or write to `output`) the converted config; the unmapped parts go to stderr."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"ccproxy-engine: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except json.JSONDecodeError as exc:
        print(f"ccproxy-engine: {path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); "
              "comments and trailing commas must be removed first", file=sys.stderr)
        return 1
    if not isinstance(data, dict):
        print(f"ccproxy-engine: {path}: expected a JSON object", file=sys.stderr)
        return 1
    conversion = convert(data)
    if output is not None:
        if output.exists() and not force:
            print(f"ccproxy-engine: {output} exists; pass --force to overwrite it", file=sys.stderr)
            return 1
        output.write_text(conversion.text, encoding="utf-8")
        print(f"wrote {output}", file=sys.stderr)
        problems = [d for d in check_config(output, env={}, available_rules=_rule_sets())
                    if d.code != "missing-env"]
        for problem in problems:
            print(problem.format(), file=sys.stderr)
    else:
        print(conversion.text, end="")
    for heading, lines in (("not mapped:", conversion.unmapped), ("covered by the rule sets:", conversion.covered)):
        if lines:
            print(heading, file=sys.stderr)
            for line in lines:
                print(f"  {line}", file=sys.stderr)
    return 0
