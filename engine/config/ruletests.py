"""Rule tests: the `tests:` section of rule files (`engine test`, `engine check`).

Each test gives one notification (`input`) or several (`inputs`) and, per
named rule, what the rule must make of each: exactly an `output`, an output
that `contains` some members (recursively: nested objects are compared
member by member too), or `no_match`; for a FOREACH rule `output` and
`contains` are lists, one item per output, in order. The rule runs as the
worker runs it: `Rule.spec()` (its subject, app scope, dialect and topic,
the spec engine.runtime.assembly compiles) through a compiled rule set, so
a test that passes here behaves the same in `engine run`. `engine eval
--rules` evaluates a file's rule through the same `rule_evaluator`.
Inactive rules are tested too (activating one later should not surprise
anyone).

Vector's unit tests for transforms are the model.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from engine.config.models import EngineConfig, Expectation, Rule, RuleTest
from engine.language import compile_ruleset

Evaluator = Callable[[dict[str, Any]], Any]


def rule_evaluator(rule: Rule) -> Evaluator:
    """A function giving what the worker makes of a notification with `rule`:
    its output (for a FOREACH rule, the list of outputs) or None when the
    rule does not match. The notification is not changed."""
    ruleset = compile_ruleset([rule.spec()])

    def evaluate(notification: dict[str, Any]) -> Any:
        matches = ruleset.evaluate(notification)   # copies its outputs
        return matches[0][1] if matches else None

    return evaluate


def scope_mismatch(rule: Rule, event: dict[str, Any]) -> str:
    """Why a rule whose subject and WHERE hold did not match: its app scope
    or topic filter (checked by the worker before WHERE)."""
    def member(obj: Any, key: str) -> Any:
        return obj.get(key) if isinstance(obj, dict) else None

    data = member(event, "notify_data")
    app_id = member(member(data, "header"), "app_id")   # where the worker looks (_core.AppIs)
    if not isinstance(app_id, str):
        app_id = member(member(data, "body"), "app_id")
    if rule.app_type == "APP" and app_id != rule.app_id:
        return f"app scope: the rule is for app_id {rule.app_id!r}, the event's is {app_id!r}"
    return f"topic: the event's topic does not match the rule's filter {rule.topic!r}"


@dataclass(frozen=True)
class Failure:
    test: str
    rule: str
    expected: str   # JSON text, or "no match"
    actual: str
    input: int | None = None   # the position in `inputs`, when the test has several

    def render(self) -> str:
        diff = difflib.unified_diff(self.expected.splitlines(), self.actual.splitlines(),
                                    "expected", "actual", lineterm="")
        body = "\n".join(f"    {line}" for line in diff)
        where = f" (inputs[{self.input}])" if self.input is not None else ""
        return f"FAIL {self.test!r}{where}: rule {self.rule}\n{body}"


def _text(value: Any) -> str:
    if value is None:
        return "no match"
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def _same(actual: Any, wanted: Any) -> bool:
    # Compared as JSON: 1 and 1.0 differ, as they do for every sink.
    return orjson.dumps(actual, option=orjson.OPT_SORT_KEYS) \
        == orjson.dumps(wanted, option=orjson.OPT_SORT_KEYS)


def _contains(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            k in actual and _contains(actual[k], v) for k, v in wanted.items())
    return _same(actual, wanted)


def _meets(expect: Expectation, output: Any) -> bool:
    if expect.no_match:
        return output is None
    if output is None:
        return False
    if expect.output is not None:
        return _same(output, expect.output)
    wanted = expect.contains
    if isinstance(wanted, list):   # a FOREACH rule: one object per output, in order
        return isinstance(output, list) and len(output) == len(wanted) \
            and all(_contains(o, w) for o, w in zip(output, wanted, strict=True))
    return _contains(output, wanted)


def _expected_text(expect: Expectation) -> str:
    if expect.no_match:
        return "no match"
    if expect.output is not None:
        return _text(expect.output)
    return _text(expect.contains) + "\n(contained)"


def run_tests(config: EngineConfig) -> Iterator[tuple[RuleTest, list[Failure]]]:
    """Each test with its failures (none: it passed)."""
    rules = {r.rule_id: r for r in config.rules}
    evaluators: dict[str, Evaluator] = {}
    for test in config.tests:
        failures = []
        several = test.inputs is not None
        for position, notification in enumerate(test.notifications):
            for expect in test.expect:
                if expect.rule not in evaluators:
                    evaluators[expect.rule] = rule_evaluator(rules[expect.rule])
                output = evaluators[expect.rule](notification)
                if not _meets(expect, output):
                    failures.append(Failure(test.name, expect.rule, _expected_text(expect),
                                            _text(output), position if several else None))
        yield test, failures
