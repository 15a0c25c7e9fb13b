"""Reference interpreter: a slow, simple, obviously-correct walk over the AST.

It exists only as a test oracle for the compiled core (engine/_core.pyx); it
is never used on the forwarding path. Every function below maps one rule of
docs/language.md (the dialect specification, sections 5-9) to a few lines of
plain Python, and favours readability over speed.

Values are JSON values as produced by `json.loads` (dict, list, str, int,
float, bool, None) plus the `MISSING` marker. Truth values are True, False and
None (= UNKNOWN).
"""

from __future__ import annotations

import copy
import re
import sys
from typing import Any

from engine.language import ast
from engine.language.library import FUNCTIONS
from engine.language.values import (  # noqa: F401 - re-exported for the tests
    MISSING,
    UNKNOWN,
    _number_result,
    is_bool,
    is_container,
    is_nullish,
    is_number,
    is_string,
    render,
    resolve,
)

# Depth of the deepest expression a 2500-character clause can hold is about
# 1250 (`- - - … x`, `a+a+…`); each level costs a few Python frames here.
_RECURSION_LIMIT = 20_000


# --------------------------------------------------------------------------
# Truth (5)

def _and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    if a is True and b is True:
        return True
    return UNKNOWN


def _or(a: bool | None, b: bool | None) -> bool | None:
    if a is True or b is True:
        return True
    if a is False and b is False:
        return False
    return UNKNOWN


def _not(a: bool | None) -> bool | None:
    return UNKNOWN if a is UNKNOWN else not a


def _as_value(t: bool | None) -> Any:
    """A truth value used where a value is needed: UNKNOWN becomes MISSING."""
    return MISSING if t is UNKNOWN else t


def truth(expr: ast.Expr, event: dict) -> bool | None:
    """Three-valued truth of an expression: True, False or None (UNKNOWN)."""
    match expr:
        case ast.Not(operand):
            return _not(truth(operand, event))
        case ast.And(left, right):
            return _and(truth(left, event), truth(right, event))
        case ast.Or(left, right):
            return _or(truth(left, event), truth(right, event))
        case ast.Compare(op, left, right):
            return _compare(op, value(left, event), value(right, event))
        case ast.Like(operand, pattern, negated):
            t = _like(value(operand, event), value(pattern, event))
            return _not(t) if negated else t
        case ast.InList(operand, items, negated):
            t = _in(value(operand, event), [value(i, event) for i in items])
            return _not(t) if negated else t
        case ast.Between(operand, low, high, negated):
            x = value(operand, event)
            t = _and(_compare(">=", x, value(low, event)), _compare("<=", x, value(high, event)))
            return _not(t) if negated else t
        case ast.IsNull(operand, negated):
            v = value(operand, event)
            t = v is MISSING or v is None or (type(v) is list and len(v) == 0)
            return (not t) if negated else t
    # Any other expression: a JSON boolean is used as-is, everything else is UNKNOWN.
    v = value(expr, event)
    return v if is_bool(v) else UNKNOWN


def _compare(op: str, a: Any, b: Any) -> bool | None:
    if is_nullish(a) or is_nullish(b):
        return UNKNOWN
    if op in ("=", "<>"):
        if (is_number(a) and is_number(b)) or (is_string(a) and is_string(b)) \
                or (is_bool(a) and is_bool(b)):
            return (a == b) if op == "=" else (a != b)
        return UNKNOWN
    if (is_number(a) and is_number(b)) or (is_string(a) and is_string(b)):
        # Python compares int with float exactly and str by code point.
        return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]
    return UNKNOWN


def _like(s: Any, pattern: Any) -> bool | None:
    if not (is_string(s) and is_string(pattern)):
        return UNKNOWN
    return like_regex(pattern).fullmatch(s) is not None


def like_regex(pattern: str) -> re.Pattern:
    """`%` = any run of characters, `_` = exactly one; no escape character."""
    parts = []
    for ch in pattern:
        if ch == "%":
            parts.append(".*")
        elif ch == "_":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def _in(x: Any, items: list) -> bool | None:
    if is_nullish(x):
        return UNKNOWN
    list_is_strings = is_string(items[0])
    if list_is_strings and not is_string(x):
        return UNKNOWN
    if not list_is_strings and not is_number(x):
        return UNKNOWN
    return any(x == item for item in items)


# --------------------------------------------------------------------------
# Values

def value(expr: ast.Expr, event: dict) -> Any:
    """The JSON value of an expression, or MISSING."""
    match expr:
        case ast.Literal(v):
            return v
        case ast.Path(steps):
            return resolve(event, steps)
        case ast.Neg(operand):
            v = value(operand, event)
            return _number_result(-v) if is_number(v) else MISSING
        case ast.Arith(op, left, right):
            return _arith(op, value(left, event), value(right, event))
        case ast.Concat(left, right):
            a, b = render(value(left, event)), render(value(right, event))
            return MISSING if a is None or b is None else a + b
        case ast.Case(whens, else_):
            for cond, result in whens:
                if truth(cond, event) is True:
                    return value(result, event)
            return MISSING if else_ is None else value(else_, event)
        case ast.Call(name, args):
            return call(name, [value(a, event) for a in args], event)
        case ast.Compare() | ast.Like() | ast.InList() | ast.Between() | ast.IsNull() \
                | ast.Not() | ast.And() | ast.Or():
            return _as_value(truth(expr, event))
    raise TypeError(f"not an expression node: {expr!r}")


def _arith(op: str, a: Any, b: Any) -> Any:
    if not (is_number(a) and is_number(b)):
        return MISSING
    try:
        if op == "+":
            return _number_result(a + b)
        if op == "-":
            return _number_result(a - b)
        if op == "*":
            return _number_result(a * b)
        # "/": an int when both are ints and the division is exact, else a decimal.
        if b == 0:
            return MISSING
        if type(a) is int and type(b) is int and a % b == 0:
            return _number_result(a // b)
        return _number_result(a / b)
    except OverflowError:       # an int too large for a float meets a float
        return MISSING


# --------------------------------------------------------------------------
# Functions (9): each one's reference form is part of its declaration.

def call(name: str, args: list, event: dict) -> Any:
    """Apply built-in function `name` to evaluated arguments."""
    fn = FUNCTIONS.get(name)
    if fn is None:
        raise ValueError(f"unknown function {name}")
    return fn.reference(event, *args) if fn.uses_event else fn.reference(*args)


# --------------------------------------------------------------------------
# The rule (2, 8.5)

def where_holds(rule: ast.Rule, event: dict) -> bool:
    """True when the WHERE clause is TRUE (an empty WHERE always is)."""
    if rule.where is None:
        return True
    return truth(rule.where, event) is True


def build_outputs(each: ast.Foreach, event: dict) -> list:
    """FOREACH: one output per element of the array for which INCASE is TRUE,
    with the element reachable by its alias (shadowing a member so named)."""
    array = value(each.array, event)
    if type(array) is not list:
        return []
    outputs = []
    for element in array:
        env = {**event, each.alias: element} if type(event) is dict else {each.alias: element}
        if each.incase is not None and truth(each.incase, env) is not True:
            continue
        if each.items is not None:
            outputs.append(build_output(ast.Select(each.items, star_root=(each.alias,)), env))
        elif type(element) is dict:
            outputs.append(copy.deepcopy(element))
        else:
            outputs.append({each.alias: copy.deepcopy(element)})
    return outputs


def build_output(select: ast.Select, event: dict) -> Any:
    """The SELECT output object (8.5); FOREACH: the list of outputs."""
    if select.foreach is not None:
        return build_outputs(select.foreach, event)
    out: dict = {}
    whole = resolve(event, select.star_root) if select.star_root else event
    if any(item.is_star for item in select.items) and type(whole) is dict:
        for k, v in whole.items():
            out[k] = copy.deepcopy(v)
    for item in select.items:
        if item.is_star:
            continue
        v = value(item.expr, event)
        if v is not MISSING:
            out[item.key] = copy.deepcopy(v)
    return out


def evaluate(rule: ast.Rule, event: dict) -> Any:
    """WHERE first; if TRUE the SELECT output, else None."""
    old = sys.getrecursionlimit()
    if old < _RECURSION_LIMIT:
        sys.setrecursionlimit(_RECURSION_LIMIT)
    try:
        if not where_holds(rule, event):
            return None
        return build_output(rule.select, event)
    finally:
        if old < _RECURSION_LIMIT:
            sys.setrecursionlimit(old)


def matches(rule: ast.Rule, event: dict) -> bool:
    return evaluate(rule, event) is not None


__all__ = ["MISSING", "UNKNOWN", "call", "evaluate", "like_regex", "matches", "render",
           "resolve", "truth", "value"]
