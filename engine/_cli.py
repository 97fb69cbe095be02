"""The ``ccproxy-engine`` command line: the parser, and the commands that print or exit.

One home per concept: this module parses and dispatches, and holds ``serve``, ``validate``,
``translate`` and ``route``; the background server (``start``/``stop``/``status``/``reload``) is
`_daemon`, the Claude Code launcher (``code``) `_launch`, ``init`` `_starter` and ``import-ccr``
`_import_ccr`. What translate and route show is computed by `_inspect`.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from ._compiler import CompiledRules, compile_rules
from ._config import RouteTarget, Settings, check_config, load_config
from ._daemon import AlreadyRunningError, Instance
from ._errors import ConfigError, Diagnostic, DiagnosticCode, EngineError, RouteError, RuleError, SetupError
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
    instance = Instance.for_config(args.config) if args.background else None
    try:
        lock = instance.claim() if instance else None
    except AlreadyRunningError as exc:
        print(f"ccproxy-engine: {exc}", file=sys.stderr)
        return 1
    try:
        return _serve_app(args, settings, rules, host, port, instance)
    finally:
        if instance and lock:
            instance.release()
            lock.close()


def _serve_app(args: argparse.Namespace, settings: Settings, rules: dict[str, CompiledRules], host: str, port: int,
               instance: Instance | None) -> int:
    """Build the app and serve it until a stop signal (`instance`: record it for `status`)."""
    from ._serve import PortInUseError, ensure_port_free, serve

    try:
        ensure_port_free(host, port)
    except PortInUseError as exc:
        print(f"ccproxy-engine: {exc.strerror}", file=sys.stderr)
        return 1
    if args.access_log:
        settings = dataclasses.replace(settings, access_log=True)
    if args.workers > 1:  # before prometheus-client is imported: the workers' metrics are summed
        from ._metrics import use_multiprocess_dir

        use_multiprocess_dir()
    from ._app import create_app  # only a serving process needs the HTTP stack
    from ._reload import Reloader

    app = create_app(settings, rules)
    started = time.time()
    rule_paths = [Path(p) for p in args.rules]
    reloader = Reloader(app, lambda: prepare(args.config, rule_paths), settings, host=host, port=port,
                        instance=instance, started=started)
    print(f"ccproxy-engine serving on http://{host}:{port} (config: {settings.source}; "
          f"providers: {', '.join(settings.providers) or 'none'})", file=sys.stderr, flush=True)
    if instance:
        instance.write_info(settings, host=host, port=port, started=started)
    return serve(app, host=host, port=port, workers=args.workers, log_level=args.log_level, on_reload=reloader)


def _prepare_offline(args: argparse.Namespace, *, fill_embedded: bool
                     ) -> tuple[Settings, dict[str, CompiledRules], dict[str, str]] | None:
    """`prepare` for commands that send nothing: a ``${VAR}`` left unset gets a placeholder, so a
    rule author needs no keys. For a config file that changes no route (a provider a route uses
    would be an error, an unused one only disabled); for the embedded default it would (unset keys
    drop providers there), so `route` fills them only in a file (`fill_embedded`)."""
    from ._inspect import missing_variables

    config = Path(args.config) if args.config else None
    env = dict(os.environ)
    try:
        unset = missing_variables(config, env) if config or fill_embedded else []
    except OSError as exc:
        print(f"ccproxy-engine: {args.config}: {exc.strerror or exc}", file=sys.stderr)
        return None
    if unset:
        print(f"note: not set, a placeholder stands in (nothing is sent): {', '.join(unset)}", file=sys.stderr)
    env.update({name: f"unset-{name}" for name in unset})
    try:
        settings, rules = prepare(config, [Path(p) for p in args.rules], env)
    except SetupError as exc:
        _print_diagnostics(exc.diagnostics)
        return None
    return settings, rules, env


def _cmd_translate(args: argparse.Namespace) -> int:
    """Print the upstream request the rules build for a request file (and translate a recorded answer)."""
    from ._inspect import (
        describe_call,
        error_text,
        prepare_call,
        read_request,
        route_request,
        translate_answer,
    )
    from ._tokens import TokenCounter

    try:
        chosen = RouteTarget.parse(args.model) if args.model else None
    except ValueError as exc:
        print(f"ccproxy-engine: --model: {exc}", file=sys.stderr)
        return 2
    loaded = _prepare_offline(args, fill_embedded=True)
    if loaded is None:
        return 1
    settings, rules, env = loaded
    shown: list[str] = []
    try:
        request = read_request(Path(args.request))
        target = chosen or route_request(settings, request).primary
        endpoint, call = prepare_call(settings, rules, target, request, env)
        shown.append(describe_call(endpoint, call))
        if args.response:
            raw = Path(args.response).read_bytes()
            shown.append(f"\n--- answer to the client ({args.response}) ---")
            shown.append(translate_answer(endpoint, call, raw, status=args.status,
                                          input_tokens=TokenCounter().count_request(request.body)))
        code = 0
    except OSError as exc:
        print(f"ccproxy-engine: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except EngineError as exc:
        shown.append(error_text(exc))
        code = 1
    print("\n".join(shown))
    return code


def _cmd_route(args: argparse.Namespace) -> int:
    """Print the route `serve` would take for a request file, and why."""
    from ._inspect import read_request, route_request

    loaded = _prepare_offline(args, fill_embedded=False)
    if loaded is None:
        return 1
    try:
        route = route_request(loaded[0], read_request(Path(args.request)))
    except OSError as exc:
        print(f"ccproxy-engine: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except EngineError as exc:
        print(f"ccproxy-engine: {exc.message}", file=sys.stderr)
        return 1
    print(route.primary)
    print(f"reason: {route.reason}")
    if route.tokens is not None:
        print(f"tokens: {route.tokens} (estimate)")
    if len(route.targets) > 1:
        print(f"fallbacks: {', '.join(str(t) for t in route.targets[1:])}")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _cmd_daemon(args: argparse.Namespace) -> int:
    """start, stop, status and reload of the background server for a config."""
    from . import _daemon

    instance = _daemon.Instance.for_config(args.config)
    if args.command != "start":
        command: Callable[[_daemon.Instance], int] = getattr(_daemon, args.command)
        return command(instance)
    try:
        settings, _ = prepare(args.config, [Path(p) for p in args.rules])
    except SetupError as exc:
        _print_diagnostics(exc.diagnostics)
        return 1
    extra = [arg for path in args.rules for arg in ("--rules", path)] + ["--workers", str(args.workers),
                                                                        "--log-level", args.log_level]
    return _daemon.start(instance, settings, extra)


def _cmd_code(args: argparse.Namespace) -> int:
    from ._launch import launch, split_code_args

    config, claude_args = split_code_args(args.rest)
    try:
        settings, _ = prepare(config)
    except SetupError as exc:
        _print_diagnostics(exc.diagnostics)
        return 1
    return launch(config, settings, claude_args)


def _cmd_init(args: argparse.Namespace) -> int:
    from ._starter import write_starter

    return write_starter(Path(args.output), force=args.force)


def _cmd_import_ccr(args: argparse.Namespace) -> int:
    from ._import_ccr import run_import

    return run_import(Path(args.path), Path(args.output) if args.output else None, force=args.force)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ccproxy-engine")
    except PackageNotFoundError:  # pragma: no cover - running from a checkout without an install
        return "unknown"


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config file (default: the embedded default, driven by env vars)")


def _add_rules(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rules", action="append", default=[], metavar="PATH",
                        help="extra rule file or directory (repeatable); overrides built-ins by name")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccproxy-engine",
                                     description="Anthropic Messages API proxy to any model provider.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    code = sub.add_parser("code", help="run Claude Code through the proxy (started in the background if needed)",
                          usage="%(prog)s [--config FILE] [claude arguments...]",
                          description="Every argument after an optional leading --config FILE goes to claude.")
    code.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    code.set_defaults(handler=_cmd_code)
    serve = sub.add_parser("serve", help="run the proxy in the foreground")
    _add_config(serve)
    serve.add_argument("--host", help="address to listen on (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port, 3456)")
    _add_rules(serve)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument("--allow-unauthenticated", action="store_true",
                       help="serve a non-loopback host without server.api_key (something else authenticates)")
    serve.add_argument("--access-log", action="store_true",
                       help="one JSON line per request at INFO (server.access_log: true)")
    serve.add_argument("--log-level", default="warning", choices=LOG_LEVELS)
    serve.add_argument("--background", action="store_true", help=argparse.SUPPRESS)  # `start` runs this
    serve.set_defaults(handler=_cmd_serve)
    start = sub.add_parser("start", help="start the proxy in the background (PID, lock and log in the state dir)")
    _add_config(start)
    _add_rules(start)
    start.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    start.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    for name, text in (("stop", "stop the background proxy"),
                       ("status", "show the background proxy's address, providers, routes and uptime"),
                       ("reload", "make the background proxy re-read its config and rules")):
        _add_config(sub.add_parser(name, help=text))
    for name in ("start", "stop", "status", "reload"):
        sub.choices[name].set_defaults(handler=_cmd_daemon)
    check = sub.add_parser("validate", help="check rule files, rule directories and config files")
    check.add_argument("paths", nargs="*",
                       help="files or directories (default: ./rules or the built-in rules)")
    check.set_defaults(handler=_cmd_validate)
    translate = sub.add_parser("translate", help="print the upstream request the rules build, sending nothing")
    _add_config(translate)
    _add_rules(translate)
    translate.add_argument("--model", metavar="PROVIDER/MODEL",
                           help="the target (default: the one the router picks)")
    translate.add_argument("request", metavar="REQUEST.json",
                           help="an Anthropic /v1/messages body, or a recorded request {path, headers, body}")
    translate.add_argument("--response", metavar="FILE",
                           help="an upstream answer (JSON, or a recorded SSE stream) to translate back")
    translate.add_argument("--status", type=int, default=200,
                           help="the HTTP status of --response (a non-2xx one is mapped as an error)")
    translate.set_defaults(handler=_cmd_translate)
    route = sub.add_parser("route", help="print the provider/model a request is routed to, and why")
    _add_config(route)
    _add_rules(route)
    route.add_argument("request", metavar="REQUEST.json", help="an Anthropic /v1/messages body")
    route.set_defaults(handler=_cmd_route)
    init = sub.add_parser("init", help="write a starter config from the provider keys in the environment")
    init.add_argument("--output", default="ccproxy.yaml", help="where to write it (default: ccproxy.yaml)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(handler=_cmd_init)
    ccr = sub.add_parser("import-ccr", help="convert a claude-code-router config.json into a config")
    ccr.add_argument("path", metavar="PATH", help="claude-code-router's config.json")
    ccr.add_argument("--output", help="write the config here (default: print it)")
    ccr.add_argument("--force", action="store_true", help="overwrite an existing --output file")
    ccr.set_defaults(handler=_cmd_import_ccr)
    from ._statusline import add_parser as add_statusline

    add_statusline(sub)
    return parser


LOG_LEVELS = ["debug", "info", "warning", "error"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["code"]:  # claude's own options must not meet our parser
        args = argparse.Namespace(command="code", rest=argv[1:], handler=_cmd_code)
    else:
        args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "warning").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO; our own log says what matters
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        code: int = args.handler(args)
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


__all__ = ["display_path", "main", "prepare", "validate"]
