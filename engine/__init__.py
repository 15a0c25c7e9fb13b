"""IoT data-forwarding engine.

The stable API of the rule core:

    rule = engine.compile_rule(select="...", where="...")
    rule.apply(event) -> dict | None      rule.matches(event) -> bool
    rule.apply_many(events)               rule.apply_raw(b'{...}')
    rs = engine.compile_ruleset([engine.RuleSpec(key, select, where, resource, event, app_id)])
    rs.evaluate(event) -> [(key, output), ...]   rs.evaluate_raw_many([b'...'])
"""

from engine._core import MISSING, CompiledRule, MalformedEvent, RuleSet
from engine.language import (
    RuleError,
    RuleSemanticError,
    RuleSpec,
    RuleSyntaxError,
    compile_rule,
    compile_ruleset,
)

__version__ = "0.1.0"

__all__ = [
    "MISSING", "CompiledRule", "MalformedEvent", "RuleError", "RuleSemanticError", "RuleSet",
    "RuleSpec", "RuleSyntaxError", "compile_rule", "compile_ruleset",
]
