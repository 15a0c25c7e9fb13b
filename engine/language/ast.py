"""Typed syntax tree of a rule (frozen dataclasses).

The parser builds it, the checker validates it, the compiler turns it into
core evaluators and the reference interpreter walks it. `pos` is the
(line, column) where the node starts in its clause text.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Union

Pos = tuple[int, int]
NOPOS: Pos = (0, 0)


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any                 # str, int, float, bool or None (JSON null)
    pos: Pos = field(default=NOPOS, compare=False)
    paren: bool = field(default=False, compare=False)   # written inside ( )


@dataclass(frozen=True, slots=True)
class Path:
    steps: tuple[str | int, ...]   # member names (str) and array indices (int)
    pos: Pos = field(default=NOPOS, compare=False)
    paren: bool = field(default=False, compare=False)   # written inside ( )

    @property
    def text(self) -> str:
        """Canonical text: members joined with '.', quotes dropped, [n] kept."""
        out = []
        for s in self.steps:
            if isinstance(s, int):
                out.append(f"[{s}]")
            else:
                out.append(("." if out else "") + s)
        return "".join(out)


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Expr
    pos: Pos = field(default=NOPOS, compare=False)
    paren: bool = field(default=False, compare=False)   # written inside ( )


@dataclass(frozen=True, slots=True)
class Arith:
    op: str                    # '+', '-', '*', '/'
    left: Expr
    right: Expr
    pos: Pos = field(default=NOPOS, compare=False)


@dataclass(frozen=True, slots=True)
class Concat:
    left: Expr
    right: Expr
    pos: Pos = field(default=NOPOS, compare=False)


@dataclass(frozen=True, slots=True)
class Compare:
    op: str                    # '=', '<>', '<', '>', '<=', '>=' ('!=' is folded to '<>')
    left: Expr
    right: Expr
    pos: Pos = field(default=NOPOS, compare=False)


@dataclass(frozen=True, slots=True)
class Like:
    operand: Expr
    pattern: Expr
    negated: bool
    pos: Pos = field(default=NOPOS, compare=False)


@dataclass(frozen=True, slots=True)
class InList:
    operand: Expr
    items: tuple[Expr, ...]    # constants after checking
    negated: bool
    pos: Pos = field(default=NOPOS, compare=False)


@dataclass(frozen=True, slots=True)
class Between:
    operand: Expr
    low: Expr
    high: Expr
    negated: bool
    pos: Pos = field(default=NOPOS, compare=False)


@dataclass(frozen=True, slots=True)
class IsNull:
    operand: Expr
    negated: bool
    pos: Pos = field(default=NOPOS, compare=False)


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr
    pos: Pos = field(default=NOPOS, compare=False)


@dataclass(frozen=True, slots=True)
class And:
    left: Expr
    right: Expr
    pos: Pos = field(default=NOPOS, compare=False)


@dataclass(frozen=True, slots=True)
class Or:
    left: Expr
    right: Expr
    pos: Pos = field(default=NOPOS, compare=False)


@dataclass(frozen=True, slots=True)
class Case:
    whens: tuple[tuple[Expr, Expr], ...]   # (condition, value) pairs
    else_: Expr | None
    pos: Pos = field(default=NOPOS, compare=False)


@dataclass(frozen=True, slots=True)
class Call:
    name: str                  # upper-cased function name
    args: tuple[Expr, ...]
    pos: Pos = field(default=NOPOS, compare=False)
    star: bool = False         # written `f(*)` (only the Alibaba dialect accepts one)


Expr = Union[  # noqa: UP007 - a runtime alias, | of classes needs 3.10 types
    Literal, Path, Neg, Arith, Concat, Compare, Like, InList, Between,
             IsNull, Not, And, Or, Case, Call]


@dataclass(frozen=True, slots=True)
class SelectItem:
    expr: Expr | None          # None for `*`
    alias: str | None
    pos: Pos = field(default=NOPOS, compare=False)
    alias_pos: Pos = field(default=NOPOS, compare=False)

    @property
    def is_star(self) -> bool:
        return self.expr is None

    @property
    def key(self) -> str | None:
        """Output key: the alias, else a plain path's canonical text."""
        if self.alias is not None:
            return self.alias
        if isinstance(self.expr, Path) and not self.expr.paren:
            return self.expr.text
        return None


@dataclass(frozen=True, slots=True)
class Foreach:
    """`FOREACH array [AS alias] [DO items] [INCASE condition]`: one output
    per element of `array` for which `incase` is TRUE; inside `items` and
    `incase` the name `alias` is the element (a path `alias.x` reads it)."""

    array: Expr
    alias: str = "item"
    items: tuple[SelectItem, ...] | None = None   # None: the element itself
    incase: Expr | None = None
    pos: Pos = field(default=NOPOS, compare=False)


@dataclass(frozen=True, slots=True)
class Select:
    items: tuple[SelectItem, ...]   # empty clause text gives a single `*`
    # What `*` stands for: the members of the object at this path ((): the
    # event itself; the Alibaba dialect's `*` is the message payload's).
    star_root: tuple[str | int, ...] = ()
    foreach: Foreach | None = None   # a FOREACH clause (then `items` is empty)


def children(node: Expr) -> tuple[Expr, ...]:
    """Direct sub-expressions, for generic walks (checker, pre-filter)."""
    match node:
        case Literal() | Path():
            return ()
        case Neg(o) | Not(o) | IsNull(o):
            return (o,)
        case Arith(_, a, b) | Concat(a, b) | Compare(_, a, b) | And(a, b) | Or(a, b):
            return (a, b)
        case Like(a, b, _):
            return (a, b)
        case InList(a, items, _):
            return (a, *items)
        case Between(a, lo, hi, _):
            return (a, lo, hi)
        case Case(whens, els):
            out = [x for pair in whens for x in pair]
            return (*out, els) if els is not None else tuple(out)
        case Call(_, args):
            return args
    raise TypeError(f"not an expression node: {node!r}")


def rebase(node: Expr, root: str) -> Expr:
    """`node` with every path `root.x…` read from `root` itself (`x…`): an
    expression over a FOREACH element, evaluated on the element alone."""
    if isinstance(node, Path):
        return replace(node, steps=node.steps[1:]) if node.steps[:1] == (root,) else node
    if isinstance(node, Literal):
        return node
    if isinstance(node, Case):
        return replace(node, whens=tuple((rebase(c, root), rebase(v, root)) for c, v in node.whens),
                       else_=rebase(node.else_, root) if node.else_ is not None else None)
    changes: dict[str, Any] = {}
    for f in fields(node):
        v = getattr(node, f.name)
        if isinstance(v, tuple) and f.name in ("args", "items"):
            changes[f.name] = tuple(rebase(x, root) for x in v)
        elif f.name != "pos" and not isinstance(v, (str, bool, tuple)) and v is not None:
            changes[f.name] = rebase(v, root)
    return replace(node, **changes)


def with_strings(node: Any, values: dict[Pos, str]) -> Any:
    """`node` (a clause's tree) with the string literal at each position of
    `values` holding that value instead; nothing else changes."""
    if isinstance(node, Literal):
        value = values.get(node.pos) if isinstance(node.value, str) else None
        return node if value is None else Literal(value, node.pos, node.paren)
    if isinstance(node, tuple):
        return tuple(with_strings(x, values) for x in node)
    if node is None or isinstance(node, (Path, str, int, float, bool)):
        return node
    changes = {f.name: with_strings(getattr(node, f.name), values)
               for f in fields(node) if f.compare}
    return replace(node, **changes)


@dataclass(frozen=True, slots=True)
class Rule:
    """A parsed and checked rule: both clauses."""

    select: Select
    where: Expr | None
