"""Why a rule did or did not match one event: the value and type of every
path, function call and condition of its WHERE clause on that event, and
which conjunct made the clause FALSE or UNKNOWN.

This walks the reference interpreter (`engine.language.reference`), not the
compiled core: it is for a person debugging one rule on one event
(`engine eval --explain`, the API's test endpoint with `explain: true`, the
console), never the hot path. The differential tests keep the two
evaluators in agreement, so the trace explains what the core does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.language import ast, reference
from engine.language.checker import check_where
from engine.language.parser import parse_select, parse_where
from engine.language.values import MISSING, is_bool, is_number, is_string

TRUTH = {True: "TRUE", False: "FALSE", None: "UNKNOWN"}


@dataclass
class Node:
    text: str
    value: Any          # JSON value (None when MISSING: see `type`)
    type: str           # MISSING, null, boolean, integer, decimal, string, object, array
    truth: str | None   # for conditions: TRUE, FALSE or UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "value": self.value, "type": self.type}
        if self.truth is not None:
            out["truth"] = self.truth
        return out


@dataclass
class Explanation:
    result: str                                   # TRUE / FALSE / UNKNOWN (the WHERE)
    conjuncts: list[tuple[str, str]] = field(default_factory=list)  # (text, truth)
    decisive: str | None = None                   # the first conjunct that is not TRUE
    nodes: list[Node] = field(default_factory=list)
    subject: str | None = None                    # a subject mismatch, said in words
    foreach: Foreach | None = None                # FOREACH: each element's INCASE

    @property
    def summary(self) -> str:
        if self.subject is not None:
            return self.subject
        if self.result == "TRUE":
            return "WHERE is TRUE: the rule matches"
        assert self.decisive is not None
        truth = dict(self.conjuncts)[self.decisive]
        return f"WHERE is {self.result}: {self.decisive} is {truth}"

    def to_dict(self) -> dict[str, Any]:
        out = {"result": self.result, "summary": self.summary,
               "conjuncts": [{"text": t, "truth": v} for t, v in self.conjuncts],
               "decisive": self.decisive, "nodes": [n.to_dict() for n in self.nodes]}
        if self.foreach is not None:
            out["foreach"] = self.foreach.to_dict()
        return out

    def render(self) -> str:
        """Plain text, one node a line (for `engine eval --explain`)."""
        lines = [self.summary]
        for n in self.nodes:
            if n.truth is not None:
                lines.append(f"  {n.text}  -> {n.truth}")
            else:
                shown = "MISSING" if n.type == "MISSING" else _json(n.value)
                lines.append(f"  {n.text} = {shown} ({n.type})")
        if self.foreach is not None:
            lines.extend(self.foreach.render())
        return "\n".join(lines)


@dataclass
class Foreach:
    """FOREACH on one event: the array, and per element (the first
    `MAX_ELEMENTS`) whether INCASE kept it and why."""

    text: str                                     # the array expression
    count: int | None                             # elements; None: not an array
    elements: list[Explanation] = field(default_factory=list)

    @property
    def summary(self) -> str:
        if self.count is None:
            return f"FOREACH {self.text}: not an array, no output"
        kept = sum(e.result == "TRUE" for e in self.elements)
        more = f" (the first {len(self.elements)} shown)" if len(self.elements) < self.count \
            else ""
        return (f"FOREACH {self.text}: {self.count} element{'s' if self.count != 1 else ''}, "
                f"{kept} kept by INCASE{more}")

    def to_dict(self) -> dict[str, Any]:
        return {"array": self.text, "count": self.count, "summary": self.summary,
                "elements": [e.to_dict() for e in self.elements]}

    def render(self) -> list[str]:
        lines = [self.summary]
        for i, e in enumerate(self.elements):
            head = "INCASE is TRUE: kept" if e.result == "TRUE" else \
                e.summary.replace("WHERE", "INCASE", 1)
            lines.append(f"  [{i}] {head}")
            lines.extend("    " + line for line in e.render().splitlines()[1:])
        return lines


MAX_ELEMENTS = 20


def type_name(v: Any) -> str:
    if v is MISSING:
        return "MISSING"
    if v is None:
        return "null"
    if is_bool(v):
        return "boolean"
    if is_number(v):
        return "integer" if isinstance(v, int) else "decimal"
    if is_string(v):
        return "string"
    return "object" if isinstance(v, dict) else "array"


def explain_where(where: str | None, event: dict[str, Any],
                  subject: tuple[str, str] | None = None,
                  select: str | None = None) -> Explanation:
    """Explain WHERE `where` on `event`; `subject` (resource, event): the
    rule's, checked first as the engine does; `select`: a FOREACH in it is
    explained element by element when WHERE holds. Raises RuleError like
    compiling."""
    tree = parse_where(where)
    check_where(tree, where or "")
    if subject is not None:
        got = (event.get("resource"), event.get("event"))
        if got != subject:
            return Explanation("FALSE", subject=(
                f"subject mismatch: the rule is for {subject[0]}/{subject[1]}, the event is "
                f"{got[0]}/{got[1]}; WHERE is not evaluated"))
    trace = _trace(tree, event)
    if trace.result == "TRUE" and select is not None:
        each = parse_select(select).foreach
        if each is not None:
            trace.foreach = _foreach(each, event)
    return trace


def _trace(tree: ast.Expr | None, event: dict[str, Any]) -> Explanation:
    if tree is None:
        return Explanation("TRUE")
    walker = _Walker(event)
    conjuncts = _conjuncts(tree)
    verdicts = [(text(c), TRUTH[walker.truth(c)]) for c in conjuncts]
    result = TRUTH[reference.truth(tree, event)]
    decisive = next((t for t, v in verdicts if v != "TRUE"), None)
    if result != "TRUE" and decisive is None:  # e.g. an OR at the top: the whole clause
        decisive = text(tree)
        verdicts = [(decisive, result)]
    return Explanation(result, verdicts, decisive if result != "TRUE" else None, walker.nodes)


def _foreach(each: ast.Foreach, event: dict[str, Any]) -> Foreach:
    array = reference.value(each.array, event)
    if not isinstance(array, list):
        return Foreach(text(each.array), None)
    # As the engine evaluates it: the event's top level with the element bound.
    return Foreach(text(each.array), len(array),
                   [_trace(each.incase, {**event, each.alias: el})
                    for el in array[:MAX_ELEMENTS]])


def _conjuncts(expr: ast.Expr) -> list[ast.Expr]:
    if isinstance(expr, ast.And):
        return _conjuncts(expr.left) + _conjuncts(expr.right)
    return [expr]


_CONDITIONS = (ast.Compare, ast.Like, ast.InList, ast.Between, ast.IsNull, ast.Not, ast.And,
               ast.Or)


class _Walker:
    """Records each path, call and condition once, children first."""

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        self.nodes: list[Node] = []
        self._seen: set[str] = set()

    def _record(self, expr: ast.Expr, value: Any, truth: bool | None | str = "n/a") -> None:
        key = text(expr)
        if key in self._seen:
            return
        self._seen.add(key)
        shown = None if value is MISSING else value
        self.nodes.append(Node(key, shown, type_name(value),
                               None if truth == "n/a" else TRUTH[truth]))  # type: ignore[index]

    def truth(self, expr: ast.Expr) -> bool | None:
        for child in _children(expr):
            self.visit(child)
        t = reference.truth(expr, self.event)
        self._record(expr, reference.value(expr, self.event), t)
        return t

    def visit(self, expr: ast.Expr) -> None:
        if isinstance(expr, _CONDITIONS):
            self.truth(expr)
            return
        for child in _children(expr):
            self.visit(child)
        if isinstance(expr, ast.Path | ast.Call):
            self._record(expr, reference.value(expr, self.event))


def _children(expr: ast.Expr) -> list[ast.Expr]:
    match expr:
        case ast.Not(operand) | ast.Neg(operand):
            return [operand]
        case ast.And(left, right) | ast.Or(left, right) | ast.Compare(_, left, right) \
                | ast.Arith(_, left, right) | ast.Concat(left, right):
            return [left, right]
        case ast.Like(operand, pattern, _):
            return [operand, pattern]
        case ast.InList(operand, _, _) | ast.IsNull(operand, _):
            return [operand]
        case ast.Between(operand, low, high, _):
            return [operand, low, high]
        case ast.Call(_, args):
            return list(args)
        case ast.Case(whens, else_):
            out = [part for pair in whens for part in pair]
            return out + ([else_] if else_ is not None else [])
    return []


# ------------------------------------------------------------------ text of a node


def text(expr: ast.Expr) -> str:
    """The node as rule text (normalised: one space around operators)."""
    match expr:
        case ast.Literal(v):
            return _literal(v)
        case ast.Path(steps):
            out = ""
            for step in steps:
                out += f"[{step}]" if isinstance(step, int) else (
                    ("." if out else "") + (step if step.isidentifier() else f'"{step}"'))
            return out
        case ast.Neg(operand):
            return f"-{text(operand)}"
        case ast.Arith(op, left, right):
            return f"({text(left)} {op} {text(right)})"
        case ast.Concat(left, right):
            return f"({text(left)} || {text(right)})"
        case ast.Compare(op, left, right):
            return f"{text(left)} {op} {text(right)}"
        case ast.Like(operand, pattern, negated):
            return f"{text(operand)} {'NOT LIKE' if negated else 'LIKE'} {text(pattern)}"
        case ast.InList(operand, items, negated):
            inner = ", ".join(text(i) for i in items)
            return f"{text(operand)} {'NOT IN' if negated else 'IN'} ({inner})"
        case ast.Between(operand, low, high, negated):
            word = "NOT BETWEEN" if negated else "BETWEEN"
            return f"{text(operand)} {word} {text(low)} AND {text(high)}"
        case ast.IsNull(operand, negated):
            return f"{text(operand)} IS {'NOT NULL' if negated else 'NULL'}"
        case ast.Not(operand):
            return f"NOT ({text(operand)})"
        case ast.And(left, right):
            return f"({text(left)} AND {text(right)})"
        case ast.Or(left, right):
            return f"({text(left)} OR {text(right)})"
        case ast.Call(name, args):
            return f"{name}({', '.join(text(a) for a in args)})"
        case ast.Case(whens, else_):
            parts = " ".join(f"WHEN {text(c)} THEN {text(v)}" for c, v in whens)
            tail = f" ELSE {text(else_)}" if else_ is not None else ""
            return f"CASE {parts}{tail} END"
    return repr(expr)


def _literal(v: Any) -> str:
    if v is None:
        return "NULL"
    if v is True or v is False:
        return "TRUE" if v else "FALSE"
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return repr(v)


def _json(v: Any) -> str:
    import orjson
    try:
        return orjson.dumps(v).decode()
    except TypeError:
        return repr(v)
