"""AST -> core evaluators (engine._core).

Everything that can be decided once is decided here: fused nodes for
`path OP constant`, LIKE patterns classified (prefix/suffix/contains/regex),
IN lists turned into frozensets, AND/OR chains flattened, literal `fuzzy`
flags read. The core then only evaluates.
"""

from __future__ import annotations

import sys

from engine import _core
from engine.language import ast
from engine.language.checker import constant_value
from engine.language.errors import RuleError, RuleSemanticError
from engine.language.library import FUNCTIONS
from engine.language.prefilter import Atom, derive_prefilter

_SWAP = {"=": "=", "<>": "<>", "<": ">", ">": "<", "<=": ">=", ">=": "<="}


def _is_number(v) -> bool:
    return type(v) in (int, float)


def compile_path(node: ast.Path) -> _core.Expr:
    if len(node.steps) <= 16:
        return _core.Path(node.steps)
    return _core.LongPath(node.steps)


def compile_expr(node: ast.Expr) -> _core.Expr:
    match node:
        case ast.Literal(value):
            return _core.Const(value)
        case ast.Path():
            return compile_path(node)
        case ast.Neg(operand):
            if isinstance(operand, ast.Literal) and _is_number(operand.value):
                return _core.Const(-operand.value)
            return _core.Neg(compile_expr(operand))
        case ast.Arith(op, left, right):
            return _core.Arith(op, compile_expr(left), compile_expr(right))
        case ast.Concat(left, right):
            return _core.Concat(compile_expr(left), compile_expr(right))
        case ast.Compare():
            return _compile_compare(node)
        case ast.Like(operand, pattern, negated):
            const = pattern.value if isinstance(pattern, ast.Literal) and \
                isinstance(pattern.value, str) else None
            return _core.Like(compile_expr(operand), compile_expr(pattern), negated, const)
        case ast.InList(operand, items, negated):
            values = [constant_value(i) for i in items]
            kind = _core.KIND_STR if isinstance(values[0], str) else _core.KIND_NUM
            return _core.InList(compile_expr(operand), values, kind, negated)
        case ast.Between(operand, low, high, negated):
            return _core.Between(compile_expr(operand), compile_expr(low), compile_expr(high),
                                 negated)
        case ast.IsNull(operand, negated):
            return _core.IsNull(compile_expr(operand), negated)
        case ast.Not(operand):
            return _core.Not(compile_expr(operand))
        case ast.And():
            return _core.And([compile_expr(x) for x in _flatten(node, ast.And)])
        case ast.Or():
            return _core.Or([compile_expr(x) for x in _flatten(node, ast.Or)])
        case ast.Case(whens, else_):
            return _core.Case([compile_expr(c) for c, _ in whens],
                              [compile_expr(v) for _, v in whens],
                              compile_expr(else_) if else_ is not None else None)
        case ast.Call():
            return _compile_call(node)
    raise TypeError(f"cannot compile {node!r}")


def _flatten(node: ast.Expr, cls: type) -> list[ast.Expr]:
    """a AND (b AND c) -> [a, b, c] without recursion."""
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        if isinstance(n, cls):
            stack.append(n.right)
            stack.append(n.left)
        else:
            out.append(n)
    return out


def _compile_compare(node: ast.Compare) -> _core.Expr:
    op, left, right = node.op, node.left, node.right
    if isinstance(left, ast.Literal) and isinstance(right, ast.Path):
        op, left, right = _SWAP[op], right, left
    if isinstance(left, ast.Path) and isinstance(right, ast.Literal) and len(left.steps) <= 16:
        v = right.value
        if isinstance(v, str):
            return _core.PathCompareStr(_core.OPS[op], _core.Path(left.steps), v)
        if _is_number(v):
            return _core.PathCompareNum(_core.OPS[op], _core.Path(left.steps), v)
    return _core.Compare(_core.OPS[op], compile_expr(left), compile_expr(right))


def _compile_call(node: ast.Call) -> _core.Expr:
    fn = FUNCTIONS.get(node.name)
    args = [compile_expr(a) for a in node.args]
    if isinstance(fn.compiled, str):
        built = _core.LibCall(fn.compiled, args)
    else:
        built = fn.compiled(_core, args, node)
    if fn.fold and all(type(a) is _core.Const for a in args):
        # A deterministic function of constants is computed once, by the core
        # itself (so folding cannot change a result). Containers are not
        # folded: one object would be shared by every output.
        v = built.eval(None)
        if not isinstance(v, (dict, list)):
            return _core.Const(v)
    return built


# Where a FOREACH DO item or INCASE is evaluated (the core's `modes`).
ON_EVENT, ON_ITEM, ON_ENV = 0, 1, 2


def _foreach_mode(expr: ast.Expr, alias: str) -> int:
    """ON_EVENT: it never reads the element (computed once per event);
    ON_ITEM: it reads only the element (evaluated on it, paths rebased);
    ON_ENV: both, or a function that reads the event or differs per call
    (evaluated on the event's top level with the element bound)."""
    roots: set[str | int] = set()
    pure = True
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Path):
            roots.add(node.steps[0] if node.steps else "")
        elif isinstance(node, ast.Call):
            fn = FUNCTIONS.get(node.name)
            pure = pure and fn is not None and fn.fold and not fn.uses_event
        stack.extend(ast.children(node))
    if not pure:
        return ON_ENV
    if alias not in roots:
        return ON_EVENT
    return ON_ITEM if roots == {alias} else ON_ENV


def _compile_foreach(each: ast.Foreach) -> _core.Projection:
    array = compile_expr(each.array)
    incase, incase_mode = None, ON_ENV
    if each.incase is not None:
        incase_mode = _foreach_mode(each.incase, each.alias)
        incase = compile_expr(ast.rebase(each.incase, each.alias)
                              if incase_mode == ON_ITEM else each.incase)
    if each.items is not None and any(i.is_star for i in each.items):
        # `*` inside DO is the element's members: built on the bound event.
        per_item = compile_projection(ast.Select(each.items, star_root=(each.alias,)))
        return _core.Projection(False, [], [], None, array, each.alias, per_item, incase,
                                incase_mode=incase_mode)
    keys, exprs, modes = [], [], bytearray()
    for item in each.items or ():
        mode = _foreach_mode(item.expr, each.alias)
        keys.append(item.key)
        exprs.append(compile_expr(ast.rebase(item.expr, each.alias)
                                  if mode == ON_ITEM else item.expr))
        modes.append(mode)
    # Without DO the output is the element (modes None); with it, one value
    # per item, those that never read the element computed once per event.
    return _core.Projection(False, keys, exprs, None, array, each.alias, None, incase,
                            modes=bytes(modes) if each.items is not None else None,
                            incase_mode=incase_mode)


def compile_projection(select: ast.Select) -> _core.Projection:
    if select.foreach is not None:
        return _compile_foreach(select.foreach)
    star = any(i.is_star for i in select.items)
    items = [i for i in select.items if not i.is_star]
    star_from = compile_path(ast.Path(select.star_root)) if star and select.star_root else None
    return _core.Projection(star, [i.key for i in items], [compile_expr(i.expr) for i in items],
                            star_from)


def build_rule(rule: ast.Rule, select_text, where_text, extra_conditions=(),
               prefilter: list[list[Atom]] | None = None) -> _core.CompiledRule:
    """Compile a checked rule. `extra_conditions` are core conditions ANDed
    before the WHERE (a rule set's subject and app scope); `prefilter` is the
    CNF of atoms from derive_prefilter (None: decode every event)."""
    conds = list(extra_conditions)
    if rule.where is not None:
        conds.append(compile_expr(rule.where))
    where = None if not conds else conds[0] if len(conds) == 1 else _core.And(conds)
    pf = _core.Prefilter(prefilter) if prefilter else None
    return _core.CompiledRule(where, compile_projection(rule.select), pf, select_text, where_text)


# A 2500-character clause can nest ~1250 levels (`- - - x`, `a+a+…`). The
# compile-time walks recurse once per level; Python 3.11 runs Python-to-Python
# calls without growing the C stack, so a higher limit for the duration of a
# compile is safe.
_COMPILE_RECURSION_LIMIT = 20_000


def guarded(fn):
    """The contract of the public compile functions: nothing but RuleError escapes."""
    def wrapper(*args, **kwargs):
        old = sys.getrecursionlimit()
        if old < _COMPILE_RECURSION_LIMIT:
            sys.setrecursionlimit(_COMPILE_RECURSION_LIMIT)
        try:
            return fn(*args, **kwargs)
        except RuleError:
            raise
        except RecursionError:
            raise RuleSemanticError("rule is nested too deeply to compile") from None
        except Exception as e:  # pragma: no cover - a bug; still honour the contract
            raise RuleSemanticError(f"internal error while compiling the rule: {e!r}") from None
        finally:
            if old < _COMPILE_RECURSION_LIMIT:
                sys.setrecursionlimit(old)
    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


@guarded
def compile_rule(select: str | None = None, where: str | None = None,
                 dialect: str = "iotda") -> _core.CompiledRule:
    """Compile one rule. Raises RuleError (RuleSyntaxError / RuleSemanticError)."""
    from engine.language import parse_rule

    rule = parse_rule(select, where, dialect)
    return build_rule(rule, select, where, prefilter=derive_prefilter(rule.where))


@guarded
def check_rule(select: str | None = None, where: str | None = None,
               dialect: str = "iotda") -> None:
    """Raise the RuleError compile_rule would, without deriving the byte
    pre-filter nobody uses: what validating a rule file needs."""
    from engine.language import parse_rule

    build_rule(parse_rule(select, where, dialect), select, where)
