"""Rule files: reading each one, and `extends:` merging them into rule sets.

A rule file is read by `_yaml` into plain Python values plus the position of every value and key,
and checked against `schemas/rule.schema.json`. The position tables are keyed by each value's path in
the document (``("request", "body", "messages", 0)``); after merging they still say which file each
value came from, so an error in an inherited value points into the parent file.

`extends:` semantics (also in docs/rules.md):

* mappings merge key by key, recursively; the child's value wins;
* any other value (string, number, list) in the child replaces the parent's value whole;
* a key set to ``null`` in the child deletes the parent's key;
* named templates (``templates.<name>``) and directive mappings (a mapping with a ``$`` key) are
  replaced whole, never merged, because half of one template merged into another is not a template.

`imports:` (docs/rules.md, "Shared templates"): a file in a ``common/`` directory next to the rule
files is a template library, holding only ``description`` and ``templates``; it is never a rule set.
A rule set that imports it gets its templates, with their positions in the library, under its own
and inherited ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import Diagnostic, DiagnosticCode, RuleError
from ._types import KeyPath
from ._yaml import (
    Positions,
    SourcePosition,
    did_you_mean,
    display_path,
    load_schema,
    nearest_position,
    read_yaml,
    schema_diagnostics,
)

# KeyPath, SourcePosition and display_path belong to this module's API (RuleSet and the messages
# speak of them); load_schema and read_yaml are re-exported for callers that import them from here
__all__ = [
    "BUILTIN_RULES_DIR",
    "KeyPath",
    "RuleFile",
    "RuleSet",
    "SourcePosition",
    "display_path",
    "load_rules",
    "load_schema",
    "read_rule_file",
    "read_yaml",
    "require_rules",
    "rule_file_paths",
]

BUILTIN_RULES_DIR = Path(__file__).resolve().parent / "rules"

#: Template libraries live in this directory next to the rule files (`rules/common/chat.yaml`).
LIBRARY_DIR = "common"
_LIBRARY_KEYS = ("description", "templates")


@dataclass(slots=True)
class RuleSet:
    """One provider's rules after `extends:` is resolved: plain data plus positions of every value."""

    name: str
    path: str
    data: dict[str, Any]
    positions: Positions = field(default_factory=dict)
    key_positions: Positions = field(default_factory=dict)
    lineage: tuple[str, ...] = ()

    def position(self, key_path: KeyPath) -> SourcePosition:
        """The position of the value at `key_path`, or of its nearest ancestor that has one."""
        return nearest_position(self.positions, key_path, self.path)

    def key_position(self, key_path: KeyPath) -> SourcePosition:
        """The position of the key at `key_path`; for a list item or a missing key, `position`'s."""
        return self.key_positions.get(key_path) or self.position(key_path)


@dataclass(slots=True)
class RuleFile:
    """One rule file as written, before `extends:` is applied."""

    name: str
    path: str
    data: dict[str, Any]
    positions: Positions
    key_positions: Positions


def read_rule_file(path: Path) -> tuple[RuleFile | None, list[Diagnostic]]:
    """Load and schema-check one rule file; the rule set is named after the file's stem."""
    shown = display_path(path)
    data, positions, key_positions, diagnostics = read_yaml(path, shown)
    if diagnostics:
        return None, diagnostics
    if not isinstance(data, dict):
        return None, [Diagnostic(shown, 1, 1, DiagnosticCode.SCHEMA, "a rule file must be a mapping")]
    diagnostics = schema_diagnostics(data, "rule.schema.json", shown, positions, key_positions)
    return RuleFile(path.stem, shown, data, positions, key_positions), diagnostics


def rule_file_paths(paths: Iterable[Path]) -> list[Path]:
    """Expand directories to the `*.yaml`/`*.yml` files in them and in their `common/` template
    libraries, sorted; keep files as given."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            for folder in (path, path / LIBRARY_DIR):
                found.extend(sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]))
        else:
            found.append(path)
    return found


def is_library(path: Path) -> bool:
    """A file in a `common/` directory is a template library: named templates rule sets import."""
    return path.parent.name == LIBRARY_DIR


def load_rules(extra: Iterable[Path] = (), *, include_builtin: bool = True) -> tuple[dict[str, RuleSet],
                                                                                     list[Diagnostic]]:
    """Read the built-in rules plus `extra` files or directories and resolve `extends:`.

    A user file with the same name as a built-in one replaces it; to change a built-in provider a
    little, name the file differently and write ``extends: <builtin>``.
    """
    files: dict[str, RuleFile] = {}
    libraries: dict[str, RuleFile] = {}
    diagnostics: list[Diagnostic] = []
    sources = [BUILTIN_RULES_DIR] if include_builtin else []
    for path in rule_file_paths([*sources, *extra]):
        rule_file, problems = read_rule_file(path)
        diagnostics.extend(problems)
        if rule_file is None or problems:
            continue
        if is_library(path):
            # keys a library cannot have are reported, and its templates still serve its importers
            diagnostics.extend(_library_problems(rule_file))
            libraries[rule_file.name] = rule_file
        else:
            files[rule_file.name] = rule_file
    resolved: dict[str, RuleSet] = {}
    for name in files:
        rule_set, problems = _resolve(name, files, resolved, (), libraries)
        diagnostics.extend(problems)
        if rule_set is not None:
            resolved[name] = rule_set
    return resolved, _dedupe(diagnostics)


def _library_problems(library: RuleFile) -> list[Diagnostic]:
    """A template library holds templates only: it is no provider, and imports nothing itself."""
    problems = []
    for key in library.data:
        if key not in _LIBRARY_KEYS:
            pos = library.key_positions.get((key,)) or SourcePosition(library.path, 1, 1)
            problems.append(Diagnostic(pos.path, pos.line, pos.col, DiagnosticCode.UNKNOWN_KEY,
                                       f"'{key}' does not belong in a template library "
                                       f"(it holds only {' and '.join(_LIBRARY_KEYS)})"))
    return problems


def _import_templates(rule_set: RuleSet, rule_file: RuleFile, libraries: dict[str, RuleFile]) -> list[Diagnostic]:
    """Add the templates of the libraries `rule_file` imports to `rule_set`, with their positions.

    A template the rule set defines, itself or through ``extends``, wins over an imported one (as a
    child's wins over its parent's); between libraries, the first listed wins. Done once per file:
    a child inherits what its parent imported like any other template.
    """
    imports = rule_file.data.get("imports") or []
    data = {key: value for key, value in rule_set.data.items() if key != "imports"}
    templates = dict(data.get("templates") or {})
    problems = []
    for index, name in enumerate(imports):
        library = libraries.get(name)
        if library is None:
            pos = rule_file.positions.get(("imports", index), SourcePosition(rule_file.path, 1, 1))
            suggestion = did_you_mean(name, libraries) or f"; known: {', '.join(sorted(libraries))}"
            problems.append(Diagnostic(pos.path, pos.line, pos.col, DiagnosticCode.BAD_IMPORT,
                                       f"'imports' names unknown template library '{name}'{suggestion}"))
            continue
        for template, body in (library.data.get("templates") or {}).items():
            if template not in templates:
                templates[template] = body
                _copy_positions(library, ("templates", template), rule_set)
    if templates:
        data["templates"] = templates
    rule_set.data = data
    return problems


def _dedupe(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[tuple[str, int, int, str]] = set()
    unique = []
    for diagnostic in diagnostics:
        key = (diagnostic.path, diagnostic.line, diagnostic.col, diagnostic.message)
        if key not in seen:
            seen.add(key)
            unique.append(diagnostic)
    return unique


def _resolve(name: str, files: dict[str, RuleFile], done: dict[str, RuleSet], chain: tuple[str, ...],
             libraries: dict[str, RuleFile]) -> tuple[RuleSet | None, list[Diagnostic]]:
    if name in done:
        return done[name], []
    rule_file = files[name]
    parent_name = rule_file.data.get("extends")
    if parent_name is None:
        rule_set = RuleSet(name, rule_file.path, rule_file.data, dict(rule_file.positions),
                           dict(rule_file.key_positions), (name,))
        return rule_set, _import_templates(rule_set, rule_file, libraries)
    pos = rule_file.positions.get(("extends",), SourcePosition(rule_file.path, 1, 1))
    if parent_name == name or parent_name in chain:
        cycle = " -> ".join((*chain, name, parent_name))
        return None, [Diagnostic(pos.path, pos.line, pos.col, DiagnosticCode.BAD_EXTENDS,
                                 f"'extends' makes a cycle: {cycle}")]
    if parent_name not in files:
        suggestion = did_you_mean(parent_name, files) or f"; known: {', '.join(sorted(files))}"
        return None, [Diagnostic(pos.path, pos.line, pos.col, DiagnosticCode.BAD_EXTENDS,
                                 f"'extends' names unknown rules '{parent_name}'{suggestion}")]
    parent, problems = _resolve(parent_name, files, done, (*chain, name), libraries)
    if parent is None:
        return None, problems
    child = RuleSet(name, rule_file.path, {}, {}, {}, (name, *parent.lineage))
    data = _merge(parent.data, rule_file.data, (), parent_set=parent, child_file=rule_file, target=child)
    child.data = {k: v for k, v in data.items() if k != "extends"}
    return child, problems + _import_templates(child, rule_file, libraries)


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
