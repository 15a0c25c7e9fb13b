"""Values of the reference interpreter: JSON values plus MISSING, their
classification and text rendering. Shared by the reference interpreter and
the reference forms of the built-in functions (engine/language/library.py).
"""

from __future__ import annotations

import math
from typing import Any


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
