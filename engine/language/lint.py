"""Warnings about rules that compile but probably do not do what was meant.

A rule that never matches is silent at run time; these checks say why it
might not, before it runs (`engine check`, the API's test endpoint, the
console). They are warnings, never errors: each can be what the author
wants. The notification shapes come from the simulator's notifications
(engine.sources.fleet), which follow docs/notifications.md.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Any

from engine.language import ast
from engine.language.explain import text, type_name
from engine.language.parser import parse_select, parse_where
from engine.language.values import resolve

TOP_LEVEL = ("resource", "event", "event_time", "event_time_ms", "request_id", "notify_data")
SERVICE_FUNCTIONS = frozenset({"GET_SERVICE", "GET_SERVICES", "GET_SERVICE_PROPERTIES",
                               "GET_SERVICE_PROPERTY", "CONTAINS_SERVICES"})
PROPERTY_REPORT = ("device.property", "report")


@dataclass(frozen=True)
class Warning_:
    clause: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"clause": self.clause, "message": self.message}

    def __str__(self) -> str:
        return f"{self.clause}: {self.message}"


@functools.cache
def _samples(kind: tuple[str, str]) -> tuple[dict[str, Any], ...]:
    from engine.sources.fleet import KINDS, Fleet

    if kind not in KINDS:
        return ()
    fleet = Fleet(seed=7, devices=20, kinds=[kind])
    return tuple(fleet.notification(1.7e9 + i) for i in range(20))


def _known(kind: tuple[str, str], steps: tuple[str | int, ...]) -> tuple[bool, list[str]]:
    """Whether a notification of `kind` can have `steps` (as far as the
    samples show: only `notify_data.header|body.<name>` is judged), and the
    names that exist at the level that failed."""
    if len(steps) < 3 or steps[0] != "notify_data" or not isinstance(steps[2], str):
        return True, []
    level = steps[:2]
    names: set[str] = set()
    present = False
    for sample in _samples(kind):
        node = resolve(sample, level)
        if isinstance(node, dict):
            present = True
            names.update(node)
    if not _samples(kind):
        return True, []
    if not present:
        return False, []
    return steps[2] in names, sorted(names)


def lint(select: str | None, where: str | None,
         subject: tuple[str, str] | None = None) -> list[Warning_]:
    """Warnings for a rule that compiles (call after compiling succeeded)."""
    out: list[Warning_] = []
    each = parse_select(select).foreach
    # Inside FOREACH, paths from the element's name read the element.
    bound = frozenset({each.alias}) if each is not None else frozenset()
    for clause, tree in (("select", _select_exprs(select)), ("where", _where_exprs(where))):
        for expr in tree:
            _walk(expr, clause, subject, out, bound if clause == "select" else frozenset())
    seen: set[tuple[str, str]] = set()
    unique = []
    for w in out:
        if (w.clause, w.message) not in seen:
            seen.add((w.clause, w.message))
            unique.append(w)
    return unique


def _select_exprs(select: str | None) -> list[ast.Expr]:
    tree = parse_select(select)
    if tree.foreach is not None:
        each = tree.foreach
        exprs = [each.array, *(i.expr for i in each.items or () if i.expr is not None)]
        return exprs + ([each.incase] if each.incase is not None else [])
    return [item.expr for item in tree.items if item.expr is not None]


def _where_exprs(where: str | None) -> list[ast.Expr]:
    tree = parse_where(where)
    return [] if tree is None else [tree]


def _walk(expr: ast.Expr, clause: str, subject: tuple[str, str] | None,
          out: list[Warning_], bound: frozenset[str] = frozenset()) -> None:
    from engine.language.explain import _children

    if isinstance(expr, ast.Path) and not (expr.steps and expr.steps[0] in bound):
        _path(expr, clause, subject, out)
    if isinstance(expr, ast.Call) and expr.name in SERVICE_FUNCTIONS and subject is not None \
            and subject != PROPERTY_REPORT:
        out.append(Warning_(clause, f"{expr.name} reads the services of a property report; "
                            f"on {subject[0]}/{subject[1]} notifications it is always MISSING"))
    if isinstance(expr, ast.Compare):
        _compare(expr, clause, subject, out)
    for child in _children(expr):
        _walk(child, clause, subject, out, bound)


def _path(expr: ast.Path, clause: str, subject: tuple[str, str] | None,
          out: list[Warning_]) -> None:
    first = expr.steps[0]
    if isinstance(first, str) and first not in TOP_LEVEL:
        hint = difflib.get_close_matches(first, TOP_LEVEL, n=1)
        if len(expr.steps) == 1:
            out.append(Warning_(clause, f'"{first}" is a name (a path) no notification has: '
                                f"always MISSING. Text is written in single quotes "
                                f"('{first}'); a field by its full path (e.g. "
                                f"notify_data.body.{first})"))
        else:
            more = f" (did you mean {hint[0]}?)" if hint else ""
            out.append(Warning_(clause, f"{text(expr)}: a notification has no top-level "
                                f"{first!r}{more}; it is always MISSING"))
        return
    if subject is None:
        return
    ok, names = _known(subject, expr.steps)
    if not ok:
        part = f"notify_data.{expr.steps[1]}"
        if not names:
            message = f"{subject[0]}/{subject[1]} notifications have no {part}"
        else:
            hint = difflib.get_close_matches(str(expr.steps[2]), names, n=1)
            message = (f"{text(expr)}: {subject[0]}/{subject[1]} notifications have no "
                       f"{expr.steps[2]!r} in {part}"
                       + (f" (did you mean {hint[0]}?)" if hint else
                          f" (they have: {', '.join(names)})"))
        out.append(Warning_(clause, message + "; it is always MISSING"))


def _compare(expr: ast.Compare, clause: str, subject: tuple[str, str] | None,
             out: list[Warning_]) -> None:
    left, right = expr.left, expr.right
    if isinstance(left, ast.Literal) and isinstance(right, ast.Literal):
        out.append(Warning_(clause, f"{text(expr)} compares two constants: always the same "
                            "result"))
        return
    if left == right:
        out.append(Warning_(clause, f"{text(expr)} compares an expression with itself"))
        return
    if subject is None:
        return
    for path, constant in ((left, right), (right, left)):
        if not (isinstance(path, ast.Path) and isinstance(constant, ast.Literal)) \
                or constant.value is None:
            continue
        types = {type_name(resolve(s, path.steps)) for s in _samples(subject)} - {"MISSING",
                                                                                  "null"}
        want = type_name(constant.value)
        numeric = {"integer", "decimal"}
        if len(types) == 1 and not ({want} | types) <= numeric and want not in types:
            (have,) = types
            out.append(Warning_(clause, f"{text(expr)}: {text(path)} is {_a(have)} in "
                                f"{subject[0]}/{subject[1]} notifications, compared with "
                                f"{_a(want)}: that comparison is always UNKNOWN"))


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word

