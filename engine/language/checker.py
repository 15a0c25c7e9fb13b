"""Semantic checks on a parsed rule (the errors the spec calls semantic)."""

from __future__ import annotations

import difflib
import math

from engine.language import ast
from engine.language.errors import RuleSemanticError
from engine.language.library import FUNCTIONS

MAX_ALIAS_CHARS = 256
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class _Checker:
    def __init__(self, clause: str, text: str) -> None:
        self.clause = clause
        self.text = text

    def err(self, msg: str, pos: ast.Pos) -> RuleSemanticError:
        return RuleSemanticError(msg, clause=self.clause, text=self.text, line=pos[0], column=pos[1])

    def expr(self, root: ast.Expr) -> None:
        # Iterative walk; `under_neg` tracks an enclosing unary minus so that
        # -9223372036854775808 is accepted (but not -(9223372036854775808):
        # the spec's exception is for the written form `-digits`).
        stack: list[tuple[ast.Expr, bool]] = [(root, False)]
        while stack:
            node, under_neg = stack.pop()
            match node:
                case ast.Literal(value) if type(value) is int:
                    low = -INT64_MIN if under_neg else INT64_MAX
                    if value > low:
                        raise self.err(f"integer {value} is outside the signed 64-bit range", node.pos)
                case ast.Literal(value) if type(value) is float and not math.isfinite(value):
                    raise self.err("decimal number is too large (beyond the double range)", node.pos)
                case ast.Call():
                    self.call(node)
                case ast.InList():
                    self.in_list(node)
            for child in ast.children(node):
                stack.append((child, isinstance(node, ast.Neg)
                              and not getattr(child, "paren", False)))

    def call(self, node: ast.Call) -> None:
        spec = FUNCTIONS.get(node.name)
        if spec is None:
            near = difflib.get_close_matches(node.name, FUNCTIONS.names(), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(near)}?" if near else \
                "; the functions are listed in docs/language.md"
            raise self.err(f"unknown function {node.name}{hint}", node.pos)
        if node.star:
            raise self.err(f"{node.name}(*): `*` is not an argument of {node.name} (in the "
                           "Alibaba dialect only to_base64(*) takes one)", node.pos)
        n = len(node.args)
        if n < spec.min_args or (spec.max_args is not None and n > spec.max_args):
            raise self.err(f"{node.name} takes {spec.arity_text()}, got {n}: {spec.signature}",
                           node.pos)
        if spec.fuzzy_arg is not None and n > spec.fuzzy_arg:
            arg = node.args[spec.fuzzy_arg]
            if not (isinstance(arg, ast.Literal) and type(arg.value) is bool and not arg.paren):
                raise self.err(f"the fuzzy argument of {node.name} must be the literal true or false",
                               getattr(arg, "pos", node.pos))

    def in_list(self, node: ast.InList) -> None:
        kinds = set()
        for item in node.items:
            value = constant_value(item)
            if value is _NOT_CONST or value is None or type(value) is bool:
                hint = (" written without parentheses" if getattr(item, "paren", False)
                        or isinstance(item, ast.Neg) else "")
                raise self.err(f"IN list elements must be string or number constants{hint}",
                               item.pos)
            kinds.add("string" if isinstance(value, str) else "number")
        if len(kinds) > 1:
            raise self.err("IN list mixes strings and numbers; all elements must have one type",
                           node.items[0].pos)


_NOT_CONST = object()


def constant_value(node: ast.Expr):
    """The value of a literal or a negated number literal as written (no
    parentheses), else _NOT_CONST."""
    if isinstance(node, ast.Literal):
        return _NOT_CONST if node.paren else node.value
    if isinstance(node, ast.Neg) and not node.paren and isinstance(node.operand, ast.Literal) \
            and not node.operand.paren and type(node.operand.value) in (int, float):
        return -node.operand.value
    return _NOT_CONST


def check_where(where: ast.Expr | None, text: str) -> None:
    if where is not None:
        _Checker("where", text).expr(where)


def check_select(select: ast.Select, text: str) -> None:
    c = _Checker("select", text or "")
    if select.foreach is not None:
        each = select.foreach
        c.expr(each.array)
        if each.incase is not None:
            c.expr(each.incase)
        if each.items is not None:
            _check_items(c, each.items)
        return
    _check_items(c, select.items)


def _check_items(c: _Checker, items: tuple[ast.SelectItem, ...]) -> None:
    stars = 0
    seen: dict[str, ast.Pos] = {}
    for item in items:
        if item.is_star:
            stars += 1
            if item.alias is not None:
                raise c.err("* cannot have an alias", item.alias_pos)
            if stars > 1:
                raise c.err("* may appear only once", item.pos)
            continue
        c.expr(item.expr)
        if item.alias is not None and len(item.alias) > MAX_ALIAS_CHARS:
            raise c.err(f"alias is {len(item.alias)} characters long; the limit is "
                        f"{MAX_ALIAS_CHARS}", item.alias_pos)
        key = item.key
        if key is None:
            raise c.err(_needs_alias(item.expr), item.pos)
        if key in seen:
            raise c.err(f"duplicate output key {key!r} (first at column {seen[key][1]}); "
                        "give one of them another alias", item.alias_pos if item.alias else item.pos)
        seen[key] = item.alias_pos if item.alias else item.pos


def _needs_alias(expr: ast.Expr) -> str:
    what = {ast.Literal: "a constant", ast.Call: "a function call"}.get(type(expr), "an expression")
    if isinstance(expr, ast.Path):
        what = "a path in parentheses"
    msg = f"{what} in SELECT needs an alias: add AS name"
    if isinstance(expr, ast.Arith) and expr.op == "-" and isinstance(expr.left, ast.Path) \
            and isinstance(expr.right, ast.Path) and len(expr.right.steps) == 1:
        # `data.msg-type` is a subtraction; the user almost surely meant a hyphenated name.
        last = expr.left.steps[-1]
        prefix = ".".join(str(s) for s in expr.left.steps[:-1])
        quoted = f'{prefix + "." if prefix else ""}"{last}-{expr.right.steps[0]}"'
        msg += f"; a name with '-' must be quoted: {quoted}"
    return msg
