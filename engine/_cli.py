"""``ccproxy-engine serve`` and ``ccproxy-engine validate``: the only code that prints or exits."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from ._compiler import CompiledRules, compile_rules
from ._config import Settings, check_config, load_config
from ._errors import ConfigError, Diagnostic, DiagnosticCode, RouteError, RuleError, SetupError
from ._loader import BUILTIN_RULES_DIR, display_path, load_rules, rule_file_paths
from ._router import Router

_CONFIG_KEYS = frozenset({"server", "providers", "routes"})


def prepare(config: str | Path | None, rule_paths: Sequence[Path] = (),
            env: Mapping[str, str] | None = None) -> tuple[Settings, dict[str, CompiledRules]]:
    """Load rules and config, compile the rules; raise one `SetupError` listing every problem."""
    rule_sets, diagnostics = load_rules(rule_paths)
    rules, problems = compile_rules(rule_sets)
    diagnostics += problems
    if any(d.severity == "error" for d in diagnostics):
        raise RuleError(diagnostics)
    settings = load_config(config, env, available_rules=set(rules))
    try:
        Router(settings)  # imports routes.custom: a broken custom router stops start-up here
    except RouteError as exc:
        raise ConfigError([Diagnostic(settings.source, 1, 1, DiagnosticCode.BAD_ROUTE, exc.message)]) from exc
    return settings, rules


def _print_diagnostics(diagnostics: Iterable[Diagnostic]) -> None:
    for diagnostic in diagnostics:
        print(diagnostic.format(), file=sys.stderr)


def _is_config_file(path: Path) -> bool:
    """A YAML file whose top level has server/providers/routes is a config; anything else is rules."""
    try:
        data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except (OSError, YAMLError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and bool(_CONFIG_KEYS & set(data))


def validate(paths: Sequence[Path]) -> list[Diagnostic]:
    """Every problem in the given rule files, rule directories and config files."""
    if not paths:
        paths = [Path("rules")] if Path("rules").is_dir() else [BUILTIN_RULES_DIR]
    diagnostics: list[Diagnostic] = []
    configs: list[Path] = []
    rules: list[Path] = []
    for path in paths:
        if not path.exists():
            diagnostics.append(Diagnostic(str(path), 1, 1, DiagnosticCode.IO, "no such file or directory"))
            continue
        for file in rule_file_paths([path]):
            (configs if _is_config_file(file) else rules).append(file)
    builtin = BUILTIN_RULES_DIR.resolve()
    user_rules = [p for p in rules if p.resolve().parent != builtin]
    rule_sets, problems = load_rules(user_rules)
    diagnostics += problems
    _, problems = compile_rules(rule_sets)
    diagnostics += problems
    for config in configs:
        # a rule set that exists but has errors is reported above, not again as "does not exist"
        diagnostics += check_config(config, available_rules=set(rule_sets))
    return sorted(diagnostics)


def _cmd_validate(args: argparse.Namespace) -> int:
    diagnostics = validate([Path(p) for p in args.paths])
    _print_diagnostics(diagnostics)
    errors = [d for d in diagnostics if d.severity == "error"]
    if errors:
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return 1
    checked = ", ".join(args.paths) or "rules"
    print(f"ok: {checked} valid" + (f" ({len(diagnostics)} warning(s))" if diagnostics else ""))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings, rules = prepare(args.config, [Path(p) for p in args.rules])
    except SetupError as exc:
        _print_diagnostics(exc.diagnostics)
        return 1
    _print_diagnostics(settings.warnings)
    host = args.host or settings.host
    port = args.port or settings.port
    if not settings.api_key and not _is_loopback(host) and not (args.allow_unauthenticated
                                                                  or settings.allow_unauthenticated):
        print(f"ccproxy-engine: refusing to serve on {host} without a key: anyone who can reach it could "
              "use every configured provider key. Set server.api_key in the config (clients then send it "
              "as x-api-key or Authorization: Bearer), serve on 127.0.0.1, or pass --allow-unauthenticated "
              "(server.allow_unauthenticated: true) if something in front of the proxy authenticates.",
              file=sys.stderr)
        return 2
    from ._serve import PortInUseError, ensure_port_free, serve

    try:
        ensure_port_free(host, port)
    except PortInUseError as exc:
        print(f"ccproxy-engine: {exc.strerror}", file=sys.stderr)
        return 1
    from ._app import create_app  # only a serving process needs the HTTP stack

    app = create_app(settings, rules)
    print(f"ccproxy-engine serving on http://{host}:{port} (config: {settings.source}; "
          f"providers: {', '.join(settings.providers) or 'none'})", file=sys.stderr)
    return serve(app, host=host, port=port, workers=args.workers, log_level=args.log_level)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccproxy-engine",
                                     description="Anthropic Messages API proxy to any model provider.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy in the foreground")
    serve.add_argument("--config", help="config file (default: the embedded default, driven by env vars)")
    serve.add_argument("--host", help="address to listen on (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port, 3456)")
    serve.add_argument("--rules", action="append", default=[], metavar="PATH",
                       help="extra rule file or directory (repeatable); overrides built-ins by name")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument("--allow-unauthenticated", action="store_true",
                       help="serve a non-loopback host without server.api_key (something else authenticates)")
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(handler=_cmd_serve)
    check = sub.add_parser("validate", help="check rule files, rule directories and config files")
    check.add_argument("paths", nargs="*",
                       help="files or directories (default: ./rules or the built-in rules)")
    check.set_defaults(handler=_cmd_validate)
    from ._statusline import add_parser as add_statusline

    add_statusline(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "warning").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO; our own log says what matters
    logging.getLogger("httpx").setLevel(logging.WARNING)
    code: int = args.handler(args)
    return code


__all__ = ["display_path", "main", "prepare", "validate"]
