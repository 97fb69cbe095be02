"""A yes/no JSON Schema check for request bodies that raises nothing on valid input.

fastjsonschema raises and catches an exception for every branch of an ``anyOf`` that does not match
and for every ``if`` that does not hold, so a valid Claude Code request (hundreds of content blocks,
each tested against six ``if: {type: const}`` rules) spends most of its check in exception handling:
~11 % of the served proxy's CPU in the first profile. This module compiles a schema into plain
closures that return a bool, and turns the schema's one costly pattern, an ``allOf`` of
``if: {properties: {K: {const: "..."}}}, then: ...`` rules on the same key, into one dict lookup.

It answers only whether a body is valid. Whoever rejects a body still asks jsonschema for the
message (`_validation.RequestValidator` does exactly that), so the error a client sees is unchanged.

Semantics are those of JSON Schema 2020-12 as jsonschema implements them, for the keywords the
request schemas use: type, properties, required, items, minItems, maxItems, minLength, minimum, maximum, enum,
const, anyOf, oneOf, allOf, if/then/else and local ``$ref`` to ``#/$defs/...``. A schema with any other
validation keyword raises `UnsupportedSchemaError` at compile time, never a wrong answer later.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Check", "UnsupportedSchemaError", "compile_check"]

Check = Callable[[Any], bool]
"""True when the instance satisfies the schema the check was compiled from."""

#: Keywords that never affect validity.
_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "default", "examples",
                          "deprecated", "readOnly", "writeOnly", "$defs", "definitions"})
_SUPPORTED = _ANNOTATIONS | {"type", "properties", "required", "items", "minItems", "maxItems", "minLength", "minimum",
                             "maximum", "enum", "const", "anyOf", "oneOf", "allOf", "if", "then", "else", "$ref"}


class UnsupportedSchemaError(ValueError):
    """The schema uses a keyword this compiler does not implement; use a full validator instead."""


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_TYPE_CHECKS: dict[str, Check] = {
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "string": lambda value: isinstance(value, str),
    "boolean": lambda value: isinstance(value, bool),
    "null": lambda value: value is None,
    "integer": _is_integer,
    "number": _is_number,
}


def _json_equal(left: Any, right: Any) -> bool:
    """JSON equality as jsonschema has it: 1 == 1.0, but True is not 1, and containers compare deeply."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left is right
    if _is_number(left) and _is_number(right):
        return bool(left == right) or (math.isnan(left) and math.isnan(right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(_json_equal(a, b) for a, b in zip(left, right, strict=True))
    return type(left) is type(right) and bool(left == right)


def _always(value: Any) -> bool:
    return True


class _Compiler:
    """Compiles one root schema; ``$ref`` targets are compiled once and shared (recursion included)."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self._root = root
        self._refs: dict[str, Check] = {}

    def compile(self, schema: Any) -> Check:
        if schema is True or schema == {}:
            return _always
        if schema is False:
            return lambda value: False
        if not isinstance(schema, Mapping):
            raise UnsupportedSchemaError(f"a schema must be an object or a boolean, got {schema!r}")
        unknown = set(schema) - _SUPPORTED
        if unknown:
            raise UnsupportedSchemaError(f"unsupported keyword(s): {', '.join(sorted(unknown))}")
        checks = [check for check in (
            self._ref(schema), self._type(schema), self._object(schema), self._array(schema),
            self._scalar(schema), self._enum(schema), self._combinators(schema)) if check is not None]
        return _all(checks)

    # -- keywords ------------------------------------------------------------------------------

    def _ref(self, schema: Mapping[str, Any]) -> Check | None:
        ref = schema.get("$ref")
        if ref is None:
            return None
        base, _, pointer = ref.partition("#") if isinstance(ref, str) else ("", "", "")
        if base not in ("", self._root.get("$id")) or not pointer.startswith("/$defs/"):
            raise UnsupportedSchemaError(f"only references into this schema's $defs are supported, got {ref!r}")
        if ref not in self._refs:
            target = self._root.get("$defs", {}).get(pointer.removeprefix("/$defs/"))
            if target is None:
                raise UnsupportedSchemaError(f"unresolvable reference {ref!r}")
            # references met while compiling the target (recursion) go through `forward`
            cell: list[Check] = []

            def forward(value: Any) -> bool:
                return cell[0](value)

            self._refs[ref] = forward
            cell.append(self.compile(target))
            self._refs[ref] = cell[0]
        return self._refs[ref]

    @staticmethod
    def _type(schema: Mapping[str, Any]) -> Check | None:
        kind = schema.get("type")
        if kind is None:
            return None
        kinds = [kind] if isinstance(kind, str) else list(kind)
        unknown = [k for k in kinds if k not in _TYPE_CHECKS]
        if unknown:
            raise UnsupportedSchemaError(f"unknown type(s) {unknown}")
        if len(kinds) == 1:
            return _TYPE_CHECKS[kinds[0]]
        checks = [_TYPE_CHECKS[k] for k in kinds]
        return lambda value: any(check(value) for check in checks)

    def _object(self, schema: Mapping[str, Any]) -> Check | None:
        required = tuple(schema.get("required", ()))
        properties = tuple((name, self.compile(sub)) for name, sub in schema.get("properties", {}).items()
                           if sub is not True and sub != {})
        if not required and not properties:
            return None

        def check(value: Any) -> bool:
            if not isinstance(value, dict):
                return True
            for name in required:
                if name not in value:
                    return False
            for name, sub in properties:  # noqa: SIM110 - a plain loop is faster than all() over a generator
                if name in value and not sub(value[name]):
                    return False
            return True

        return check

    def _array(self, schema: Mapping[str, Any]) -> Check | None:
        min_items, max_items = schema.get("minItems"), schema.get("maxItems")
        items = self.compile(schema["items"]) if "items" in schema else None
        if items is _always:
            items = None
        if min_items is None and max_items is None and items is None:
            return None

        def check(value: Any) -> bool:
            if not isinstance(value, list):
                return True
            if min_items is not None and len(value) < min_items:
                return False
            if max_items is not None and len(value) > max_items:
                return False
            if items is not None:
                for item in value:
                    if not items(item):
                        return False
            return True

        return check

    @staticmethod
    def _scalar(schema: Mapping[str, Any]) -> Check | None:
        min_length, minimum, maximum = schema.get("minLength"), schema.get("minimum"), schema.get("maximum")
        if min_length is None and minimum is None and maximum is None:
            return None

        def check(value: Any) -> bool:
            if isinstance(value, str):
                return min_length is None or len(value) >= min_length
            if _is_number(value):
                return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
            return True

        return check

    @staticmethod
    def _enum(schema: Mapping[str, Any]) -> Check | None:
        checks = [_enum_check([schema["const"]])] if "const" in schema else []
        if "enum" in schema:
            checks.append(_enum_check(list(schema["enum"])))
        return _all(checks) if checks else None

    def _combinators(self, schema: Mapping[str, Any]) -> Check | None:
        checks: list[Check] = []
        if "anyOf" in schema:
            branches = [self.compile(sub) for sub in schema["anyOf"]]
            checks.append(lambda value: any(branch(value) for branch in branches))
        if "oneOf" in schema:
            exclusive = [self.compile(sub) for sub in schema["oneOf"]]
            checks.append(lambda value: sum(1 for branch in exclusive if branch(value)) == 1)
        if "allOf" in schema:
            checks.append(self._all_of(schema["allOf"]))
        if "if" in schema:
            checks.append(self._if_then_else(schema["if"], schema.get("then"), schema.get("else")))
        return _all(checks) if checks else None

    def _all_of(self, subschemas: list[Any]) -> Check:
        dispatch = _discriminator_rules(subschemas)
        if dispatch is None:
            return _all([self.compile(sub) for sub in subschemas])
        key, rules = dispatch
        table = {const: self.compile(then) for const, then in rules}
        every = list(table.values())

        def check(value: Any) -> bool:
            if not isinstance(value, dict):  # every `if` holds vacuously: every `then` applies
                return all(then(value) for then in every)
            if key not in value:  # `properties` holds vacuously: every `then` applies
                return all(then(value) for then in every)
            tag = value[key]
            then = table.get(tag) if isinstance(tag, str) else None
            return then is None or then(value)

        return check

    def _if_then_else(self, condition: Any, then: Any, otherwise: Any) -> Check:
        test = self.compile(condition)
        on_true = self.compile(then) if then is not None else _always
        on_false = self.compile(otherwise) if otherwise is not None else _always
        return lambda value: on_true(value) if test(value) else on_false(value)


def _enum_check(options: list[Any]) -> Check:
    if all(isinstance(option, str) for option in options):
        allowed = frozenset(options)
        return lambda value: isinstance(value, str) and value in allowed
    return lambda value: any(_json_equal(value, option) for option in options)


def _all(checks: list[Check]) -> Check:
    checks = [check for check in checks if check is not _always]
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda value: first(value) and second(value)
    return lambda value: all(check(value) for check in checks)


def _discriminator_rules(subschemas: list[Any]) -> tuple[str, list[tuple[str, Any]]] | None:
    """For ``[{if: {properties: {K: {const: "a"}}}, then: A}, ...]`` (one K, distinct string consts,
    no else): K and [("a", A), ...]; otherwise None."""
    key: str | None = None
    rules: list[tuple[str, Any]] = []
    for sub in subschemas:
        if not isinstance(sub, Mapping) or set(sub) != {"if", "then"}:
            return None
        condition = sub["if"]
        if not isinstance(condition, Mapping) or set(condition) != {"properties"}:
            return None
        properties = condition["properties"]
        if not isinstance(properties, Mapping) or len(properties) != 1:
            return None
        (name, rule), = properties.items()
        if not isinstance(rule, Mapping) or set(rule) != {"const"} or not isinstance(rule["const"], str):
            return None
        if key not in (None, name) or any(const == rule["const"] for const, _ in rules):
            return None
        key = name
        rules.append((rule["const"], sub["then"]))
    return (key, rules) if key is not None else None


def compile_check(schema: Mapping[str, Any]) -> Check:
    """A function telling whether an instance is valid against `schema` (see the module doc)."""
    return _Compiler(schema).compile(schema)
