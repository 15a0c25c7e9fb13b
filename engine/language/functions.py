"""The function registry: one declaration per built-in function.

A declaration (`Function`) carries everything the language needs to know
about a function: its names (aliases included), arity, the literal-boolean
argument if any, its compiled form (a function of the core's library, or a
builder of a core node), its reference form (plain Python over the reference
interpreter's values, the test oracle), whether calls on constants fold at
compile time, and its documentation (signature, MISSING rule, examples).
The checker, the compiler, the reference interpreter and the docs test all
read the same declarations; the declarations themselves live in
engine/language/library.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Example:
    expr: str          # a rule expression, e.g. "abs(-2)"
    result: Any        # its value (JSON), or the string "MISSING"
    event: dict | None = None   # the event it is evaluated on ({} when None)


@dataclass(frozen=True, slots=True)
class Function:
    name: str                       # canonical name as documented
    category: str
    min_args: int
    max_args: int | None            # None: any number of arguments
    reference: Callable[..., Any]   # (*args) or, with uses_event, (event, *args)
    # The compiled form: the name of a function in the core's library
    # (engine/_functions.pxi, called with the evaluated arguments), or a
    # builder (core module, compiled args, ast.Call) -> core node.
    compiled: str | Callable[..., Any]
    signature: str
    doc: str                        # result, and when it is MISSING
    aliases: tuple[str, ...] = ()
    fold: bool = True               # deterministic and event-independent
    uses_event: bool = False
    fuzzy_arg: int | None = None    # index of an optional literal true/false argument
    examples: tuple[Example, ...] = field(default=())

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def arity_text(self) -> str:
        if self.max_args is None:
            return f"at least {self.min_args} argument{'s' if self.min_args != 1 else ''}"
        if self.min_args == self.max_args:
            return f"{self.min_args} argument{'s' if self.min_args != 1 else ''}"
        return f"{self.min_args} to {self.max_args} arguments"


class Registry:
    """Functions by upper-cased name and alias (rule names are case-insensitive)."""

    def __init__(self) -> None:
        self._by_name: dict[str, Function] = {}
        self.declared: list[Function] = []

    def add(self, fn: Function) -> Function:
        for n in fn.names:
            key = n.upper()
            if key in self._by_name:
                raise ValueError(f"function name {n} declared twice")
            self._by_name[key] = fn
        self.declared.append(fn)
        return fn

    def get(self, name: str) -> Function | None:
        return self._by_name.get(name.upper())

    def __contains__(self, name: str) -> bool:
        return name.upper() in self._by_name

    def __iter__(self):
        return iter(self._by_name)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def markdown(self) -> str:
        """The function tables of docs/language.md (a test keeps them equal)."""
        out: list[str] = []
        for cat in dict.fromkeys(f.category for f in self.declared):
            out += [f"### {CATEGORIES.get(cat, cat)}", "",
                    "| function | result (MISSING when …) | example |", "| --- | --- | --- |"]
            for f in (f for f in self.declared if f.category == cat):
                names = f"`{f.signature}`" + (
                    f" (also {', '.join(f'`{a}`' for a in f.aliases)})" if f.aliases else "")
                cells = (names, f.doc, _example_text(f))
                out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
            out.append("")
        return "\n".join(out)


CATEGORIES = {"IoTDA": "IoTDA functions", "math": "Math", "type": "Type tests and conversions",
              "string": "Strings", "map": "Objects (maps)", "array": "Arrays",
              "hash": "Hashing and encoding", "time": "Time (UTC)"}


def _example_text(f: Function) -> str:
    import json
    parts = []
    for ex in f.examples:
        res = "MISSING" if ex.result == "MISSING" else json.dumps(ex.result, ensure_ascii=False)
        on = f" on `{json.dumps(ex.event, ensure_ascii=False)}`" if ex.event and \
            f.category != "IoTDA" else ""
        parts.append(f"`{ex.expr}` → `{res}`{on}")
    return "<br>".join(parts)


def declare(registry: Registry, name: str, category: str, args: int | tuple[int, int | None], *,
            compiled: str | Callable[..., Any] | None = None, signature: str, doc: str,
            aliases: tuple[str, ...] = (), fold: bool = True, uses_event: bool = False,
            fuzzy_arg: int | None = None, examples: tuple[Example, ...] = ()):
    """Decorator: the decorated Python function is the reference form."""
    lo, hi = (args, args) if isinstance(args, int) else args

    def wrap(ref: Callable[..., Any]) -> Callable[..., Any]:
        registry.add(Function(name, category, lo, hi, ref, compiled or name.lower(), signature,
                              doc, aliases, fold, uses_event, fuzzy_arg, examples))
        return ref
    return wrap
