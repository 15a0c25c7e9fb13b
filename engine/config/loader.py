"""Rule files -> EngineConfig.

`load_config` reads YAML and JSON files, remembers the line of every value,
merges the files, interpolates `${ENV}` references, validates the result
(`engine.config.validate`) and reports every problem as
`file:line: path: message`, the path being relative to the file the value
came from.

It has no side effects (it reads the files and `env`, nothing else), so a
running worker can validate a new configuration before swapping it in.

What a writer cut off leaves is refused rather than read as an intention:
in YAML a rule's `select:` or `where:` with no value (leave the key out to
select the whole notification / match every one), and - for a reload,
`allow_empty=False` - a file with no content at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.config.env import interpolate
from engine.config.errors import ConfigError, Issue, Loc, format_loc
from engine.config.models import LIST_SECTIONS, EngineConfig
from engine.config.secrets import collect_secrets, redact
from engine.config.validate import check


@dataclass
class Document:
    """One parsed file and the line of each value in it (keyed by location).
    A JSON file's lines are found only when a problem needs one (`text`):
    most loads have none, and a 10,000-rule file would spend most of its
    load time on them."""

    name: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    text: str | None = None   # JSON: the source, for lines on demand

    def line_of(self, loc: Loc) -> int | None:
        if self.text is not None:
            _json_lines(self, self.text, [])
            self.text = None
        # The value itself, else the nearest enclosing one (a missing field
        # is reported on the line of the object that lacks it).
        for end in range(len(loc), -1, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return None


def load_config(
    paths: Sequence[str | os.PathLike[str]], env: Mapping[str, str] | None = None, *,
    allow_empty: bool = True,
) -> EngineConfig:
    """Load, merge and validate rule files; raise ConfigError listing every
    problem. `env` defaults to `os.environ`. `allow_empty=False` (a reload):
    a file without content is a problem, not an empty configuration."""
    env = os.environ if env is None else env
    issues: list[Issue] = []
    documents: list[Document] = []
    for path in paths:
        document, read_problems = read_document(Path(path))
        issues += read_problems
        if document is not None:
            documents.append(document)
            if document.data is None and not allow_empty:
                issues.append(Issue(document.name, None, "", EMPTY_FILE))

    merged = _Merged(documents)
    data, env_problems = interpolate(merged.data, env)
    config, problems = check(data)
    for doc, loc, message in merged.problems:
        issues.append(Issue(doc.name, doc.line_of(loc), format_loc(loc), message))
    # A value with a missing variable also fails its model check; that second
    # message ("too short", ...) would only be noise.
    unresolved = {loc for loc, _ in env_problems}
    problems = [(loc, m) for loc, m in problems if loc not in unresolved]
    for loc, message in env_problems + problems:
        issues.append(merged.issue(loc, message, fallback=_name(paths)))

    if issues or config is None:
        secrets = collect_secrets(merged.data) | collect_secrets(data)
        raise ConfigError(Issue(i.file, i.line, i.path, redact(i.message, secrets)) for i in issues)
    return config


def _name(paths: Sequence[str | os.PathLike[str]]) -> str:
    return os.fspath(paths[0]) if paths else "<no files>"


# ------------------------------------------------------------------ reading

EMPTY_FILE = ("the file is empty (still being written, or truncated?); a reload never "
              "applies an empty file - write {} in it to mean \"no settings\"")
# Rule keys whose absence means "everything": with no value they are what a
# file cut off right after the key leaves, not a choice.
NOT_EMPTY_IN_RULES = ("select", "where")


def read_document(path: Path) -> tuple[Document | None, list[Issue]]:
    name = os.fspath(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return None, [Issue(name, None, "", f"cannot read file: {reason}")]
    if path.suffix.lower() == ".json":
        return _parse_json(name, text)
    return _parse_yaml(name, text)


# libyaml when PyYAML has it (same documents, same marks, ~4x faster).
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse_yaml(name: str, text: str) -> tuple[Document | None, list[Issue]]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        return None, [_yaml_issue(name, exc)]
    finally:
        loader.dispose()
    document = Document(name, data)
    issues: list[Issue] = []
    if node is not None:
        _record_lines(document, node, (), issues)
    issues += _keys_without_value(document)
    return document, issues


def _keys_without_value(document: Document) -> list[Issue]:
    rules = document.data.get("rules") if isinstance(document.data, dict) else None
    issues = []
    for i, rule in enumerate(rules if isinstance(rules, list) else ()):
        for key in NOT_EMPTY_IN_RULES:
            if isinstance(rule, dict) and key in rule and rule[key] is None:
                loc = ("rules", i, key)
                issues.append(Issue(document.name, document.line_of(loc), format_loc(loc),
                                    f"{key}: has no value (is the file cut off?); leave the "
                                    f"key out to {_ABSENT[key]}"))
    return issues


_ABSENT = {"select": "forward the whole notification", "where": "match every notification"}


def _parse_json(name: str, text: str) -> tuple[Document | None, list[Issue]]:
    duplicated = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal duplicated
        out = dict(items)
        duplicated = duplicated or len(out) < len(items)
        return out

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        return None, [Issue(name, exc.lineno, "", f"JSON syntax error: {exc.msg}")]
    issues: list[Issue] = []
    if not duplicated:
        return Document(name, data, text=text), issues
    document = Document(name, data)
    _json_lines(document, text, issues)   # they name the duplicate keys
    return document, issues


def _json_lines(document: Document, text: str, issues: list[Issue]) -> None:
    # Lines for JSON, best effort: JSON is (nearly) YAML, so the YAML node
    # tree of the same text gives the positions; if it disagrees, no lines.
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        node = None
    if node is not None:
        _record_lines(document, node, (), issues)


def _yaml_issue(name: str, exc: yaml.YAMLError) -> Issue:
    # Only the problem and its position: PyYAML's str() quotes the source
    # line, which may hold a secret.
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "cannot parse"
    context = getattr(exc, "context", None)
    message = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    return Issue(name, mark.line + 1 if mark else None, "", message)


def _record_lines(document: Document, node: yaml.Node, loc: Loc, issues: list[Issue]) -> None:
    """Record the line of every mapping key and sequence item under `node`,
    and report duplicate keys (PyYAML would silently keep the last one)."""
    if not loc:
        document.lines[()] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue  # merge keys and complex keys: the parent's line is used
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                issues.append(Issue(document.name, line, format_loc(loc), f"duplicate key '{key}'"))
            seen.add(key)
            document.lines[(*loc, key)] = line
            _record_lines(document, value_node, (*loc, key), issues)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            document.lines[(*loc, i)] = item.start_mark.line + 1
            _record_lines(document, item, (*loc, i), issues)


# ------------------------------------------------------------------ merging


class _Merged:
    """Several documents as one tree. List sections (rules, actions, ...)
    are concatenated; any other top-level key may appear in one file only.
    Remembers where each part came from, to report problems against it."""

    def __init__(self, documents: list[Document]) -> None:
        self.documents = documents
        self.data: dict[str, Any] = {}
        self.problems: list[tuple[Document, Loc, str]] = []
        self._items: dict[str, list[tuple[Document, int]]] = {}
        self._sections: dict[str, Document] = {}
        for doc in documents:
            self._add(doc)

    def _add(self, doc: Document) -> None:
        if doc.data is None:  # an empty file
            return
        if not isinstance(doc.data, dict):
            self.problems.append(
                (doc, (), "the top level must be a mapping (rules:, actions:, sources:, ...)")
            )
            return
        for key, value in doc.data.items():
            if key in LIST_SECTIONS:
                if value is None:  # `rules:` with nothing under it
                    continue
                if not isinstance(value, list):
                    self.problems.append((doc, (key,), "must be a list"))
                    continue
                self.data.setdefault(key, []).extend(value)
                self._items.setdefault(key, []).extend((doc, j) for j in range(len(value)))
            elif key in self._sections:
                first = self._sections[key].name
                self.problems.append((doc, (key,), f"already defined in {first}"))
            else:
                self.data[key] = value
                self._sections[key] = doc

    def issue(self, loc: Loc, message: str, fallback: str) -> Issue:
        """An Issue for a location in the merged tree, against its own file."""
        doc, local = self._locate(loc)
        if doc is None:
            return Issue(fallback, None, format_loc(loc), message)
        return Issue(doc.name, doc.line_of(local), format_loc(local), message)

    def _locate(self, loc: Loc) -> tuple[Document | None, Loc]:
        if loc and loc[0] in self._items:
            items = self._items[loc[0]]
            if len(loc) > 1 and isinstance(loc[1], int) and loc[1] < len(items):
                doc, j = items[loc[1]]
                return doc, (loc[0], j, *loc[2:])
            return items[0][0], loc[:1]
        if loc and loc[0] in self._sections:
            return self._sections[loc[0]], loc
        return (self.documents[0] if self.documents else None), loc
