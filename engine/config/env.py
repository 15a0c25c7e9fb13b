"""`${VAR}` interpolation of environment variables in string values.

`${VAR}` is replaced by the variable's value, `${VAR:-default}` uses the
default when VAR is unset or empty, and `$${` stands for a literal `${`.
Only values are interpolated, never keys. A missing variable is reported by
name (its would-be value is a secret we never had).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from engine.config.errors import Loc

_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def interpolate(data: Any, env: Mapping[str, str]) -> tuple[Any, list[tuple[Loc, str]]]:
    """Return a copy of `data` with references replaced, and the problems
    found as (location, message) pairs."""
    problems: list[tuple[Loc, str]] = []

    def walk(node: Any, loc: Loc) -> Any:
        if isinstance(node, dict):
            return {key: walk(value, (*loc, key)) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item, (*loc, i)) for i, item in enumerate(node)]
        if isinstance(node, str) and "${" in node:
            return _substitute(node, env, loc, problems)
        return node

    return walk(data, ()), problems


def _substitute(
    text: str, env: Mapping[str, str], loc: Loc, problems: list[tuple[Loc, str]]
) -> str:
    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$${":
            return "${"
        if match.group(1) is None:  # "${" without a closing brace
            problems.append((loc, "unterminated ${ (write $${ for a literal ${)"))
            return whole
        name, has_default, default = match.group(1).partition(":-")
        if not _NAME.match(name):
            # The text is not echoed: it sits in a value that may be a secret.
            problems.append((loc, "malformed ${...}: expected ${NAME} or ${NAME:-default}"))
            return whole
        value = env.get(name)
        if value:
            return value
        if has_default:
            return default
        if value is None:
            problems.append((loc, f"environment variable {name} is not set"))
        return ""

    return _REFERENCE.sub(replace, text)
