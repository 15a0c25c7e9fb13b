"""The function library: every declared function, compiled core against the
reference form (hypothesis, differential), on arguments read from the event
and, folded at compile time, written as constants; the documented examples;
and the registry's own consistency."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine import _core
from engine.language import parse_rule, reference
from engine.language.library import FUNCTIONS
from tests.language.test_properties import json_identical, json_value

DIFF = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

LIBRARY = [f for f in FUNCTIONS.declared if isinstance(f.compiled, str)]
PURE = [f for f in LIBRARY if f.fold]

# Argument values that reach the interesting branches of the library.
SPECIAL = st.sampled_from([
    0, 1, -1, 2, 3, -7, 10, 2**63 - 1, -(2**63), 2**53 + 1, 0.0, -0.0, 0.5, 1.5, 2.5, -2.5,
    0.49999999999999994, 1e300, -1e300, 1e-300, 16.0, 3.7, -3.7, 9.3e18, -9.3e18,
    "", " a ", "abc", "a,b,,c", ",", "温度", "Battery", "-12.7", "12", "1e3", "1e400", "007",
    "true", "false", "[0-9]+", "(a)(b)?", "(", "a|", "x*", "%s=%d%%", "%s", "%d", "%x", "%",
    "aGk=", "aGk", "////", "6869", "zz", "686", "{\"a\":1}", "[1,2]", "18446744073709551616",
    "NaN", "2015-12-12T12:12:12.5Z", "20151212T121212Z", "2015-12-12T12:12:12+08:00",
    "2015-02-30T00:00:00Z", "%Y-%m-%d %H:%M:%S", "second", "millisecond", "ms", "s", "leading",
    "trailing", "both", "0", "ab", 1449922332, 1449922332000, 253402300800, 5,
    [], [1, 2, 2.0, 3], ["b", "a", "b"], [1, "x", True], [None], [[1]], {"a": 1}, {}, True,
    False, None])
ARG = st.one_of(SPECIAL, SPECIAL, SPECIAL, json_value)


def _literal(v) -> str | None:
    """Rule text of a constant, or None when the value cannot be written."""
    if v is None:
        return "null"
    if type(v) is bool:
        return "true" if v else "false"
    if type(v) is int:
        return str(v) if -(2**63) <= v < 2**63 else None
    if type(v) is float:
        t = repr(v)
        return t if re.fullmatch(r"-?[0-9]+\.[0-9]+", t) else None
    if type(v) is str:
        if any(ord(c) < 0x20 and c != "\t" or 0x7F <= ord(c) <= 0x9F for c in v):
            return None
        return "'" + v.replace("'", "''") + "'"
    return None


def _arities(f):
    hi = f.max_args if f.max_args is not None else f.min_args + 3
    return range(f.min_args, hi + 1)


def _agree(expr: str, event: dict):
    rule = parse_rule(f"{expr} AS v", None)
    want = reference.evaluate(rule, event)
    got = engine.compile_rule(f"{expr} AS v", None).apply(event)
    ctx = f"\n expr:  {expr}\n event: {event!r}\n core:  {got!r}\n ref:   {want!r}"
    assert json_identical(got, want), ctx
    orjson.dumps(got)   # every output is writable by the sinks


@pytest.mark.parametrize("f", PURE, ids=[f.name for f in PURE])
@DIFF
@given(data=st.data())
def test_function_matches_reference(f, data):
    n = data.draw(st.sampled_from(list(_arities(f))))
    args = [data.draw(ARG) for _ in range(n)]
    absent = [data.draw(st.integers(0, 9)) == 0 for _ in range(n)]
    event = {"data": {f"p{i}": a for i, a in enumerate(args) if not absent[i]}}
    _agree(f"{f.name}({', '.join(f'data.p{i}' for i in range(n))})", event)
    # The same call on constants is folded at compile time by the core.
    texts = [_literal(a) for a in args]
    if None not in texts and n:
        _agree(f"{f.name}({', '.join(texts)})", {})


@pytest.mark.parametrize("f", [f for f in FUNCTIONS.declared if f.examples],
                         ids=[f.name for f in FUNCTIONS.declared if f.examples])
def test_documented_examples(f):
    for ex in f.examples:
        ev = ex.event or {}
        want = {} if ex.result == "MISSING" else {"v": ex.result}
        assert engine.compile_rule(f"{ex.expr} AS v", None).apply(ev) == want, ex.expr
        assert reference.evaluate(parse_rule(f"{ex.expr} AS v", None), ev) == want, ex.expr


def test_every_function_is_documented_and_compiled():
    core = set(_core.library_names())
    doc = (Path(__file__).resolve().parents[2] / "docs" / "language.md").read_text("utf-8")
    for f in FUNCTIONS.declared:
        assert f.signature and f.doc, f.name
        if isinstance(f.compiled, str):
            assert f.compiled in core, f"{f.name}: no compiled form"
    assert FUNCTIONS.markdown() in doc, "docs/language.md: paste FUNCTIONS.markdown() again"
    assert core == {f.compiled for f in LIBRARY}, "core functions without a declaration"


def test_names_are_case_insensitive_with_upper_case_aliases():
    out = engine.compile_rule("ABS(-2) AS a, Sqrt(4) AS b, LENGTH('ab') AS c", None).apply({})
    assert out == {"a": 2, "b": 2.0, "c": 2}


def test_constant_calls_fold_and_event_calls_do_not():
    from engine.language.compiler import compile_expr
    from engine.language.parser import parse_where
    assert type(compile_expr(parse_where("abs(-2)"))) is _core.Const
    assert type(compile_expr(parse_where("abs(a)"))) is _core.LibCall
    assert type(compile_expr(parse_where("now_timestamp()"))) is _core.LibCall
    # Containers are not folded: outputs must not share one object.
    assert type(compile_expr(parse_where("split('a,b', ',')"))) is _core.LibCall


def test_now_timestamp():
    before = int(time.time())
    out = engine.compile_rule("now_timestamp() AS s, now_timestamp('millisecond') AS ms", None
                              ).apply({})
    assert before <= out["s"] <= before + 600
    assert before * 1000 <= out["ms"] <= (before + 600) * 1000


def test_non_deterministic_functions():
    out = engine.compile_rule("rand() AS r, newuuid() AS u, now_rfc3339() AS t, "
                              "now_rfc3339('millisecond') AS tm", None).apply({})
    assert 0 <= out["r"] < 1 and re.fullmatch(r"[0-9a-f-]{36}", out["u"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", out["t"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", out["tm"])
    again = engine.compile_rule("newuuid() AS u", None)
    assert again.apply({})["u"] != again.apply({})["u"]   # not folded


def test_library_never_raises_on_odd_values():
    odd = [float("nan"), math.inf, 2**80, -(2**80), "\ud800", [float("nan")]]
    for f in LIBRARY:
        for v in odd:
            args = [_core.Const(v)] * max(f.min_args, 1 if f.max_args != 0 else 0)
            _core.LibCall(f.compiled, args).eval({})     # MISSING or a value, never raises
