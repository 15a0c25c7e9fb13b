"""Configuration problems: `Issue` (one problem, located) and `ConfigError`
(all problems of one load), plus turning pydantic errors into messages.

Messages never include the offending input value: it may be a secret. (Our
own messages quote values only for fields that are never secret, such as
events and channel names; `engine.config.secrets` redacts known secrets as
a second line of defence.)
"""

from __future__ import annotations

import difflib
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


# Patterns of the config models, said in words.
_PATTERNS = {"^https?://": "must be an http:// or https:// URL", "^/": "must start with /",
             "/$": "must end with /"}
_TYPES = {"int_parsing": "must be a whole number", "int_type": "must be a whole number",
          "int_from_float": "must be a whole number (no decimals)",
          "float_parsing": "must be a number", "float_type": "must be a number",
          "bool_parsing": "must be true or false", "bool_type": "must be true or false",
          "string_type": "must be a text (in quotes if it looks like a number)",
          "dict_type": "must be an object (key: value pairs)",
          "model_type": "must be an object (key: value pairs)",
          "model_attributes_type": "must be an object (key: value pairs)",
          "list_type": "must be a list", "none_required": "must be empty (null)"}
_BOUNDS = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "greater than"),
           "less_than_equal": ("le", "at most"), "less_than": ("lt", "less than")}


def did_you_mean(value: Any, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` when a choice is close to `value`, else ``."""
    if not isinstance(value, str):
        return ""
    near = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{near[0]}'?)" if near else ""


def pydantic_message(error: Any, fields: Iterable[str] = ()) -> str:
    """A readable message for one entry of `ValidationError.errors()`,
    built from its type and context only (never echoing `input`: it may be
    a secret). `fields`: the field names where the error is, for a
    did-you-mean on an unknown one."""
    kind = error["type"]
    loc = error.get("loc") or ()
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field" + did_you_mean(loc[-1] if loc else None, fields)
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        # The input is one of a fixed set of words, never a secret.
        return f"must be one of: {', '.join(choices)}" + did_you_mean(error.get("input"), choices)
    if kind in _TYPES:
        return _TYPES[kind]
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"must be {words} {ctx.get(key)}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        return _PATTERNS.get(pattern, f"must match the pattern {pattern}")
    if kind in ("too_short", "too_long", "string_too_short", "string_too_long"):
        size = ctx.get("min_length") if "short" in kind else ctx.get("max_length")
        bound = "at least" if "short" in kind else "at most"
        text = kind.startswith("string") or is_secret_key(loc[-1] if loc else "")
        # pydantic words SecretStr lengths as "items"; they are characters.
        unit = "character" if text else "item"
        return f"must have {bound} {size} {unit}{'s' if size != 1 else ''}"
    message: str = error["msg"]
    # Validators raising ValueError/AssertionError get these prefixes.
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    return message
