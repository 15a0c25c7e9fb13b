"""The rule language: grammar, AST, checker, compiler, reference interpreter."""

from __future__ import annotations

import functools

from engine.language import ast
from engine.language.checker import check_select, check_where
from engine.language.errors import RuleError, RuleSemanticError, RuleSyntaxError
from engine.language.parser import parse_select, parse_where


def parse_rule(select: str | None = None, where: str | None = None,
               dialect: str = "iotda") -> ast.Rule:
    """Parse and check both clauses. Parse errors are reported before semantic
    errors (both clauses are parsed first), and nothing but RuleError escapes.
    `dialect`: "iotda" (docs/language.md) or "aliyun" (docs/language-alibaba.md)."""
    if isinstance(select, (str, type(None))) and isinstance(where, (str, type(None))) \
            and isinstance(dialect, str):
        return _parse_checked(select, where, dialect)
    return _parse_rule(select, where, dialect)   # the parser names the wrong type


# A checked rule is immutable: validating a rule file and compiling its rule
# set (or an API update that keeps most rules) read each one once. Errors are
# raised, never cached.
@functools.lru_cache(maxsize=32768)
def _parse_checked(select: str | None, where: str | None, dialect: str) -> ast.Rule:
    return _parse_rule(select, where, dialect)


def _parse_rule(select, where, dialect: str) -> ast.Rule:
    if dialect == "aliyun":
        from engine.language.aliyun import parse_aliyun_rule
        return parse_aliyun_rule(select, where)
    sel = parse_select(select)
    whr = parse_where(where)
    check_select(sel, select or "")
    check_where(whr, where or "")
    return ast.Rule(sel, whr)


from engine.language.compiler import check_rule, compile_rule  # noqa: E402 - needs parse_rule
from engine.language.ruleset import RuleSpec, compile_ruleset  # noqa: E402

__all__ = ["RuleError", "RuleSemanticError", "RuleSpec", "RuleSyntaxError", "ast",
           "check_rule", "compile_rule", "compile_ruleset", "parse_rule"]
