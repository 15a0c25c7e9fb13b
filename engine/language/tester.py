"""The rule tester: evaluate one rule on one sample event.

Used by `engine eval` (the command-line rule debugger) and by the API's
test endpoints. Results are plain data so each front end renders its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from engine import _core
from engine.language.compiler import compile_rule
from engine.language.errors import RuleError


@dataclass(frozen=True, slots=True)
class TestResult:
    matched: bool
    output: dict[str, Any] | None = None     # when matched
    error: RuleError | None = None           # when the rule does not compile
    event_error: str | None = None           # when the event is not a JSON object


def test_rule(select: str | None, where: str | None, event: dict | bytes | str,
              dialect: str = "iotda") -> TestResult:
    try:
        rule = compile_rule(select, where, dialect)
    except RuleError as e:
        return TestResult(False, error=e)
    if not isinstance(event, dict):
        decoded = _core.decode_event(event)
        if isinstance(decoded, _core.MalformedEvent):
            return TestResult(False, event_error=decoded.reason)
        event = decoded
    out = rule.apply(event)
    return TestResult(out is not None, output=out)


test_rule.__test__ = False   # not a pytest test, despite the name
TestResult.__test__ = False


def render_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
