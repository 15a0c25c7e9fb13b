"""What part of a notification a rule reads.

A rule set whose rules all read known members of the notification decodes
only those members (the core's `SparseReader`): the broad rule `SELECT
notify_data.header.device_id, event_time` needs four strings of a 650-byte
property report, and decoding all of it into dicts and freeing them again
cost more than the rest of the evaluation. Reads are paths of member names
from the top level; a path is read whole (everything below it). `None`
means "the whole notification": `*` beside other items, FOREACH, or a
function that reads the event in a way not listed here.
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.language import ast
from engine.language.library import FUNCTIONS

Reads = set[tuple[str, ...]]

# What the core's event-reading functions look at (engine/_functions.pxi).
_TAGS = (("notify_data", "header", "tags"), ("notify_data", "body", "tags"))
_SERVICES = (("resource",), ("notify_data", "body", "services"))
FUNCTION_READS: dict[str, tuple[tuple[str, ...], ...]] = {
    "GET_TAG": _TAGS, "CONTAINS_TAG": _TAGS,
    "GET_SERVICE": _SERVICES, "GET_SERVICES": _SERVICES, "CONTAINS_SERVICES": _SERVICES,
    "GET_SERVICE_PROPERTIES": _SERVICES, "GET_SERVICE_PROPERTY": _SERVICES,
}


def _members(steps: tuple[str | int, ...]) -> tuple[str, ...] | None:
    """The leading member names of a path (an index reads its array whole)."""
    out = []
    for s in steps:
        if not isinstance(s, str):
            break
        out.append(s)
    return tuple(out) if out else None


def expr_reads(node: ast.Expr, into: Reads) -> bool:
    """Add what `node` reads to `into`; False when it reads the whole event."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Path):
            m = _members(n.steps)
            if m is None:
                return False
            into.add(m)
            continue
        if isinstance(n, ast.Call):
            fn = FUNCTIONS.get(n.name)
            if fn is None or n.star:
                return False
            if fn.uses_event:
                paths = FUNCTION_READS.get(fn.name)
                if paths is None:
                    return False
                into.update(paths)
        stack.extend(ast.children(n))
    return True


def rule_reads(rule: ast.Rule) -> Reads | None:
    """The member paths `rule` reads, or None for the whole notification.
    `SELECT *` alone reads nothing: its output is the input's bytes."""
    out: Reads = set()
    select = rule.select
    if select.foreach is not None:
        return None
    star = any(i.is_star for i in select.items)
    if star:
        if select.star_root:
            m = _members(select.star_root)
            if m is None:
                return None
            out.add(m)
        elif len(select.items) > 1:
            return None
    for item in select.items:
        if item.expr is not None and not expr_reads(item.expr, out):
            return None
    if rule.where is not None and not expr_reads(rule.where, out):
        return None
    return out


def merge(paths: Iterable[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Paths without those inside another (a path read whole covers the
    members below it), sorted."""
    out: list[tuple[str, ...]] = []
    for p in sorted(set(paths)):
        if out and p[:len(out[-1])] == out[-1]:
            continue
        out.append(p)
    return out
