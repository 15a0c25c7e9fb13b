"""Necessary conditions on raw JSON bytes, derived from a WHERE clause.

If an event's bytes contain no backslash, every JSON string in it appears
verbatim between quotes. Then `path = 'X'` can only be TRUE if the bytes
contain `"X"`, `path LIKE 'ab%'` only if they contain `"ab`, and so on; and
`path.level < 10` only if some member `"level":` holds a number below 10
(comparisons never coerce, so only numbers can satisfy it). The core checks
these atoms (memmem; a number parse after each `"level":`) before decoding
and skips valid JSON objects that cannot match. The result is a CNF: a list
of clauses, each a list of atoms of which at least one must hold. Dropping a
clause only weakens the filter, so every size cap below is sound.
"""

from __future__ import annotations

import re

from engine import _core
from engine.language import ast

MAX_CLAUSES = 8
MAX_NEEDLES = 16     # per clause

# An atom is a needle (bytes that must occur) or a _core.NumKey: a member
# with that name must hold a number satisfying a comparison. Numbers have
# many spellings (5, 5.0, 5e0), so they are parsed, not matched as text.
Atom = bytes | _core.NumKey
Clause = frozenset[Atom]

_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "=": "=", "<>": "<>"}
_EXACT = 2 ** 53


def _weight(atom: Atom) -> int:
    """How much an atom rejects: longer needles occur less often."""
    return len(atom) if isinstance(atom, bytes) else len(atom.key)


def derive_prefilter(where: ast.Expr | None, required: list[list[bytes]] = ()) -> list[list[Atom]]:
    """CNF of atoms that every matching event's bytes must satisfy ([] = none)."""
    cnf = [frozenset(c) for c in required if c]
    if where is not None:
        cnf += _cnf(where)
    # Within the cap, needle-only clauses first (a memmem is cheaper than
    # parsing numbers), longest needles first: they reject most.
    cnf = sorted(set(cnf), key=lambda c: (any(isinstance(a, _core.NumKey) for a in c),
                                          -min(_weight(a) for a in c)))[:MAX_CLAUSES]
    return [sorted(c, key=_weight, reverse=True) for c in cnf]


_ESCAPED = re.compile(r'["\\\x00-\x1f]')   # characters JSON always writes escaped


def json_string_needle(s: str, prefix: bytes = b'"', suffix: bytes = b'"') -> bytes | None:
    """The bytes of s inside a JSON document without escapes, or None when s
    cannot appear unescaped (quote, backslash, control characters)."""
    if _ESCAPED.search(s):
        return None
    try:
        return prefix + s.encode("utf-8") + suffix
    except UnicodeEncodeError:   # lone surrogates never occur in valid UTF-8 input
        return None


def _verbatim(node: ast.Expr) -> bool:
    """Expressions whose string value is copied unchanged from the event."""
    return isinstance(node, ast.Path) or (
        isinstance(node, ast.Call) and node.name in ("GET_TAG", "GET_SERVICE_PROPERTY"))


def _num_literal(node: ast.Expr) -> float | None:
    """A numeric constant that is exactly a double, else None."""
    sign = 1
    if isinstance(node, ast.Neg):
        node, sign = node.operand, -1
    if not isinstance(node, ast.Literal) or isinstance(node.value, bool):
        return None
    v = node.value
    if isinstance(v, float) or (isinstance(v, int) and abs(v) <= _EXACT):
        return sign * float(v)
    return None


def _member_key(node: ast.Expr) -> bytes | None:
    """The quoted member name right before the value of `node` in the
    document: a path ending in a member, or GET_SERVICE_PROPERTY's
    property."""
    name = None
    if isinstance(node, ast.Path) and node.steps and isinstance(node.steps[-1], str):
        name = node.steps[-1]
    elif isinstance(node, ast.Call) and node.name == "GET_SERVICE_PROPERTY" and len(node.args) == 2:
        name = _str_literal(node.args[1])
    return json_string_needle(name) if name is not None else None


def _numeric(op: str, left: ast.Expr, right: ast.Expr) -> list[Clause]:
    """`member OP number` (either side): TRUE only for a number value, since
    comparisons never coerce."""
    for val, lit, o in ((left, right, op), (right, left, _FLIPPED[op])):
        c, key = _num_literal(lit), _member_key(val)
        if c is not None and key is not None:
            return [frozenset([_core.NumKey(key, _core.NUMKEY_OPS[o], c)])]
    return []


def _str_literal(node: ast.Expr) -> str | None:
    if isinstance(node, ast.Literal) and isinstance(node.value, str):
        return node.value
    return None


def _one(needle: bytes | None) -> list[Clause]:
    return [frozenset([needle])] if needle is not None else []


def _cnf(node: ast.Expr) -> list[Clause]:
    match node:
        case ast.And(a, b):
            return _cnf(a) + _cnf(b)
        case ast.Or(a, b):
            ca, cb = _cnf(a), _cnf(b)
            if not ca or not cb:
                return []
            out = [x | y for x in ca for y in cb]
            return [c for c in out if len(c) <= MAX_NEEDLES][:MAX_CLAUSES]
        case ast.Compare("=", left, right) if any(_str_literal(x) is not None for x in (left, right)):
            for val, lit in ((left, right), (right, left)):
                s = _str_literal(lit)
                if s is not None and _verbatim(val):
                    return _one(json_string_needle(s))
            return []
        case ast.Compare(op, left, right):
            return _numeric(op, left, right)
        case ast.Between(operand, low, high, False):
            lo, hi, key = _num_literal(low), _num_literal(high), _member_key(operand)
            if lo is None or hi is None or key is None:
                return []
            return [frozenset([_core.NumKey(key, _core.NUMKEY_OPS["BETWEEN"], lo, hi)])]
        case ast.InList(operand, items, False) if _verbatim(operand):
            needles = [json_string_needle(i.value) for i in items
                       if isinstance(i, ast.Literal) and isinstance(i.value, str)]
            if len(needles) == len(items) and all(needles) and len(needles) <= MAX_NEEDLES:
                return [frozenset(needles)]
            return []
        case ast.Like(operand, pattern, False) if _verbatim(operand):
            p = _str_literal(pattern)
            return _like_needles(p) if p is not None else []
        case ast.Call("STARTS_WITH", (val, lit)) if _verbatim(val) and _str_literal(lit):
            return _one(json_string_needle(lit.value, suffix=b""))
        case ast.Call("ENDS_WITH", (val, lit)) if _verbatim(val) and _str_literal(lit):
            return _one(json_string_needle(lit.value, prefix=b""))
        case ast.Call("CONTAINS_TAG", (lit,)) if _str_literal(lit) is not None:
            return _one(json_string_needle(lit.value))
        case ast.Call("CONTAINS_SERVICES", (lit, *fuzzy)) if _str_literal(lit) is not None:
            fz = bool(fuzzy) and fuzzy[0].value is True
            needle = json_string_needle(lit.value, *((b"", b"") if fz else ()))
            return _one(needle) + _one(json_string_needle("device.property"))
    return []


def _like_needles(pattern: str) -> list[Clause]:
    """Each literal run of a LIKE pattern must occur; runs at either end are
    anchored by the string's quotes."""
    out: list[Clause] = []
    runs, run, start = [], [], 0
    for i, ch in enumerate(pattern + "%"):
        if ch in "%_":
            if run:
                runs.append(("".join(run), start, i))
            run = []
            start = i + 1
        else:
            run.append(ch)
    for text, b, e in runs:
        needle = json_string_needle(text, prefix=b'"' if b == 0 else b"",
                                    suffix=b'"' if e == len(pattern) else b"")
        out += _one(needle)
    if not pattern:
        out += _one(b'""')
    return out
