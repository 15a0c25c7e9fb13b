"""Configuration problems: `Issue` (one problem, located) and `ConfigError`
(all problems of one load), plus turning pydantic errors into messages.

Messages never include the offending input value: it may be a secret. (Our
own messages quote values only for fields that are never secret, such as
events and channel names; `engine.config.secrets` redacts known secrets as
a second line of defence.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.config.secrets import is_secret_key

Loc = tuple[str | int, ...]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Issue:
    """One problem: `file:line: path: message` (line is None when unknown)."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def sort_key(self) -> tuple[str, int, str]:
        return (self.file, self.line or 0, self.path)


class ConfigError(Exception):
    """The configuration is invalid; `issues` lists every problem found."""

    def __init__(self, issues: Iterable[Issue]) -> None:
        self.issues: list[Issue] = sorted(issues, key=Issue.sort_key)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


def format_loc(loc: Sequence[str | int]) -> str:
    """`("rules", 0, "subject", "event")` -> `rules[0].subject.event`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def pydantic_message(error: Any) -> str:
    """A readable message for one entry of `ValidationError.errors()`,
    built from its type and message only (never from `input`)."""
    kind = error["type"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    ctx = error.get("ctx") or {}
    if kind in ("too_short", "too_long") and is_secret_key(
        error["loc"][-1] if error["loc"] else ""
    ):
        # pydantic words SecretStr lengths as "items"; they are characters.
        if kind == "too_short":
            return f"must have at least {ctx.get('min_length')} characters"
        return f"must have at most {ctx.get('max_length')} characters"
    message: str = error["msg"]
    # Validators raising ValueError/AssertionError get these prefixes.
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    return message
