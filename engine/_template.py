"""The rule language: templates built with Jinja, selectors written in JMESPath, compiled once.

Everything here runs at start-up and returns plain callables; a request only calls them.

* `compile_expression("{{ request.max_tokens }}")` → ``fn(scope) -> 4096``: a template string that is a
  single ``{{ … }}`` is evaluated as an expression and keeps its native type (no text, no re-parsing).
  Plain paths such as ``a.b.c`` skip Jinja entirely.
* `compile_selector("choices[0].delta.content")` → ``fn(chunk) -> "Hel"``: JMESPath parsed once; plain
  field paths become direct lookups.
* `compile_template(node)` → ``fn(scope) -> value``: a YAML structure whose leaves are literals or
  expressions, with the directives ``$each``, ``$if``, ``$switch``, ``$let``, ``$use``, ``$select``,
  ``$merge`` and ``$flatten`` (docs/rules.md). A computed ``None`` drops its key or list item; a
  literal ``null`` written in YAML stays.

Problems are collected as `Diagnostic`s with the exact file, line and column, never raised one by one.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import jmespath
from jinja2 import ChainableUndefined, Environment, TemplateSyntaxError, Undefined, meta, nodes
from jinja2.exceptions import TemplateAssertionError, TemplateError
from jinja2.parser import Parser
from jmespath import exceptions as jmes_exceptions
from jmespath.visitor import TreeInterpreter

from ._errors import Diagnostic, DiagnosticCode, EngineError, RuleRuntimeError
from ._expressions import compile_jmespath, compile_native, compile_native_text
from ._functions import JINJA_FILTERS, JMESPATH_OPTIONS, EngineFunctions
from ._loader import RuleSet, SourcePosition
from ._types import KeyPath, Scope, Selector, Transformer

Compiled = Transformer

DIRECTIVES = ("$each", "$if", "$switch", "$let", "$use", "$select", "$merge", "$flatten")
DIRECTIVE_KEYS: dict[str, frozenset[str]] = {
    "$each": frozenset({"$each", "as", "do", "if"}),
    "$if": frozenset({"$if", "then", "else"}),
    "$switch": frozenset({"$switch", "cases", "default"}),
    "$let": frozenset({"$let", "in"}),
    "$use": frozenset({"$use", "with"}),
    "$select": frozenset({"$select", "from"}),
    "$merge": frozenset({"$merge"}),
    "$flatten": frozenset({"$flatten"}),
}


class _Spread(list[Any]):
    """A list produced by `$each` or `$flatten`: spliced into a parent list instead of nested."""


class RuleEnvironment(Environment):
    """Jinja, tuned for data: ``a.b`` on a dict reads the key ``b`` first (so a field named ``items``
    or ``values`` is never shadowed by a dict method), and our filters see ``None`` for undefined."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict):
            if attribute in obj:
                return obj[attribute]
            return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


def _none_for_undefined(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(value: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(None if isinstance(value, Undefined) else value, *args, **kwargs)

    wrapper.__name__ = getattr(fn, "__name__", "filter")
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _empty_for_none(value: Any) -> Any:
    """In mixed text a none prints as nothing, never as the word "None" (`Bearer {{ key }}`)."""
    return "" if value is None else value


def _make_environment() -> RuleEnvironment:
    # like the plain-path fast path and JMESPath: `a.b.c` with no `a.b` is none, not an error, so
    # adding a filter (`a.b.c | default(1)`) to a path that worked never makes it fail
    env = RuleEnvironment(autoescape=False, keep_trailing_newline=True, undefined=ChainableUndefined,
                          finalize=_empty_for_none)
    env.filters.update({name: _none_for_undefined(fn) for name, fn in JINJA_FILTERS.items()})
    return env


ENVIRONMENT = _make_environment()
_INTERPRETER = TreeInterpreter(JMESPATH_OPTIONS)
_JMESPATH_BUILTINS = frozenset(EngineFunctions.FUNCTION_TABLE)


@dataclass(slots=True)
class CompileContext:
    """What compiling one rule set needs: its data and positions, the names in scope, the problems.

    `scope_names` is the lexical scope of the fragment being compiled: the section's own names
    (``request``, ``model``, ...) plus what the enclosing directives bind. A directive compiles its
    body inside `bind`; a named template is checked once per distinct scope of its call sites
    (`named_template`), so a name is known exactly where it is bound, never because some other
    part of the file binds it.
    """

    rule_set: RuleSet
    scope_names: frozenset[str]
    diagnostics: list[Diagnostic] = field(default_factory=list)
    named: dict[str, Compiled] = field(default_factory=dict)
    compiling: set[str] = field(default_factory=set)
    checked: set[tuple[str, frozenset[str], bool]] = field(default_factory=set)
    """(template, scope, quiet) already checked: each template is checked once per scope."""
    call_sites: list[tuple[str, SourcePosition]] = field(default_factory=list)
    """The ``$use`` chain being checked, innermost last: unknown names say where they came from."""
    quiet: bool = False
    """Set under a directive with a key error: its names are not reported (they only follow from it)."""
    check_only: bool = False
    """Compiling a template again, for another call site's scope: only diagnostics matter."""
    unbound: set[tuple[str, SourcePosition]] = field(default_factory=set)
    """(name, where) of unknown names reported: a use, or the outermost call site that lacks it."""
    _seen: set[tuple[str, int, int, str]] = field(default_factory=set)

    def report(self, pos: SourcePosition, code: DiagnosticCode, message: str,
               detail: str | None = None) -> None:
        key = (pos.path, pos.line, pos.col, message)
        if key in self._seen:  # a template checked for several call sites reports its own errors once
            return
        self._seen.add(key)
        self.diagnostics.append(Diagnostic(pos.path, pos.line, pos.col, code, message, detail=detail))

    def position(self, key_path: KeyPath) -> SourcePosition:
        return self.rule_set.position(key_path)

    @contextmanager
    def bind(self, *names: str) -> Iterator[None]:
        """Compile the body of a binding form with `names` added to the lexical scope."""
        saved = self.scope_names
        self.scope_names = saved | frozenset(names)
        try:
            yield
        finally:
            self.scope_names = saved


def bound_names(data: Any) -> set[str]:
    """Every variable name a rule set binds (``as:``, ``$let``, ``with:``): the scope a named template
    that no call site reaches is checked with (nothing says what its callers would bind)."""
    names: set[str] = set()
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "$each" in node:
                names.add(str(node.get("as", "item")))
            for key in ("$let", "with"):
                if isinstance(node.get(key), dict):
                    names.update(node[key])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return names


# --- expressions -------------------------------------------------------------------------------


def is_expression(text: str) -> bool:
    """True for a string that is exactly one ``{{ … }}`` (evaluated to a native value)."""
    stripped = text.strip()
    return (stripped.startswith("{{") and stripped.endswith("}}")
            and stripped.count("{{") == 1 and "{%" not in stripped)


def compile_expression(text: str, key_path: KeyPath, ctx: CompileContext) -> Compiled:
    """Compile ``{{ expr }}`` (or a bare ``expr``) to a callable returning the native value."""
    pos = ctx.position(key_path)
    stripped = text.strip()
    inner = stripped[2:-2] if stripped.startswith("{{") else stripped
    offset = len(text) - len(text.lstrip())  # where the source starts: `{{`, or the bare expression
    try:
        expr = _parse_expression(inner)
    except TemplateSyntaxError as exc:
        _report_jinja(exc, pos, offset, text, ctx)
        return _fail_at_runtime(pos)
    if not _check_names(expr, pos, offset, text, ctx) or ctx.check_only:
        return _fail_at_runtime(pos)
    path = _plain_path(expr)
    if path is not None:
        return _path_getter(*path)
    native = _native_expression(inner)
    if native is not None:
        return _guard(_defined(native), pos, text)
    body = [nodes.Assign(nodes.Name("result", "store"), expr, lineno=1)]
    try:
        template = ENVIRONMENT.from_string(nodes.Template(body, lineno=1))
    except TemplateError as exc:
        _report_jinja(exc, pos, offset, text, ctx)
        return _fail_at_runtime(pos)
    render = template.root_render_func
    new_context = template.new_context

    def evaluate(scope: Scope) -> Any:
        context = new_context(scope, shared=True)
        for _ in render(context):
            pass
        value = context.vars.get("result")
        return None if isinstance(value, Undefined) else value

    return _guard(evaluate, pos, text)


# Parsing and closure building depend only on the text, and dialect rule sets inherit most of their
# templates unchanged: each distinct text is parsed and compiled once per process. Checks that depend
# on the rule set (names, positions) still run per use.


@functools.cache
def _parse_expression(inner: str) -> nodes.Expr:
    parser = Parser(ENVIRONMENT, inner, state="variable")
    expr = parser.parse_expression()
    if not parser.stream.eos:
        raise TemplateSyntaxError("unexpected text after the expression", parser.stream.current.lineno)
    return expr


@functools.cache
def _native_expression(inner: str) -> Compiled | None:
    return compile_native(_parse_expression(inner), ENVIRONMENT)


@functools.cache
def _parse_text(text: str) -> nodes.Template:
    return ENVIRONMENT.parse(text)


@functools.cache
def _native_text(text: str) -> Compiled | None:
    return compile_native_text(_parse_text(text), ENVIRONMENT)


def _defined(native: Compiled) -> Compiled:
    def evaluate(scope: Scope) -> Any:
        value = native(scope)
        return None if isinstance(value, Undefined) else value

    return evaluate


def compile_text(text: str, key_path: KeyPath, ctx: CompileContext) -> Compiled:
    """Compile a string that mixes text with ``{{ }}``/``{% %}``; it renders to a string."""
    pos = ctx.position(key_path)
    try:
        ast = _parse_text(text)
        if not _check_names(ast, pos, 0, text, ctx) or ctx.check_only:
            return _fail_at_runtime(pos)
        native = _native_text(text)
        if native is not None:
            return _guard(native, pos, text)
        template = ENVIRONMENT.from_string(text)
    except TemplateError as exc:
        _report_jinja(exc, pos, 0, text, ctx)
        return _fail_at_runtime(pos)
    render = template.render
    return _guard(render, pos, text)


def compile_url(text: Any, key_path: KeyPath, ctx: CompileContext) -> Compiled:
    """Compile a URL template. Each ``{{ }}`` value is percent-encoded as one path segment, so a
    request value (a model name with ``/``, ``#`` or ``?``) can never steer the URL, and a rule author
    cannot forget to escape it. Left as written: the provider's own settings (``provider.base_url``
    and the rest of ``provider``) and values that can only be the rule's own literals
    (``{{ 'a' if stream else 'b' }}``)."""
    pos = ctx.position(key_path)
    if not isinstance(text, str):
        ctx.report(pos, DiagnosticCode.BAD_TEMPLATE, "request.url must be a string template")
        return _fail_at_runtime(pos)
    try:
        ast = _parse_text(text)
    except TemplateError as exc:
        _report_jinja(exc, pos, 0, text, ctx)
        return _fail_at_runtime(pos)
    if not _check_names(ast, pos, 0, text, ctx):
        return _fail_at_runtime(pos)
    outputs: list[nodes.Expr] | None = [] if not ast.body else None
    if len(ast.body) == 1 and isinstance(ast.body[0], nodes.Output):
        outputs = ast.body[0].nodes
    parts: list[str | tuple[Compiled, bool]] = []
    for node in outputs if outputs is not None else ():
        if isinstance(node, nodes.TemplateData):
            parts.append(node.data)
            continue
        native = compile_native(node, ENVIRONMENT)
        if native is None:
            outputs = None
            break
        parts.append((_defined(native), _is_literal(node) or _is_provider_setting(node)))
    if outputs is None:
        ctx.report(pos, DiagnosticCode.BAD_TEMPLATE,
                   "request.url takes text and {{ expressions }} only (no {% %} blocks, filters or calls "
                   "that the engine cannot escape value by value)")
        return _fail_at_runtime(pos)

    def render(scope: Scope) -> str:
        out: list[str] = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value, trusted = part
            piece = str(_empty_for_none(value(scope)))
            out.append(piece if trusted else quote(piece, safe=""))
        return "".join(out)

    return _guard(render, pos, text)


def _is_literal(node: nodes.Expr) -> bool:
    """Whether every value `node` can take is a literal written in the rule."""
    if isinstance(node, nodes.Const):
        return True
    if isinstance(node, nodes.CondExpr):
        return node.expr2 is not None and _is_literal(node.expr1) and _is_literal(node.expr2)
    return False


def _is_provider_setting(node: nodes.Expr) -> bool:
    """``provider.<key>``: a value of the provider's own configuration, never of a request."""
    return (isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name)
            and node.node.name == "provider")


def _plain_path(expr: nodes.Expr) -> tuple[str, tuple[str | int, ...]] | None:
    """``a.b[0].c`` as ("a", ("b", 0, "c")); None for anything that is not a plain path."""
    parts: list[str | int] = []
    node = expr
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
                and isinstance(node.arg.value, str | int) and not isinstance(node.arg.value, bool):
            parts.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Name):
            return node.name, tuple(reversed(parts))
        else:
            return None


def _path_getter(name: str, parts: tuple[str | int, ...]) -> Compiled:
    def get(scope: Scope) -> Any:
        value = scope.get(name)
        for part in parts:
            if isinstance(value, dict):
                value = value.get(part) if isinstance(part, str) else None
            elif isinstance(value, list | str) and isinstance(part, int):
                value = value[part] if -len(value) <= part < len(value) else None
            else:
                return None
        return value

    return get


def _check_names(ast: nodes.Node, pos: SourcePosition, offset: int, text: str, ctx: CompileContext) -> bool:
    """Report variables not bound where they are used; Jinja would silently treat them as undefined.

    A name is known when the section provides it or an enclosing directive (or, inside a named
    template, its call site) binds it. Each unknown name is reported at its own line and column.
    """
    # find_all yields descendants only: `{{ name }}` alone is a Name with none
    names = [*([ast] if isinstance(ast, nodes.Name) else []), *ast.find_all(nodes.Name)]
    if isinstance(ast, nodes.Template):
        unknown = meta.find_undeclared_variables(ast) - ctx.scope_names
    else:
        unknown = {n.name for n in names if n.ctx == "load"} - ctx.scope_names
    if ctx.quiet:
        return True
    for name in sorted(unknown):
        lineno = next((n.lineno for n in names if n.name == name), 1)
        where = _name_position(pos, text, offset, lineno, name)
        # once per use, and once per outermost `$use` that leaves the name unbound: a call site
        # missing a binding is one mistake, however often the templates it calls read the name
        keys = [(name, where)] + ([(name, ctx.call_sites[0][1])] if ctx.call_sites else [])
        if any(key in ctx.unbound for key in keys):
            continue
        ctx.unbound.update(keys)
        hint = difflib.get_close_matches(name, sorted(ctx.scope_names), n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        ctx.report(where, DiagnosticCode.BAD_TEMPLATE, f"unknown variable '{name}'{suggestion}",
                   detail=_call_site_note(ctx))
    return not unknown


def _call_site_note(ctx: CompileContext) -> str | None:
    """Inside a named template, which ``$use`` the scope came from: the fix may belong there. A detail
    line, not part of the message, so the same mistake seen from two rule sets is reported once."""
    if not ctx.call_sites:
        return None
    template, site = ctx.call_sites[-1]
    return f"  not bound where template '{template}' is used, at {site.path}:{site.line}:{site.col}"


def _name_position(pos: SourcePosition, text: str, offset: int, lineno: int, name: str) -> SourcePosition:
    """Where `name` is on line `lineno` of the Jinja source that starts at `offset` in `text`.

    Jinja gives a line only; the column is the first occurrence of the name as a whole word (not an
    attribute, not inside quotes), else the start of that line (`_jinja_position`).
    """
    lines = text[offset:].split("\n")
    line_text = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
    found = re.search(rf"(?<![\w.'\"]){re.escape(name)}(?![\w'\"])", line_text)
    if found is None or (lineno > 1 and not pos.block):
        return _jinja_position(pos, text, offset, lineno)
    line_start = offset + sum(len(line) + 1 for line in lines[:lineno - 1])
    return _text_position(pos, text, line_start + found.start())


def _text_position(pos: SourcePosition, text: str, offset: int) -> SourcePosition:
    """Where character `offset` of a scalar's `text` is in the file.

    Only a block scalar's text lines are file lines; a flow scalar's line breaks come from ``\\n``
    escapes or folding, so there the offset is taken as one on the scalar's first line.
    """
    if not pos.block:
        return pos.shifted(col_offset=offset)
    before = text[:offset]
    return pos.shifted(line_offset=before.count("\n"), col_offset=offset - (before.rfind("\n") + 1))


def _jinja_position(pos: SourcePosition, text: str, offset: int, lineno: int) -> SourcePosition:
    """Where line `lineno` of Jinja source starting at `offset` in the scalar's `text` is in the file.

    Jinja gives lines, no columns: the first line maps to where the source starts, a later one (in a
    block scalar) to the start of that line.
    """
    start = _text_position(pos, text, offset)
    if lineno <= 1 or not pos.block:
        return start
    return pos.shifted(line_offset=text[:offset].count("\n") + lineno - 1)


def _report_jinja(exc: TemplateError, pos: SourcePosition, offset: int, text: str,
                  ctx: CompileContext) -> None:
    message = str(exc.message if hasattr(exc, "message") and exc.message else exc)
    code = DiagnosticCode.BAD_TEMPLATE
    if isinstance(exc, TemplateAssertionError) and "No filter named" in message:
        code = DiagnosticCode.UNKNOWN_FILTER
        name = message.split("'")[1] if "'" in message else ""
        hint = difflib.get_close_matches(name, sorted(ENVIRONMENT.filters), n=1)
        message = f"unknown filter '{name}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
    lineno = getattr(exc, "lineno", 1) or 1
    detail = "\n".join(f"  {line}" for line in text.strip().split("\n"))
    ctx.report(_jinja_position(pos, text, offset, lineno), code, message, detail=detail)


def _fail_at_runtime(pos: SourcePosition) -> Compiled:
    """Stand-in for a fragment that did not compile; `serve` refuses to start before it can run."""

    def fail(scope: Scope) -> Any:
        raise RuleRuntimeError(f"rule at {pos.path}:{pos.line}:{pos.col} did not compile")

    return fail


def _guard(fn: Compiled, pos: SourcePosition, text: str) -> Compiled:
    """Turn an exception inside a rule into a `RuleRuntimeError` naming the rule's position."""

    def guarded(scope: Scope) -> Any:
        try:
            return fn(scope)
        except EngineError:
            raise
        except Exception as exc:
            raise RuleRuntimeError(
                f"rule {pos.path}:{pos.line}:{pos.col} failed: {type(exc).__name__}: {exc}"
            ) from exc

    return guarded


# --- selectors ---------------------------------------------------------------------------------


def compile_selector(expression: str, key_path: KeyPath, ctx: CompileContext) -> Selector:
    """Compile a JMESPath selector once. ``choices[0].delta.content`` → a function of the chunk."""
    pos = ctx.position(key_path)
    try:
        parsed = jmespath.compile(expression)
    except jmes_exceptions.ParseError as exc:
        column = exc.lex_position if isinstance(exc.lex_position, int) else 0
        where = _text_position(pos, expression, column)
        caret = f"  {expression}\n  {' ' * column}^"
        ctx.report(where, DiagnosticCode.BAD_SELECTOR, f"invalid JMESPath: {exc.msg}", detail=caret)
        return lambda data: None
    except jmes_exceptions.JMESPathError as exc:
        ctx.report(pos, DiagnosticCode.BAD_SELECTOR, f"invalid JMESPath: {exc}")
        return lambda data: None
    tree = parsed.parsed
    if not _check_functions(tree, expression, pos, ctx):
        return lambda data: None
    fields = _field_path(tree)
    if fields is not None:
        return _field_getter(fields)
    native = compile_jmespath(tree, JMESPATH_OPTIONS.custom_functions)
    if native is not None:
        return _guard_selector(native, pos)
    visit = _INTERPRETER.visit
    return _guard_selector(lambda data: visit(tree, data), pos)


def _guard_selector(select: Selector, pos: SourcePosition) -> Selector:
    """A JMESPath failure at run time (a function given the wrong type) names the selector's position."""

    def guarded(data: Any) -> Any:
        try:
            return select(data)
        except jmes_exceptions.JMESPathError as exc:
            raise RuleRuntimeError(f"selector {pos.path}:{pos.line}:{pos.col} failed: {exc}") from exc

    return guarded


def _check_functions(tree: dict[str, Any], expression: str, pos: SourcePosition, ctx: CompileContext) -> bool:
    """JMESPath checks function names only when it runs; check them (and arity) now."""
    ok = True
    for node in _walk_jmespath(tree):
        if node["type"] != "function_expression":
            continue
        name = node["value"]
        if name not in _JMESPATH_BUILTINS:
            hint = difflib.get_close_matches(name, sorted(_JMESPATH_BUILTINS), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            column = max(expression.find(name + "("), 0)
            ctx.report(_text_position(pos, expression, column), DiagnosticCode.UNKNOWN_FUNCTION,
                       f"unknown function '{name}'{suggestion}")
            ok = False
            continue
        signature = EngineFunctions.FUNCTION_TABLE[name]["signature"]
        count = len(node["children"])
        variadic = bool(signature) and signature[-1].get("variadic", False)
        if count < len(signature) or (count > len(signature) and not variadic):
            column = max(expression.find(name + "("), 0)
            ctx.report(_text_position(pos, expression, column), DiagnosticCode.BAD_SELECTOR,
                       f"function '{name}' takes {len(signature)} argument(s), got {count}")
            ok = False
    return ok


def _walk_jmespath(node: Any) -> Iterable[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for child in node.get("children", []):
            yield from _walk_jmespath(child)


def _field_path(tree: dict[str, Any]) -> tuple[str | int, ...] | None:
    """``a.b[0].c`` → ("a", "b", 0, "c"); None when the selector is not a plain path."""
    kind = tree["type"]
    if kind == "field":
        return (tree["value"],)
    if kind == "subexpression":
        path: tuple[str | int, ...] = ()
        for child in tree["children"]:
            part = _field_path(child)
            if part is None:
                return None
            path += part
        return path
    if kind == "index_expression":
        # `a[0][1]` is one node with children [a, 0, 1]
        left_node, *indexes = tree["children"]
        left = _field_path(left_node) if left_node["type"] != "identity" else ()
        if left is None or any(index["type"] != "index" for index in indexes):
            return None
        return (*left, *(index["value"] for index in indexes))
    return None


def _field_getter(fields: tuple[str | int, ...]) -> Selector:
    if len(fields) == 1 and isinstance(fields[0], str):
        only = fields[0]
        return lambda data: data.get(only) if isinstance(data, dict) else None

    def get(data: Any) -> Any:
        for part in fields:
            if isinstance(part, str):
                if not isinstance(data, dict):
                    return None
                data = data.get(part)
            else:
                if not isinstance(data, list) or not -len(data) <= part < len(data):
                    return None
                data = data[part]
        return data

    return get


# --- templates ---------------------------------------------------------------------------------


def compile_template(node: Any, key_path: KeyPath, ctx: CompileContext) -> Compiled:
    """Compile a template node (see the module docstring) into ``fn(scope) -> value``."""
    if isinstance(node, str):
        if is_expression(node):
            return compile_expression(node, key_path, ctx)
        if "{{" in node or "{%" in node:
            return compile_text(node, key_path, ctx)
        return lambda scope: node
    if isinstance(node, list):
        return _compile_list(node, key_path, ctx)
    if isinstance(node, dict):
        directive = next((key for key in node if key.startswith("$")), None)
        if directive is not None:
            return _compile_directive(directive, node, key_path, ctx)
        return _compile_mapping(node, key_path, ctx)
    return lambda scope: node


def _compile_mapping(node: dict[str, Any], key_path: KeyPath, ctx: CompileContext) -> Compiled:
    entries = [(key, compile_template(value, (*key_path, key), ctx), value is None)
               for key, value in node.items()]

    def build(scope: Scope) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, fn, keep_null in entries:
            value = fn(scope)
            if value is not None or keep_null:
                out[key] = list(value) if isinstance(value, _Spread) else value
        return out

    return build


def _compile_list(node: list[Any], key_path: KeyPath, ctx: CompileContext) -> Compiled:
    items = [(compile_template(value, (*key_path, index), ctx), value is None)
             for index, value in enumerate(node)]

    def build(scope: Scope) -> list[Any]:
        out: list[Any] = []
        for fn, keep_null in items:
            value = fn(scope)
            if isinstance(value, _Spread):
                out.extend(value)
            elif value is not None or keep_null:
                out.append(value)
        return out

    return build


def _compile_directive(directive: str, node: dict[str, Any], key_path: KeyPath,
                       ctx: CompileContext) -> Compiled:
    if directive not in DIRECTIVE_KEYS:
        hint = difflib.get_close_matches(directive, DIRECTIVES, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else f"; known: {', '.join(DIRECTIVES)}"
        ctx.report(ctx.rule_set.key_position((*key_path, directive)), DiagnosticCode.BAD_DIRECTIVE,
                   f"unknown directive '{directive}'{suggestion}")
        return lambda scope: None
    extra = set(node) - DIRECTIVE_KEYS[directive]
    for key in sorted(extra):
        allowed = ", ".join(sorted(DIRECTIVE_KEYS[directive]))
        ctx.report(ctx.rule_set.key_position((*key_path, key)), DiagnosticCode.BAD_DIRECTIVE,
                   f"'{key}' is not a key of {directive} (allowed: {allowed})")
    builder = _DIRECTIVE_BUILDERS[directive]
    if not extra:
        return builder(node, key_path, ctx)
    # a misspelt key (`ass:` for `as:`) leaves names unbound in the body: those follow from the
    # error above, so they are not reported again
    quiet, ctx.quiet = ctx.quiet, True
    try:
        return builder(node, key_path, ctx)
    finally:
        ctx.quiet = quiet


def _value(node: dict[str, Any], key: str, key_path: KeyPath, ctx: CompileContext) -> Compiled:
    """Compile a directive argument that computes a value: an expression, or a nested template."""
    value = node.get(key)
    if isinstance(value, str) and (is_expression(value) or "{" not in value):
        # a bare expression is allowed where a value is expected: `$each: request.tools`
        return compile_expression(value, (*key_path, key), ctx)
    return compile_template(value, (*key_path, key), ctx)


def _each(node: dict[str, Any], key_path: KeyPath, ctx: CompileContext) -> Compiled:
    source = _value(node, "$each", key_path, ctx)
    name = node.get("as", "item")
    if not isinstance(name, str) or not name.isidentifier():
        ctx.report(ctx.position((*key_path, "as")), DiagnosticCode.BAD_DIRECTIVE,
                   f"$each 'as' must be a variable name, not {name!r}")
        return _fail_at_runtime(ctx.position(key_path))  # its body would only add follow-on errors
    with ctx.bind(name):  # `as` is visible in `do` and `if` only, not in the `$each` value
        body = compile_template(node.get("do", f"{{{{ {name} }}}}"), (*key_path, "do"), ctx)
        condition = _value(node, "if", key_path, ctx) if "if" in node else None

    def build(scope: Scope) -> _Spread:
        out = _Spread()
        items = source(scope)
        if not items:
            return out
        if isinstance(items, dict):
            items = [{"key": k, "value": v} for k, v in items.items()]
        child = dict(scope)
        for item in items:
            child[name] = item
            if condition is not None and not condition(child):
                continue
            value = body(child)
            if isinstance(value, _Spread):
                out.extend(value)
            elif value is not None:
                out.append(value)
        return out

    return build


def _if(node: dict[str, Any], key_path: KeyPath, ctx: CompileContext) -> Compiled:
    test = _value(node, "$if", key_path, ctx)
    then = compile_template(node.get("then"), (*key_path, "then"), ctx)
    otherwise = compile_template(node.get("else"), (*key_path, "else"), ctx)
    return lambda scope: then(scope) if test(scope) else otherwise(scope)


def _switch(node: dict[str, Any], key_path: KeyPath, ctx: CompileContext) -> Compiled:
    subject = _value(node, "$switch", key_path, ctx)
    cases_node = node.get("cases") or {}
    if not isinstance(cases_node, dict):
        ctx.report(ctx.position((*key_path, "cases")), DiagnosticCode.BAD_DIRECTIVE,
                   "$switch 'cases' must be a mapping of value → template")
        cases_node = {}
    cases = {key: compile_template(value, (*key_path, "cases", key), ctx)
             for key, value in cases_node.items()}
    default = compile_template(node.get("default"), (*key_path, "default"), ctx)

    def build(scope: Scope) -> Any:
        value = subject(scope)
        branch = cases.get(value if isinstance(value, str) else _case_key(value), default)
        return branch(scope)

    return build


def _case_key(value: Any) -> str:
    """A non-string subject as the loader spells a YAML key: ``true``, ``false``, ``null``, ``2``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _let(node: dict[str, Any], key_path: KeyPath, ctx: CompileContext) -> Compiled:
    bindings_node = node.get("$let") or {}
    if not isinstance(bindings_node, dict):
        ctx.report(ctx.position((*key_path, "$let")), DiagnosticCode.BAD_DIRECTIVE,
                   "$let must be a mapping of name → value")
        bindings_node = {}
    saved = ctx.scope_names
    bindings: list[tuple[str, Compiled]] = []
    try:
        for name, value in bindings_node.items():  # each binding sees the ones before it
            bindings.append((name, compile_template(value, (*key_path, "$let", name), ctx)))
            ctx.scope_names = ctx.scope_names | {name}
        body = compile_template(node.get("in"), (*key_path, "in"), ctx)
    finally:
        ctx.scope_names = saved

    def build(scope: Scope) -> Any:
        child = dict(scope)
        for name, fn in bindings:
            value = fn(child)
            child[name] = list(value) if isinstance(value, _Spread) else value
        return body(child)

    return build


def _use(node: dict[str, Any], key_path: KeyPath, ctx: CompileContext) -> Compiled:
    name = node.get("$use")
    templates = ctx.rule_set.data.get("templates") or {}
    if not isinstance(name, str) or name not in templates:
        hint = difflib.get_close_matches(str(name), sorted(templates), n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        ctx.report(ctx.position((*key_path, "$use")), DiagnosticCode.UNKNOWN_TEMPLATE,
                   f"unknown template '{name}'{suggestion}")
        return lambda scope: None
    arguments = node.get("with") or {}
    if not isinstance(arguments, dict):
        ctx.report(ctx.position((*key_path, "with")), DiagnosticCode.BAD_DIRECTIVE,
                   "$use 'with' must be a mapping of name → value")
        arguments = {}
    # `with` values are computed in the caller's scope, none seeing another
    bindings = [(arg, compile_template(value, (*key_path, "with", arg), ctx))
                for arg, value in arguments.items()]
    ctx.call_sites.append((name, ctx.rule_set.key_position((*key_path, "$use"))))
    try:
        target = named_template(name, ctx, ctx.scope_names | frozenset(arguments))
    finally:
        ctx.call_sites.pop()

    def build(scope: Scope) -> Any:
        if not bindings:
            return target(scope)
        child = dict(scope)
        for arg, fn in bindings:
            value = fn(scope)
            child[arg] = list(value) if isinstance(value, _Spread) else value
        return target(child)

    return build


def named_template(name: str, ctx: CompileContext, scope: frozenset[str] | None = None) -> Compiled:
    """`templates.<name>`, compiled once; its names checked once per `scope` it is used in.

    A named template sees its call site's scope plus the call's ``with:`` names (that is how it runs:
    ``$use`` hands it the caller's scope), so it is checked with each distinct scope of its call
    sites; a name one of them does not bind is reported in the template, naming that call site.
    `scope` defaults to the current one. Recursion is allowed: the lookup is late-bound.
    """
    scope = ctx.scope_names if scope is None else scope
    key = (name, scope, ctx.quiet)
    if key not in ctx.checked:
        ctx.checked.add(key)  # before compiling: a recursive use with the same scope stops here
        first = name not in ctx.named and name not in ctx.compiling
        saved = ctx.scope_names, ctx.check_only
        ctx.scope_names, ctx.check_only = scope, not first
        if first:
            ctx.compiling.add(name)
        try:
            compiled = compile_template(ctx.rule_set.data["templates"][name], ("templates", name), ctx)
        finally:
            ctx.scope_names, ctx.check_only = saved
        if first:
            ctx.compiling.discard(name)
            ctx.named[name] = compiled
    if name in ctx.named:
        return ctx.named[name]

    def late(scope: Scope) -> Any:  # `name` is still being compiled: look it up when called
        return ctx.named[name](scope)

    return late


def _select(node: dict[str, Any], key_path: KeyPath, ctx: CompileContext) -> Compiled:
    expression = node.get("$select")
    if not isinstance(expression, str):
        ctx.report(ctx.position((*key_path, "$select")), DiagnosticCode.BAD_SELECTOR,
                   "$select needs a JMESPath expression")
        return lambda scope: None
    selector = compile_selector(expression, (*key_path, "$select"), ctx)
    if "from" not in node:
        return selector
    source = _value(node, "from", key_path, ctx)
    return lambda scope: selector(source(scope))


def _merge(node: dict[str, Any], key_path: KeyPath, ctx: CompileContext) -> Compiled:
    parts_node = node.get("$merge")
    if not isinstance(parts_node, list):
        ctx.report(ctx.position((*key_path, "$merge")), DiagnosticCode.BAD_DIRECTIVE,
                   "$merge needs a list of mappings")
        return lambda scope: None
    parts = [compile_template(part, (*key_path, "$merge", i), ctx) for i, part in enumerate(parts_node)]

    def build(scope: Scope) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for fn in parts:
            value = fn(scope)
            if isinstance(value, dict):
                out.update((k, v) for k, v in value.items() if v is not None)
        return out

    return build


def _flatten(node: dict[str, Any], key_path: KeyPath, ctx: CompileContext) -> Compiled:
    inner = compile_template(node.get("$flatten"), (*key_path, "$flatten"), ctx)

    def build(scope: Scope) -> _Spread:
        out = _Spread()
        for value in inner(scope) or ():
            if isinstance(value, list):
                out.extend(value)
            elif value is not None:
                out.append(value)
        return out

    return build


_DIRECTIVE_BUILDERS: dict[str, Callable[[dict[str, Any], KeyPath, CompileContext], Compiled]] = {
    "$each": _each,
    "$if": _if,
    "$switch": _switch,
    "$let": _let,
    "$use": _use,
    "$select": _select,
    "$merge": _merge,
    "$flatten": _flatten,
}

__all__ = [
    "ENVIRONMENT",
    "CompileContext",
    "Compiled",
    "Scope",
    "Selector",
    "bound_names",
    "compile_expression",
    "compile_selector",
    "compile_template",
    "named_template",
]
