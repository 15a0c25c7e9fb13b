"""Errors raised when a rule text cannot be compiled.

Every malformed rule raises a `RuleError` subclass, never anything else:
`RuleSyntaxError` for what the language reference calls parse errors and
`RuleSemanticError` for semantic errors. Positions are 1-based and relative
to the clause text as the user wrote it.
"""

from __future__ import annotations


class RuleError(ValueError):
    """A rule clause that cannot be compiled.

    Attributes: `clause` ("select" or "where"), `line`, `column` (1-based,
    0 when unknown), `message` (what is wrong / what was expected), `text`
    (the clause text) and `snippet` (the offending line with a caret).
    """

    kind = "error"

    def __init__(self, message: str, *, clause: str = "", text: str = "",
                 line: int = 0, column: int = 0) -> None:
        self.message = message
        self.clause = clause
        self.text = text
        self.line = line
        self.column = column
        self.snippet = _caret_snippet(text, line, column)
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.clause} " if self.clause else ""
        pos = f" at line {self.line}, column {self.column}" if self.line else ""
        head = f"{self.kind} error in {where}clause{pos}: {self.message}"
        return f"{head}\n{self.snippet}" if self.snippet else head

    def to_dict(self) -> dict:
        return {"type": self.kind, "clause": self.clause, "line": self.line,
                "column": self.column, "message": self.message}


class RuleSyntaxError(RuleError):
    kind = "parse"


class RuleSemanticError(RuleError):
    kind = "semantic"


def _caret_snippet(text: str, line: int, column: int) -> str:
    if not text or line < 1:
        return ""
    lines = text.split("\n")     # lines as the parser counts them
    if line > len(lines):
        return ""
    src = lines[line - 1].rstrip("\r")
    if len(src) > 120:  # keep the caret visible on very long lines
        start = max(0, column - 60)
        src, column = ("…" + src[start:start + 118]), column - start + 1
    # Tabs before the caret are kept as tabs so the caret lines up.
    pad = "".join(c if c == "\t" else " " for c in src[:max(column - 1, 0)])
    return f"  {src}\n  {pad}^"
