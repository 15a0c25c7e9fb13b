"""Shared helpers of the rule-language tests: strict JSON equality, case files,
and the two implementations under test (the reference interpreter and the
compiled core)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.language import RuleSemanticError, RuleSyntaxError, parse_rule, reference

HERE = Path(__file__).resolve().parent
SHARED = Path(__file__).resolve().parents[2].parent / "shared"
PUBLIC_CASES = SHARED / "conformance" / "public.jsonl"
OWN_CASES = HERE / "cases.jsonl"

ERROR_CLASSES = {"parse": RuleSyntaxError, "semantic": RuleSemanticError}


# ------------------------------------------------------------------ JSON values

def _is_num(v: Any) -> bool:
    return type(v) in (int, float)


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values per spec section 13: key order ignored, 40 == 40.0,
    but booleans are not numbers (true != 1) and containers compare deeply."""
    if type(a) is bool or type(b) is bool:
        return type(a) is bool and type(b) is bool and a == b
    if _is_num(a) or _is_num(b):
        return _is_num(a) and _is_num(b) and a == b
    if a is None or b is None:
        return a is None and b is None
    if type(a) is str or type(b) is str:
        return type(a) is str and type(b) is str and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return False


def is_json_value(v: Any) -> bool:
    """A plain JSON value (no MISSING marker, no tuples, str keys only)."""
    if v is None or type(v) in (bool, int, float, str):
        return True
    if type(v) is list:
        return all(is_json_value(x) for x in v)
    if type(v) is dict:
        return all(type(k) is str and is_json_value(x) for k, x in v.items())
    return False


def container_ids(v: Any, acc: set[int] | None = None) -> set[int]:
    acc = set() if acc is None else acc
    if isinstance(v, (dict, list)):
        acc.add(id(v))
        for x in (v.values() if isinstance(v, dict) else v):
            container_ids(x, acc)
    return acc


def show(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, sort_keys=True)[:2000]


# ------------------------------------------------------------------ case files

def load_cases(path: Path) -> list[dict]:
    cases = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                case = json.loads(line)
                case.setdefault("id", f"line{n}")
                cases.append(case)
    return cases


# ------------------------------------------------------------------ implementations

class ReferenceRule:
    """parse_rule + reference.evaluate, behind the CompiledRule interface."""

    def __init__(self, select: str | None, where: str | None) -> None:
        self.rule = parse_rule(select, where)

    def apply(self, event: dict) -> dict | None:
        return reference.evaluate(self.rule, event)

    def matches(self, event: dict) -> bool:
        return reference.matches(self.rule, event)


def compile_with(impl: str, select: str | None, where: str | None):
    if impl == "reference":
        return ReferenceRule(select, where)
    return engine.compile_rule(select=select, where=where)


COMPILED_READY = hasattr(engine, "compile_rule")

IMPLS = [
    pytest.param("reference", id="reference"),
    pytest.param("compiled", id="compiled",
                 marks=pytest.mark.skipif(not COMPILED_READY, reason="compiled core not built yet")),
]


def check_case(impl: str, case: dict) -> None:
    """Run one corpus case (spec section 13) and assert its expectation."""
    expect = case["expect"]
    select, where = case.get("select"), case.get("where")
    if "error" in expect:
        cls = ERROR_CLASSES[expect["error"]]
        with pytest.raises((RuleSyntaxError, RuleSemanticError)) as info:
            compile_with(impl, select, where)
        assert isinstance(info.value, cls), (
            f"{case['id']}: expected a {expect['error']} error, got {info.value.kind}: "
            f"{info.value}")
        return

    rule = compile_with(impl, select, where)
    event = case["event"]
    before = copy.deepcopy(event)
    out = rule.apply(event)
    assert json_equal(event, before), f"{case['id']}: apply() modified its input"
    if not expect["match"]:
        assert out is None, f"{case['id']}: expected no match, got {show(out)}"
        assert rule.matches(event) is False
        return
    assert out is not None, f"{case['id']}: expected a match, got none"
    assert type(out) is dict and is_json_value(out), f"{case['id']}: not a JSON object: {out!r}"
    assert json_equal(out, expect["output"]), (
        f"{case['id']}:\n  got      {show(out)}\n  expected {show(expect['output'])}")
    assert rule.matches(event) is True
    shared = container_ids(out) & container_ids(event)
    assert not shared, f"{case['id']}: the output aliases objects of the input (8.5.7)"
