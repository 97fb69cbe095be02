"""YAML documents with positions: what rule files and the config both need before their own checks.

A document is read with ruamel.yaml and turned into plain Python values (dict, list, str, int, float,
bool, None) so that JMESPath, Jinja and JSON Schema see ordinary types. Positions are not lost: every
value and every key gets a `SourcePosition`, stored in a table keyed by its path in the document
(``("request", "body", "messages", 0)``). A problem found later is reported at the value it is about,
or, when that value is missing, at the nearest value that encloses it (`nearest_position`).

Also here, because both kinds of document need them worded the same way:

* `schema_diagnostics`: every JSON-Schema violation (schemas ship in `schemas/`) as a `Diagnostic` at
  the offending key or value, worded for a person (an unknown key with a suggestion, a bad value with
  an example of a good one);
* `expand_references`: ``${VAR}`` and ``${VAR:-default}`` from the environment, ``$${`` for a literal
  ``${``; `interpolate` applies it to every string of a document and types the plain scalars that held
  a reference the way YAML types plain text (`type_plain`);
* `did_you_mean`: the suggestion appended to an unknown name.
"""

from __future__ import annotations

import datetime
import difflib
import json
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema  # no stubs in the dev environment
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarstring import (
    DoubleQuotedScalarString,
    FoldedScalarString,
    LiteralScalarString,
    SingleQuotedScalarString,
)

from ._errors import Diagnostic, DiagnosticCode
from ._types import KeyPath

SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"



@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where a value starts in its file (1-based). `quote` is 1 when the scalar is quoted, so a column
    inside the scalar's text is ``col + quote + offset``; `block` is set for ``|`` and ``>`` scalars,
    whose text starts on the next line, at column `text_col` (the block's indentation + 1)."""

    path: str
    line: int
    col: int
    quote: int = 0
    block: bool = False
    text_col: int = 0

    @property
    def plain(self) -> bool:
        """Whether the scalar here is written plain (unquoted, not a block), so YAML types its text."""
        return not self.quote and not self.block

    def shifted(self, line_offset: int = 0, col_offset: int = 0) -> SourcePosition:
        """The position of a character inside this scalar: `line_offset` lines down (0 = same line)."""
        if self.block:
            return SourcePosition(self.path, self.line + 1 + line_offset,
                                  (self.text_col or self.col) + col_offset)
        if line_offset:
            return SourcePosition(self.path, self.line + line_offset, 1 + col_offset)
        return SourcePosition(self.path, self.line, self.col + self.quote + col_offset)


Positions = dict[KeyPath, SourcePosition]


def nearest_position(positions: Mapping[KeyPath, SourcePosition], key_path: KeyPath,
                     path: str) -> SourcePosition:
    """The position of the value at `key_path`, or of its nearest ancestor that has one, or the start
    of the file `path` (a value the document lacks is reported where it should have been)."""
    probe = key_path
    while probe:
        found = positions.get(probe)
        if found is not None:
            return found
        probe = probe[:-1]
    return SourcePosition(path, 1, 1)


# -- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wording:
    """How messages name parts of one kind of document. Rule files and the config named these apart
    before they shared this module; each kind keeps the words its users already see."""

    top_level: str = "(top level)"
    """Where an unknown key at the top level is: ``unknown key 'x' in <top_level>``."""
    document: str = "(top level)"
    """What a problem with the whole document is about: ``<document>: 'x' is a required property``."""
    yaml_prefix: str = "invalid YAML: "
    """Put before ruamel's description of a syntax error."""


#: The wording rule files use, and the one to use unless a kind of document has its own.
PLAIN_WORDING = Wording()


class ParsedYaml(NamedTuple):
    """One document as plain data, the positions of its values and keys, and why it could not be read
    (then `data` is None)."""

    data: Any
    positions: Positions
    key_positions: Positions
    diagnostics: list[Diagnostic]


def display_path(path: Path) -> str:
    """A path as users should see it in messages: relative to the working directory when possible."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def read_yaml(path: Path, shown: str | None = None, wording: Wording = PLAIN_WORDING) -> ParsedYaml:
    """Read and parse the YAML file at `path`, shown in messages as `shown` (default: `display_path`).
    A file that cannot be read or parsed gives one diagnostic, never an exception."""
    shown = display_path(path) if shown is None else shown
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return ParsedYaml(None, {}, {}, [Diagnostic(shown, 1, 1, DiagnosticCode.IO, f"cannot read file: {reason}")])
    return parse_yaml(text, shown, wording)


def parse_yaml(text: str, shown: str, wording: Wording = PLAIN_WORDING) -> ParsedYaml:
    """Parse `text` (from the file shown as `shown`) into plain data plus its position tables."""
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True  # the scalar types say how each value was written (positions keep it)
    try:
        node = yaml.load(text)
    except MarkedYAMLError as exc:
        return ParsedYaml(None, {}, {}, [_syntax_diagnostic(exc, shown, wording)])
    except YAMLError as exc:
        message = f"{wording.yaml_prefix}{exc}"
        return ParsedYaml(None, {}, {}, [Diagnostic(shown, 1, 1, DiagnosticCode.YAML_SYNTAX, message)])
    source = _Source(shown, text.split("\n"))
    data = source.plain(node, ())
    return ParsedYaml(data, source.positions, source.key_positions, [])


def _syntax_diagnostic(exc: MarkedYAMLError, shown: str, wording: Wording) -> Diagnostic:
    """ruamel's problem at its mark, and where the construct it interrupts started."""
    mark, context = exc.problem_mark or exc.context_mark, exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    message = str(exc.problem or exc.context or "invalid YAML")
    if exc.problem and exc.context and context is not None:
        message += f" ({exc.context} started at {context.line + 1}:{context.column + 1})"
    return Diagnostic(shown, line, col, DiagnosticCode.YAML_SYNTAX, wording.yaml_prefix + message)


@dataclass(slots=True)
class _Source:
    """One parsed file: its shown path and lines, and the position tables `plain` fills."""

    path: str
    lines: list[str]
    positions: Positions = field(default_factory=dict)
    key_positions: Positions = field(default_factory=dict)

    def plain(self, node: Any, key_path: KeyPath) -> Any:
        """Convert a ruamel node to plain Python values, recording the position of every child."""
        if isinstance(node, CommentedMap):
            out: dict[str, Any] = {}
            for key, value in node.items():
                child = (*key_path, _key_text(key))
                self._record_entry(child, node, key, value)
                out[_key_text(key)] = self.plain(value, child)
            return out
        if isinstance(node, CommentedSeq):
            items: list[Any] = []
            for index, value in enumerate(node):
                child = (*key_path, index)
                line, col = node.lc.item(index)
                self.positions[child] = self.scalar_position(value, line, col)
                items.append(self.plain(value, child))
            return items
        return _plain_scalar(node)

    def _record_entry(self, child: KeyPath, node: CommentedMap, key: Any, value: Any) -> None:
        owner = _owner_of(node, key)
        if owner is None:
            return
        kline, kcol = owner.lc.key(key)
        vline, vcol = owner.lc.value(key)
        self.key_positions[child] = SourcePosition(self.path, kline + 1, kcol + 1)
        self.positions[child] = self.scalar_position(value, vline, vcol)

    def scalar_position(self, value: Any, line: int, col: int) -> SourcePosition:
        """The position of `value` from ruamel's 0-based `line` and `col`."""
        quote = 1 if isinstance(value, DoubleQuotedScalarString | SingleQuotedScalarString) else 0
        if not isinstance(value, LiteralScalarString | FoldedScalarString):
            return SourcePosition(self.path, line + 1, col + 1, quote)
        # ruamel marks the `|` indicator; the text starts on the next line, at the block's
        # indentation, which only the source shows (its first non-blank line)
        text_col = col + 1
        if value.strip():
            first = next((text for text in self.lines[line + 1:] if text.strip()), "")
            text_col = len(first) - len(first.lstrip(" ")) + 1
        return SourcePosition(self.path, line + 1, col + 1, quote, True, text_col)


def _owner_of(node: CommentedMap, key: Any) -> CommentedMap | None:
    """The mapping that holds `key` as written: `node`, or the anchored mapping a ``<<:`` merged it
    from (a merged key has no position in `node`; it stands, with its quotes, at the anchor)."""
    if key in node.lc.data:
        return node
    for item in getattr(node, "merge", ()):
        merged = item[1] if isinstance(item, tuple) else item  # ruamel 0.18 pairs it with an index
        if isinstance(merged, CommentedMap) and key in merged:
            return _owner_of(merged, key)
    return None


def _key_text(key: Any) -> str:
    """A mapping key as a string, spelled as YAML and JSON spell it (``true``, not ``True``)."""
    if isinstance(key, bool):
        return "true" if key else "false"
    return "null" if key is None else str(key)


def _plain_scalar(node: Any) -> Any:
    """A ruamel scalar as its plain Python type (ruamel's str, int and float subclasses carry format)."""
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, datetime.date):  # YAML's timestamp type; schemas and templates want its text
        return node.isoformat()
    return node


_NULL = re.compile(r"~|null|Null|NULL")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")


def type_plain(text: str) -> Any:
    """Type `text` the way YAML 1.2 types a plain scalar: null (also the empty text), bool, int, float
    or str. Used on plain scalars whose text came from the environment."""
    if not text or _NULL.fullmatch(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


# -- environment references ------------------------------------------------------------------------

#: ``$${`` (a literal ``${``), a reference ``${NAME}`` / ``${NAME:-default}``, or a ``${`` that starts
#: no valid reference. The default runs to the first ``}``: references do not nest.
_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")


class Expanded(NamedTuple):
    """`expand_references`' answer: the text, the unset variables that had no default (each became
    ""), and whether some ``${`` started no valid reference (it is kept as written)."""

    text: str
    missing: list[str]
    malformed: bool


def expand_references(text: str, env: Mapping[str, str]) -> Expanded:
    """`text` with ``${NAME}`` and ``${NAME:-default}`` replaced from `env` and ``$${`` made ``${``.

    As with the shell's ``:-``, an empty variable counts as unset, and that holds for plain ``${NAME}``
    too: an empty API key is never what anyone meant. Text that comes from the environment is not
    expanded again.
    """
    if "$" not in text:
        return Expanded(text, [], False)
    missing: list[str] = []
    malformed = False

    def substitute(match: re.Match[str]) -> str:
        nonlocal malformed
        name, default = match.group(1), match.group(2)
        if match.group(0) == "$${":
            return "${"
        if name is None:
            malformed = True
            return match.group(0)
        value = env.get(name)
        if value:
            return value
        if default is not None:
            return default
        missing.append(name)
        return ""

    return Expanded(_REFERENCE.sub(substitute, text), missing, malformed)


@dataclass(slots=True)
class Interpolation:
    """What `interpolate` found: each unset variable without a default and each text holding a
    malformed reference, with the path of its value."""

    missing: list[tuple[KeyPath, str]] = field(default_factory=list)
    malformed: list[tuple[KeyPath, str]] = field(default_factory=list)


def interpolate(data: Any, positions: Mapping[KeyPath, SourcePosition], env: Mapping[str, str],
                found: Interpolation, key_path: KeyPath = ()) -> Any:
    """`data` with `expand_references` applied to every string value (keys are never expanded).

    A plain (unquoted) scalar that held a reference is typed afterwards as YAML types plain text, so
    ``port: ${PORT:-3456}`` is an int and ``api_key: ${KEY:-}`` is null; quote it to keep a string.
    Unset variables and malformed references are added to `found`.
    """
    if isinstance(data, dict):
        return {key: interpolate(value, positions, env, found, (*key_path, key)) for key, value in data.items()}
    if isinstance(data, list):
        return [interpolate(value, positions, env, found, (*key_path, index)) for index, value in enumerate(data)]
    if not isinstance(data, str):
        return data
    expanded = expand_references(data, env)
    found.missing.extend((key_path, name) for name in expanded.missing)
    if expanded.malformed:
        found.malformed.append((key_path, data))
    position = positions.get(key_path)
    if expanded.text != data and position is not None and position.plain:
        return type_plain(expanded.text)
    return expanded.text


# -- schemas ---------------------------------------------------------------------------------------


def schema_path(name: str) -> Path:
    """Where the JSON Schema `name` ships (``schemas/<name>``, inside the package)."""
    return SCHEMAS_DIR / name


@cache
def load_schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped in `schemas/`, parsed once."""
    with schema_path(name).open("rb") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema(name))


def schema_diagnostics(data: Any, schema_name: str, shown_path: str, positions: Positions,
                       key_positions: Positions, *, wording: Wording = PLAIN_WORDING,
                       skip: Collection[KeyPath] = ()) -> list[Diagnostic]:
    """Every violation of the schema `schema_name` in `data`, each at the offending value or key.

    Errors at or under a path in `skip` are left out: the caller knows better what went wrong there
    (the config's value that a missing variable emptied).
    """
    describe = _SchemaWords(shown_path, positions, key_positions, wording, tuple(skip))
    return [diagnostic for error in _validator(schema_name).iter_errors(data)
            for diagnostic in describe(error)]


@dataclass(frozen=True, slots=True)
class _SchemaWords:
    """Words one jsonschema error for the document whose positions it holds."""

    path: str
    positions: Positions
    key_positions: Positions
    wording: Wording
    skip: tuple[KeyPath, ...]

    def __call__(self, error: jsonschema.ValidationError) -> Iterator[Diagnostic]:
        key_path: KeyPath = tuple(error.absolute_path)
        if any(key_path[:len(skipped)] == skipped for skipped in self.skip):
            return
        branch = _matching_branch(error)
        if branch:
            for sub in branch:
                yield from self(sub)
        elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
            yield from self._unknown_keys(error, key_path)
        elif "propertyNames" in error.schema_path:  # the error is about a key, so point at the key
            rule = str(error.schema.get("description", error.message))
            yield self._at(self._key_position((*key_path, str(error.instance))), DiagnosticCode.SCHEMA,
                           f"{self._subject(key_path)}: bad name {error.instance!r}; {rule[0].lower()}{rule[1:]}")
        elif error.validator == "required":
            yield self._at(self._key_position(key_path), DiagnosticCode.SCHEMA,
                           f"{self._subject(key_path)}: {error.message}")
        else:
            yield self._at(self._position(key_path), DiagnosticCode.SCHEMA,
                           f"{self._subject(key_path)}: {_value_problem(error)}")

    def _unknown_keys(self, error: jsonschema.ValidationError, key_path: KeyPath) -> Iterator[Diagnostic]:
        allowed = list(error.schema.get("properties", {}))
        where = dotted(key_path) or self.wording.top_level
        for key in error.instance:
            if key in allowed or _matches_pattern(error.schema, key):
                continue
            yield self._at(self._key_position((*key_path, key)), DiagnosticCode.UNKNOWN_KEY,
                           f"unknown key {key!r} in {where}{did_you_mean(key, allowed)}")

    def _subject(self, key_path: KeyPath) -> str:
        return dotted(key_path) or self.wording.document

    def _position(self, key_path: KeyPath) -> SourcePosition:
        return nearest_position(self.positions, key_path, self.path)

    def _key_position(self, key_path: KeyPath) -> SourcePosition:
        return self.key_positions.get(key_path) or self._position(key_path)

    @staticmethod
    def _at(pos: SourcePosition, code: DiagnosticCode, message: str) -> Diagnostic:
        return Diagnostic(pos.path, pos.line, pos.col, code, message)


def _value_problem(error: jsonschema.ValidationError) -> str:
    """What is wrong with a value, in the schema's own terms where it has them (an example of the
    expected form, a description of the alternatives) rather than a regular expression."""
    examples = error.schema.get("examples") or []
    if error.validator == "pattern" and examples:
        return f"{error.instance!r} does not have the expected form (for example {examples[0]!r})"
    description = error.schema.get("description")
    if error.validator in ("anyOf", "oneOf") and isinstance(description, str) and description:
        expected = description[0].lower() + description[1:].rstrip(".")
        return f"expected {expected}, got {error.instance!r}"
    return str(error.message)


def _matching_branch(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """For an ``anyOf``/``oneOf`` failure, the errors of the one alternative of the value's own type.

    A capability row is "a mapping or null", a route "a target or a list of them"; for a mapping with
    a typo, "matches none of the given schemas" at the row hides what the alternative that applies
    says (which key, which value).
    """
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        return []
    branches: dict[Any, list[jsonschema.ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    applicable = [subs for subs in branches.values()
                  if not any(sub.validator == "type" and not sub.relative_path for sub in subs)]
    return applicable[0] if len(applicable) == 1 else []


def _matches_pattern(schema: dict[str, Any], key: str) -> bool:
    return any(re.search(pattern, key) for pattern in schema.get("patternProperties", {}))


# -- wording ---------------------------------------------------------------------------------------


def dotted(key_path: KeyPath) -> str:
    """A path as messages show it: ``routes.models.claude-*[0]``; the top level is ""."""
    out = ""
    for part in key_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else part
    return out


def did_you_mean(word: str, choices: Collection[str]) -> str:
    """`` (did you mean 'x'?)`` with the choice closest to a mistyped `word`, or "" if none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
