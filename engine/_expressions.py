"""Jinja expressions compiled straight to Python closures.

Jinja evaluates an expression by building a fresh render context and running a generated template
function, about 3 µs a call before any work is done; a request runs dozens of expressions. Rules use
a small part of the expression language (names, attributes, items, literals, filters, tests,
comparisons, boolean logic, conditionals, ``~``, arithmetic and calls), so `compile_native` turns
that part into nested closures with the same meaning, and returns None for anything else so the
caller keeps Jinja's own evaluation for it. Filters that ask for the render context (Jinja's
``select``, ``map``, ``selectattr``, ...) get one shared empty context: they use it only to reach
the environment, and rule templates define no template-level variables for them to read.

Same meaning means: attribute and item access go through the environment (so ``a.b`` on a dict reads
the key), a missing value is the environment's undefined object, filters and tests receive the
environment or eval context they ask for, and operators are Python's (as in Jinja).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from jinja2 import Environment, nodes
from jinja2.nodes import EvalContext

from ._types import Scope, Selector, Transformer

Native = Transformer

_BINARY: dict[type[nodes.BinExpr], Callable[[Any, Any], Any]] = {
    nodes.Add: operator.add, nodes.Sub: operator.sub, nodes.Mul: operator.mul, nodes.Div: operator.truediv,
    nodes.FloorDiv: operator.floordiv, nodes.Mod: operator.mod, nodes.Pow: operator.pow,
}
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "gteq": operator.ge, "lt": operator.lt,
    "lteq": operator.le, "in": lambda a, b: a in b, "notin": lambda a, b: a not in b,
}


class _Unsupported(Exception):
    """A node this compiler leaves to Jinja."""


def compile_native(expr: nodes.Expr, env: Environment) -> Native | None:
    """A closure computing `expr` from a scope dict, or None when `expr` uses something unsupported."""
    try:
        return _Compiler(env).compile(expr)
    except _Unsupported:
        return None


def compile_native_text(template: nodes.Template, env: Environment) -> Callable[[Scope], str] | None:
    """A closure rendering a text template made only of text and ``{{ expr }}`` parts (no ``{% %}``),
    as Jinja would (each value through the environment's `finalize`, then `str`); None otherwise."""
    if len(template.body) != 1 or not isinstance(template.body[0], nodes.Output):
        return None
    compiler = _Compiler(env)
    finalize = env.finalize or (lambda value: value)
    try:
        parts: list[str | Native] = [node.data if isinstance(node, nodes.TemplateData) else compiler.compile(node)
                                     for node in template.body[0].nodes]
    except _Unsupported:
        return None

    def render(scope: Scope) -> str:
        return "".join([part if isinstance(part, str) else str(finalize(part(scope))) for part in parts])

    return render


class _Compiler:
    def __init__(self, env: Environment) -> None:
        self.env = env
        self.eval_context = EvalContext(env)
        self.static_context = env.context_class(env, {}, None, {})

    def compile(self, node: nodes.Node) -> Native:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise _Unsupported(type(node).__name__)
        compiled: Native = method(node)
        return compiled

    def _Name(self, node: nodes.Name) -> Native:
        name, undefined = node.name, self.env.undefined

        def get(scope: Scope) -> Any:
            value = scope.get(name, _MISSING)
            return undefined(name=name) if value is _MISSING else value

        return get

    def _Const(self, node: nodes.Const) -> Native:
        value = node.value
        return lambda scope: value

    def _Getattr(self, node: nodes.Getattr) -> Native:
        target, attr, getattr_ = self.compile(node.node), node.attr, self.env.getattr
        return lambda scope: getattr_(target(scope), attr)

    def _Getitem(self, node: nodes.Getitem) -> Native:
        target, key, getitem = self.compile(node.node), self.compile(node.arg), self.env.getitem
        return lambda scope: getitem(target(scope), key(scope))

    def _Slice(self, node: nodes.Slice) -> Native:
        parts = [self.compile(part) if part is not None else None
                 for part in (node.start, node.stop, node.step)]
        return lambda scope: slice(*(part(scope) if part else None for part in parts))

    def _List(self, node: nodes.List) -> Native:
        items = [self.compile(item) for item in node.items]
        return lambda scope: [item(scope) for item in items]

    def _Tuple(self, node: nodes.Tuple) -> Native:
        items = [self.compile(item) for item in node.items]
        return lambda scope: tuple(item(scope) for item in items)

    def _Dict(self, node: nodes.Dict) -> Native:
        pairs = [(self.compile(pair.key), self.compile(pair.value)) for pair in node.items]
        return lambda scope: {key(scope): value(scope) for key, value in pairs}

    def _arguments(self, node: nodes.Filter | nodes.Test | nodes.Call) -> tuple[list[Native], list[tuple[str, Native]]]:
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            raise _Unsupported("*args")
        return ([self.compile(arg) for arg in node.args],
                [(str(keyword.key), self.compile(keyword.value)) for keyword in node.kwargs])

    def _apply(self, table: dict[str, Any], node: nodes.Filter | nodes.Test) -> Native:
        if node.node is None or node.name not in table:
            raise _Unsupported(node.name)
        function = table[node.name]
        # set by jinja2.pass_environment / pass_eval_context / pass_context
        passed = getattr(getattr(function, "jinja_pass_arg", None), "name", None)
        first: tuple[Any, ...] = ()
        if passed == "context":
            # the built-in context filters (select, map, ...) use the context only to reach the
            # environment and eval context, never template variables: one empty context serves all
            first = (self.static_context,)
        elif passed == "environment":
            first = (self.env,)
        elif passed == "eval_context":
            first = (self.eval_context,)
        value = self.compile(node.node)
        args, kwargs = self._arguments(node)
        if not args and not kwargs:
            if first:
                return lambda scope: function(*first, value(scope))
            return lambda scope: function(value(scope))
        return lambda scope: function(*first, value(scope), *(arg(scope) for arg in args),
                                      **{key: arg(scope) for key, arg in kwargs})

    def _Filter(self, node: nodes.Filter) -> Native:
        return self._apply(self.env.filters, node)

    def _Test(self, node: nodes.Test) -> Native:
        return self._apply(self.env.tests, node)

    def _Call(self, node: nodes.Call) -> Native:
        function = self.compile(node.node)
        args, kwargs = self._arguments(node)
        return lambda scope: function(scope)(*(arg(scope) for arg in args),
                                             **{key: arg(scope) for key, arg in kwargs})

    def _Compare(self, node: nodes.Compare) -> Native:
        first = self.compile(node.expr)
        steps = []
        for operand in node.ops:
            if operand.op not in _COMPARE:
                raise _Unsupported(operand.op)
            steps.append((_COMPARE[operand.op], self.compile(operand.expr)))
        if len(steps) == 1:
            (compare, other), = steps
            return lambda scope: compare(first(scope), other(scope))

        def chained(scope: Scope) -> bool:
            left = first(scope)
            for compare, other in steps:
                right = other(scope)
                if not compare(left, right):
                    return False
                left = right
            return True

        return chained

    def _And(self, node: nodes.And) -> Native:
        left, right = self.compile(node.left), self.compile(node.right)
        return lambda scope: left(scope) and right(scope)

    def _Or(self, node: nodes.Or) -> Native:
        left, right = self.compile(node.left), self.compile(node.right)
        return lambda scope: left(scope) or right(scope)

    def _Not(self, node: nodes.Not) -> Native:
        inner = self.compile(node.node)
        return lambda scope: not inner(scope)

    def _Neg(self, node: nodes.Neg) -> Native:
        inner = self.compile(node.node)
        return lambda scope: -inner(scope)

    def _Pos(self, node: nodes.Pos) -> Native:
        inner = self.compile(node.node)
        return lambda scope: +inner(scope)

    def _binary(self, node: nodes.BinExpr) -> Native:
        left, right, apply = self.compile(node.left), self.compile(node.right), _BINARY[type(node)]
        return lambda scope: apply(left(scope), right(scope))

    _Add = _Sub = _Mul = _Div = _FloorDiv = _Mod = _Pow = _binary

    def _Concat(self, node: nodes.Concat) -> Native:
        parts = [self.compile(part) for part in node.nodes]
        return lambda scope: "".join([str(part(scope)) for part in parts])

    def _CondExpr(self, node: nodes.CondExpr) -> Native:
        test, then = self.compile(node.test), self.compile(node.expr1)
        otherwise = self.compile(node.expr2) if node.expr2 is not None else None
        undefined = self.env.undefined
        if otherwise is None:
            return lambda scope: then(scope) if test(scope) else undefined()
        return lambda scope: then(scope) if test(scope) else otherwise(scope)


_MISSING = object()


# --- JMESPath ------------------------------------------------------------------------------------




def compile_jmespath(tree: dict[str, Any], functions: Any) -> Selector | None:
    """A closure evaluating a parsed JMESPath `tree` as jmespath's interpreter does, for the node types
    selectors use (fields, indexes, ``||``, ``&&``, ``!``, comparisons, literals, ``@``, pipes,
    multi-select lists and hashes, function calls through `functions`); None when `tree` has any
    other node."""
    try:
        return _JMESPathCompiler(functions).compile(tree)
    except _Unsupported:
        return None


def _is_false(value: Any) -> bool:
    """JMESPath falsiness: null, false, "", [] and {} (0 is true)."""
    return value is None or value is False or value in ("", [], {})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_ordered(value: Any) -> bool:
    return _is_number(value) or isinstance(value, str)


def _equals(left: Any, right: Any) -> bool:
    # JMESPath keeps booleans and numbers apart: 1 == true is false
    if isinstance(left, bool) != isinstance(right, bool) and (_is_number(left) or _is_number(right)):
        return False
    return bool(left == right)


def _string_literal(node: dict[str, Any]) -> str | None:
    """The value of a string literal node (``'x'`` or `` `"x"` ``), else None."""
    value = node.get("value")
    return value if node["type"] == "literal" and isinstance(value, str) else None


_ORDERING: dict[str, Callable[[Any, Any], bool]] = {
    "lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge,
}


class _JMESPathCompiler:
    def __init__(self, functions: Any) -> None:
        self.functions = functions

    def compile(self, node: dict[str, Any]) -> Selector:
        method = getattr(self, f"_{node['type']}", None)
        if method is None:
            raise _Unsupported(node["type"])
        compiled: Selector = method(node)
        return compiled

    def _children(self, node: dict[str, Any]) -> list[Selector]:
        return [self.compile(child) for child in node["children"]]

    def _field(self, node: dict[str, Any]) -> Selector:
        key = node["value"]
        return lambda data: data.get(key) if isinstance(data, dict) else None

    def _current(self, node: dict[str, Any]) -> Selector:
        return lambda data: data

    _identity = _current

    def _literal(self, node: dict[str, Any]) -> Selector:
        value = node["value"]
        return lambda data: value

    def _index(self, node: dict[str, Any]) -> Selector:
        index = node["value"]

        def get(data: Any) -> Any:
            if not isinstance(data, list):
                return None
            try:
                return data[index]
            except IndexError:
                return None

        return get

    def _chain(self, node: dict[str, Any]) -> Selector:
        steps = self._children(node)

        def run(data: Any) -> Any:
            for step in steps:
                data = step(data)
            return data

        return run

    # a.b, a[0] and a | b all feed each step's result to the next (jmespath's visitor does the same)
    _subexpression = _index_expression = _pipe = _chain

    def _multi_select_list(self, node: dict[str, Any]) -> Selector:
        items = self._children(node)
        return lambda data: None if data is None else [item(data) for item in items]

    def _multi_select_dict(self, node: dict[str, Any]) -> Selector:
        # {key: expr, ...}: how a selector gives events of different shapes one shape (a call's id
        # from one stream event and its arguments from another, say)
        pairs = [(pair["value"], self.compile(pair["children"][0])) for pair in node["children"]]
        return lambda data: None if data is None else {key: value(data) for key, value in pairs}

    def _or_expression(self, node: dict[str, Any]) -> Selector:
        left, right = self._children(node)

        def either(data: Any) -> Any:
            value = left(data)
            return right(data) if _is_false(value) else value

        return either

    def _and_expression(self, node: dict[str, Any]) -> Selector:
        left, right = self._children(node)

        def both(data: Any) -> Any:
            value = left(data)
            return value if _is_false(value) else right(data)

        return both

    def _not_expression(self, node: dict[str, Any]) -> Selector:
        (inner,) = self._children(node)

        def negate(data: Any) -> bool:
            value = inner(data)
            if _is_number(value) and value == 0:
                return False  # !0 is false: 0 is true in JMESPath
            return not value

        return negate

    def _comparator(self, node: dict[str, Any]) -> Selector:
        left, right = self._children(node)
        op = node["value"]
        constant = _string_literal(node["children"][1])
        if constant is not None and op in ("eq", "ne"):
            # `type == 'response.output_text.delta'`: a string equals only that string (no number
            # or boolean case to keep apart), and typed streams test one per selector per event
            if op == "eq":
                return lambda data: left(data) == constant
            return lambda data: left(data) != constant
        if op == "eq":
            return lambda data: _equals(left(data), right(data))
        if op == "ne":
            return lambda data: not _equals(left(data), right(data))
        if op not in _ORDERING:
            raise _Unsupported(op)
        compare = _ORDERING[op]

        def ordered(data: Any) -> bool | None:
            a, b = left(data), right(data)
            # as jmespath does: numbers and strings are ordered (a number against a string raises)
            return compare(a, b) if _is_ordered(a) and _is_ordered(b) else None

        return ordered

    def _function_expression(self, node: dict[str, Any]) -> Selector:
        name, args = node["value"], self._children(node)
        call = self.functions.call_function
        return lambda data: call(name, [arg(data) for arg in args])
