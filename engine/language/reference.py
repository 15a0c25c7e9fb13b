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
import math
import re
import sys
from typing import Any

from engine.language import ast


class _Missing:
    """The MISSING marker: a path that does not resolve or a function with no result."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        raise TypeError("MISSING has no truth value; use truth()")


MISSING: Any = _Missing()

UNKNOWN = None

# Depth of the deepest expression a 2500-character clause can hold is about
# 1250 (`- - - … x`, `a+a+…`); each level costs a few Python frames here.
_RECURSION_LIMIT = 20_000


# --------------------------------------------------------------------------
# Value classification (5, 7). bool is a subclass of int in Python: never
# test numbers with isinstance(x, int) alone.

def is_number(v: Any) -> bool:
    return type(v) in (int, float)


def is_string(v: Any) -> bool:
    return type(v) is str


def is_bool(v: Any) -> bool:
    return type(v) is bool


def is_nullish(v: Any) -> bool:
    return v is MISSING or v is None


def is_container(v: Any) -> bool:
    return isinstance(v, (dict, list))


def render(v: Any) -> str | None:
    """Text rendering of a scalar (5.1); None when the value has none."""
    if is_string(v):
        return v
    if is_bool(v):
        return "true" if v else "false"
    if type(v) is int:
        return str(v)
    if type(v) is float:
        return repr(v)      # shortest round-trip text: 2.5, 40.0, 1e+20, 1e-05
    return None             # object, array, null, MISSING


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _number_result(x: int | float) -> Any:
    """Arithmetic results that are not finite numbers or integers beyond the
    signed 64-bit range (overflow) are MISSING."""
    if type(x) is float and not math.isfinite(x):
        return MISSING
    if type(x) is int and not INT64_MIN <= x <= INT64_MAX:
        return MISSING
    return x


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


def resolve(root: Any, steps: tuple[str | int, ...]) -> Any:
    """Walk a path (6): members on objects, indices on arrays, else MISSING."""
    cur = root
    for step in steps:
        if isinstance(step, str):
            if type(cur) is not dict or step not in cur:
                return MISSING
            cur = cur[step]
        else:
            if type(cur) is not list or not 0 <= step < len(cur):
                return MISSING
            cur = cur[step]
    return cur


# --------------------------------------------------------------------------
# Functions (9)

def tags(event: Any) -> list | None:
    """notify_data.header.tags if it is an array, else notify_data.body.tags if
    that is an array, else None."""
    for where in ("header", "body"):
        t = resolve(event, ("notify_data", where, "tags"))
        if type(t) is list:
            return t
    return None


def services(event: Any) -> list | None:
    """notify_data.body.services, only on property reports; None when unusable."""
    if type(event) is not dict or event.get("resource") != "device.property":
        return None
    s = resolve(event, ("notify_data", "body", "services"))
    return s if type(s) is list else []


def _service_matches(service: Any, service_id: str, fuzzy: bool) -> bool:
    if type(service) is not dict or not is_string(service.get("service_id")):
        return False
    sid = service["service_id"]
    return service_id in sid if fuzzy else sid == service_id


def _matching_services(event: Any, service_id: Any, fuzzy: bool) -> list | None:
    """Matching services in array order; None when not a property report or the
    id is not a string (the callers turn that into MISSING / false)."""
    svcs = services(event)
    if svcs is None or not is_string(service_id):
        return None
    return [s for s in svcs if _service_matches(s, service_id, fuzzy)]


def _first_tag(event: Any, key: Any) -> Any:
    if not is_string(key):
        return MISSING
    for tag in tags(event) or []:
        if type(tag) is dict and tag.get("tag_key") == key:
            return tag
    return MISSING


def _text_input(v: Any) -> str | None:
    """REPLACE / SUBSTRING input: a string, or a number rendered as text."""
    if is_string(v) or is_number(v):
        return render(v)
    return None


def _clamp_index(v: Any, length: int) -> int:
    i = math.trunc(v)
    return min(max(i, 0), length)


def call(name: str, args: list, event: dict) -> Any:
    """Apply built-in function `name` (upper case) to evaluated arguments."""
    # The optional second argument of the service functions: the literal true/false.
    fuzzy = name in ("GET_SERVICE", "GET_SERVICES", "CONTAINS_SERVICES") \
        and len(args) > 1 and args[1] is True

    if name == "GET_TAG":
        tag = _first_tag(event, args[0])
        if tag is MISSING or "tag_value" not in tag:
            return MISSING
        return tag["tag_value"]
    if name == "CONTAINS_TAG":
        return _first_tag(event, args[0]) is not MISSING

    if name == "GET_SERVICE":
        found = _matching_services(event, args[0], fuzzy)
        return found[0] if found else MISSING
    if name == "GET_SERVICES":
        found = _matching_services(event, args[0], fuzzy)
        return MISSING if found is None else found
    if name == "CONTAINS_SERVICES":
        return bool(_matching_services(event, args[0], fuzzy))
    if name in ("GET_SERVICE_PROPERTIES", "GET_SERVICE_PROPERTY"):
        found = _matching_services(event, args[0], False)
        if not found:
            return MISSING
        props = found[0].get("properties", MISSING)
        if type(props) is not dict:
            return MISSING
        if name == "GET_SERVICE_PROPERTIES":
            return props
        key = args[1]
        if not is_string(key) or key not in props:
            return MISSING
        return props[key]

    if name in ("STARTS_WITH", "ENDS_WITH"):
        s, affix = args
        if not (is_string(s) and is_string(affix)):
            return MISSING
        return s.startswith(affix) if name == "STARTS_WITH" else s.endswith(affix)
    if name == "CONCAT":
        a, b = render(args[0]), render(args[1])
        return MISSING if a is None or b is None else a + b
    if name == "REPLACE":
        s, target, replacement = _text_input(args[0]), args[1], args[2]
        if s is None or not is_string(target) or not is_string(replacement):
            return MISSING
        if target == "":
            return s
        return s.replace(target, replacement)   # non-overlapping, left to right
    if name == "SUBSTRING":
        s = _text_input(args[0])
        begin = args[1]
        end = args[2] if len(args) > 2 else len(s or "")
        if s is None or not is_number(begin) or not is_number(end):
            return MISSING
        b, e = _clamp_index(begin, len(s)), _clamp_index(end, len(s))
        return s[b:e] if b < e else ""
    if name in ("LOWER", "UPPER"):
        s = args[0]
        if not is_string(s):
            return MISSING
        return s.lower() if name == "LOWER" else s.upper()

    raise ValueError(f"unknown function {name}")


# --------------------------------------------------------------------------
# The rule (2, 8.5)

def where_holds(rule: ast.Rule, event: dict) -> bool:
    """True when the WHERE clause is TRUE (an empty WHERE always is)."""
    if rule.where is None:
        return True
    return truth(rule.where, event) is True


def build_output(select: ast.Select, event: dict) -> dict:
    """The SELECT output object (8.5)."""
    out: dict = {}
    if any(item.is_star for item in select.items) and type(event) is dict:
        for k, v in event.items():
            out[k] = copy.deepcopy(v)
    for item in select.items:
        if item.is_star:
            continue
        v = value(item.expr, event)
        if v is not MISSING:
            out[item.key] = copy.deepcopy(v)
    return out


def evaluate(rule: ast.Rule, event: dict) -> dict | None:
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
