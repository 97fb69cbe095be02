"""Rule files: YAML with positions, schema check, and `extends:` merging.

A rule file is read with ruamel.yaml and turned into plain Python values (dict, list, str, int, float,
bool, None) so that JMESPath and Jinja see ordinary types. Positions are not lost: every value and
every key gets a `SourcePosition`, stored in a table keyed by the value's path in the document
(``("request", "body", "messages", 0)``). After merging, the table still says which file each value
came from, so an error in an inherited value points into the parent file.

`extends:` semantics (also in docs/rules.md):

* mappings merge key by key, recursively; the child's value wins;
* any other value (string, number, list) in the child replaces the parent's value whole;
* a key set to ``null`` in the child deletes the parent's key;
* named templates (``templates.<name>``) and directive mappings (a mapping with a ``$`` key) are
  replaced whole, never merged, because half of one template merged into another is not a template.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # no stubs in the dev environment
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.scalarstring import (
    DoubleQuotedScalarString,
    FoldedScalarString,
    LiteralScalarString,
    SingleQuotedScalarString,
)

from ._errors import Diagnostic, DiagnosticCode, RuleError
from ._types import KeyPath

PACKAGE_DIR = Path(__file__).resolve().parent
BUILTIN_RULES_DIR = PACKAGE_DIR / "rules"
SCHEMAS_DIR = PACKAGE_DIR / "schemas"



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

    def shifted(self, line_offset: int = 0, col_offset: int = 0) -> SourcePosition:
        """The position of a character inside this scalar: `line_offset` lines down (0 = same line)."""
        if self.block:
            return SourcePosition(self.path, self.line + 1 + line_offset,
                                  (self.text_col or self.col) + col_offset)
        if line_offset:
            return SourcePosition(self.path, self.line + line_offset, 1 + col_offset)
        return SourcePosition(self.path, self.line, self.col + self.quote + col_offset)


@dataclass(slots=True)
class RuleSet:
    """One provider's rules after `extends:` is resolved: plain data plus positions of every value."""

    name: str
    path: str
    data: dict[str, Any]
    positions: dict[KeyPath, SourcePosition] = field(default_factory=dict)
    key_positions: dict[KeyPath, SourcePosition] = field(default_factory=dict)
    lineage: tuple[str, ...] = ()

    def position(self, key_path: KeyPath) -> SourcePosition:
        """The position of the value at `key_path`, or of its nearest ancestor that has one."""
        probe = key_path
        while probe:
            if probe in self.positions:
                return self.positions[probe]
            probe = probe[:-1]
        return SourcePosition(self.path, 1, 1)

    def key_position(self, key_path: KeyPath) -> SourcePosition:
        return self.key_positions.get(key_path) or self.position(key_path)


@cache
def load_schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped in `schemas/`, parsed once."""
    with (SCHEMAS_DIR / name).open("rb") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    return yaml


@dataclass(slots=True)
class _Source:
    """One parsed file: its shown path and lines, and the position tables `_plain` fills."""

    path: str
    lines: list[str]
    positions: dict[KeyPath, SourcePosition] = field(default_factory=dict)
    key_positions: dict[KeyPath, SourcePosition] = field(default_factory=dict)

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


def _key_text(key: Any) -> str:
    """A mapping key as a string, spelled as YAML and JSON spell it (``true``, not ``True``)."""
    if isinstance(key, bool):
        return "true" if key else "false"
    return "null" if key is None else str(key)


def _plain(node: Any, key_path: KeyPath, source: _Source) -> Any:
    """Convert a ruamel node to plain Python values, recording the position of every child."""
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for key, value in node.items():
            child = (*key_path, _key_text(key))
            kline, kcol = node.lc.key(key)
            vline, vcol = node.lc.value(key)
            source.key_positions[child] = SourcePosition(source.path, kline + 1, kcol + 1)
            source.positions[child] = source.scalar_position(value, vline, vcol)
            out[_key_text(key)] = _plain(value, child, source)
        return out
    if isinstance(node, CommentedSeq):
        items: list[Any] = []
        for index, value in enumerate(node):
            child = (*key_path, index)
            line, col = node.lc.item(index)
            source.positions[child] = source.scalar_position(value, line, col)
            items.append(_plain(value, child, source))
        return items
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


@dataclass(slots=True)
class RuleFile:
    """One rule file as written, before `extends:` is applied."""

    name: str
    path: str
    data: dict[str, Any]
    positions: dict[KeyPath, SourcePosition]
    key_positions: dict[KeyPath, SourcePosition]


def read_yaml(path: Path) -> tuple[Any, dict[KeyPath, SourcePosition], dict[KeyPath, SourcePosition],
                                   list[Diagnostic]]:
    """Parse a YAML file into plain data plus position tables; syntax errors become diagnostics."""
    shown = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return None, {}, {}, [Diagnostic(shown, 1, 1, DiagnosticCode.IO, f"cannot read file: {exc.strerror}")]
    try:
        node = _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = f"invalid YAML: {exc.problem or exc.context}"
        return None, {}, {}, [Diagnostic(shown, line, col, DiagnosticCode.YAML_SYNTAX, message)]
    source = _Source(shown, text.split("\n"))
    data = _plain(node, (), source)
    return data, source.positions, source.key_positions, []


def display_path(path: Path) -> str:
    """A path as users should see it in messages: relative to the working directory when possible."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def schema_diagnostics(data: Any, schema_name: str, shown_path: str,
                       positions: dict[KeyPath, SourcePosition],
                       key_positions: dict[KeyPath, SourcePosition]) -> list[Diagnostic]:
    """Every JSON-Schema violation in `data`, each at the position of the offending value or key."""
    schema = load_schema(schema_name)
    validator = jsonschema.Draft202012Validator(schema)
    diagnostics: list[Diagnostic] = []
    for error in validator.iter_errors(data):
        diagnostics.extend(_describe_schema_error(error, shown_path, positions, key_positions))
    return diagnostics


def _describe_schema_error(error: jsonschema.ValidationError, shown_path: str,
                           positions: dict[KeyPath, SourcePosition],
                           key_positions: dict[KeyPath, SourcePosition]) -> Iterator[Diagnostic]:
    key_path: KeyPath = tuple(error.absolute_path)
    where = ".".join(str(part) for part in key_path) or "(top level)"
    branch = _matching_branch(error)
    if branch:
        for sub in branch:
            yield from _describe_schema_error(sub, shown_path, positions, key_positions)
        return
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        for key in error.instance:
            if key in allowed or _matches_pattern(error.schema, key):
                continue
            pos = key_positions.get((*key_path, key)) or _nearest(positions, key_path, shown_path)
            hint = difflib.get_close_matches(key, allowed, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            yield Diagnostic(pos.path, pos.line, pos.col, DiagnosticCode.UNKNOWN_KEY,
                             f"unknown key '{key}' in {where}{suggestion}")
        return
    pos = _nearest(positions, key_path, shown_path)
    yield Diagnostic(pos.path, pos.line, pos.col, DiagnosticCode.SCHEMA, f"{where}: {error.message}")


def _matching_branch(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """For an ``anyOf``/``oneOf`` failure, the errors of the one alternative of the value's own type.

    A capability row is "a mapping or null"; for a mapping with a typo, "matches none of the given
    schemas" at the row hides what the alternative that applies says (which key, which value).
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


def _nearest(positions: dict[KeyPath, SourcePosition], key_path: KeyPath, shown_path: str) -> SourcePosition:
    probe = key_path
    while probe:
        if probe in positions:
            return positions[probe]
        probe = probe[:-1]
    return SourcePosition(shown_path, 1, 1)


def read_rule_file(path: Path) -> tuple[RuleFile | None, list[Diagnostic]]:
    """Load and schema-check one rule file; the rule set is named after the file's stem."""
    data, positions, key_positions, diagnostics = read_yaml(path)
    if diagnostics:
        return None, diagnostics
    shown = display_path(path)
    if not isinstance(data, dict):
        return None, [Diagnostic(shown, 1, 1, DiagnosticCode.SCHEMA, "a rule file must be a mapping")]
    diagnostics = schema_diagnostics(data, "rule.schema.json", shown, positions, key_positions)
    return RuleFile(path.stem, shown, data, positions, key_positions), diagnostics


def rule_file_paths(paths: Iterable[Path]) -> list[Path]:
    """Expand directories to the `*.yaml`/`*.yml` files in them, sorted; keep files as given."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted([*path.glob("*.yaml"), *path.glob("*.yml")]))
        else:
            found.append(path)
    return found


def load_rules(extra: Iterable[Path] = (), *, include_builtin: bool = True) -> tuple[dict[str, RuleSet],
                                                                                     list[Diagnostic]]:
    """Read the built-in rules plus `extra` files or directories and resolve `extends:`.

    A user file with the same name as a built-in one replaces it; to change a built-in provider a
    little, name the file differently and write ``extends: <builtin>``.
    """
    files: dict[str, RuleFile] = {}
    diagnostics: list[Diagnostic] = []
    sources = [BUILTIN_RULES_DIR] if include_builtin else []
    for path in rule_file_paths([*sources, *extra]):
        rule_file, problems = read_rule_file(path)
        diagnostics.extend(problems)
        if rule_file is not None and not problems:
            files[rule_file.name] = rule_file
    resolved: dict[str, RuleSet] = {}
    for name in files:
        rule_set, problems = _resolve(name, files, resolved, ())
        diagnostics.extend(problems)
        if rule_set is not None:
            resolved[name] = rule_set
    return resolved, _dedupe(diagnostics)


def _dedupe(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[tuple[str, int, int, str]] = set()
    unique = []
    for diagnostic in diagnostics:
        key = (diagnostic.path, diagnostic.line, diagnostic.col, diagnostic.message)
        if key not in seen:
            seen.add(key)
            unique.append(diagnostic)
    return unique


def _resolve(name: str, files: dict[str, RuleFile], done: dict[str, RuleSet],
             chain: tuple[str, ...]) -> tuple[RuleSet | None, list[Diagnostic]]:
    if name in done:
        return done[name], []
    rule_file = files[name]
    parent_name = rule_file.data.get("extends")
    if parent_name is None:
        return RuleSet(name, rule_file.path, rule_file.data, dict(rule_file.positions),
                       dict(rule_file.key_positions), (name,)), []
    pos = rule_file.positions.get(("extends",), SourcePosition(rule_file.path, 1, 1))
    if parent_name == name or parent_name in chain:
        cycle = " -> ".join((*chain, name, parent_name))
        return None, [Diagnostic(pos.path, pos.line, pos.col, DiagnosticCode.BAD_EXTENDS,
                                 f"'extends' makes a cycle: {cycle}")]
    if parent_name not in files:
        hint = difflib.get_close_matches(parent_name, list(files), n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else f"; known: {', '.join(sorted(files))}"
        return None, [Diagnostic(pos.path, pos.line, pos.col, DiagnosticCode.BAD_EXTENDS,
                                 f"'extends' names unknown rules '{parent_name}'{suggestion}")]
    parent, problems = _resolve(parent_name, files, done, (*chain, name))
    if parent is None:
        return None, problems
    child = RuleSet(name, rule_file.path, {}, {}, {}, (name, *parent.lineage))
    data = _merge(parent.data, rule_file.data, (), parent_set=parent, child_file=rule_file, target=child)
    child.data = {k: v for k, v in data.items() if k != "extends"}
    return child, problems


def _is_directive(value: Any) -> bool:
    return isinstance(value, dict) and any(isinstance(k, str) and k.startswith("$") for k in value)


def _copy_positions(source: RuleSet | RuleFile, key_path: KeyPath, target: RuleSet) -> None:
    size = len(key_path)
    for table, target_table in ((source.positions, target.positions),
                                (source.key_positions, target.key_positions)):
        for path, pos in table.items():
            if path[:size] == key_path:
                target_table[path] = pos


def _merge(parent: Any, child: Any, key_path: KeyPath, *, parent_set: RuleSet, child_file: RuleFile,
           target: RuleSet) -> Any:
    """Merge `child` over `parent` per the module docstring, copying positions into `target`."""
    replace_whole = (
        not isinstance(parent, dict) or not isinstance(child, dict)
        or _is_directive(parent) or _is_directive(child)
        or (len(key_path) == 2 and key_path[0] == "templates")
    )
    if replace_whole:
        _copy_positions(child_file, key_path, target)
        return child
    # inherited keys keep their place (an overridden body key does not move to the end); new keys follow
    merged: dict[str, Any] = {}
    for key, value in parent.items():
        sub = (*key_path, key)
        if key not in child:
            merged[key] = value
            _copy_positions(parent_set, sub, target)
        elif child[key] is not None:  # null deletes the inherited key
            merged[key] = _merge(value, child[key], sub, parent_set=parent_set, child_file=child_file,
                                 target=target)
            target.key_positions[sub] = child_file.key_positions[sub]
            target.positions.setdefault(sub, child_file.positions[sub])
    for key, value in child.items():
        if key not in parent:
            merged[key] = value
            _copy_positions(child_file, (*key_path, key), target)
    return merged


def require_rules(extra: Iterable[Path] = ()) -> dict[str, RuleSet]:
    """`load_rules`, raising one `RuleError` with every diagnostic when any is an error."""
    rule_sets, diagnostics = load_rules(extra)
    if any(d.severity == "error" for d in diagnostics):
        raise RuleError(diagnostics)
    return rule_sets
