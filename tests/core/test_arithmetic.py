"""Arithmetic edge cases of the compiled core (found by differential testing)."""

import math

import pytest

import engine


@pytest.mark.parametrize("expr, expected", [
    ("a * -5", -0.0),          # the sign of zero survives mixed float/int products
    ("-a", -0.0),
    ("a + -0.0", 0.0),
    ("7 / 2", 3.5),
    ("20 / 4", 5),
    ("big * 10", None),        # beyond the float range: MISSING, so the key is skipped
    ("9223372036854775807 * 9223372036854775807", None),   # integer overflow: MISSING
    ("imax + 1", None),
    ("imin - 1", None),
    ("-imin", None),
    ("imin / -1", None),
    ("imax - 1 + 1", 2**63 - 1),
    ("-imax - 1", -(2**63)),
])
def test_arithmetic(expr, expected):
    out = engine.compile_rule(f"{expr} AS v", None).apply(
        {"a": 0.0, "big": 1.5e308, "imax": 2**63 - 1, "imin": -(2**63)})
    if expected is None:
        assert "v" not in out
        return
    assert out["v"] == expected and type(out["v"]) is type(expected)
    if isinstance(expected, float):
        assert math.copysign(1, out["v"]) == math.copysign(1, expected)
