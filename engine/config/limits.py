"""Limits of the management API (the `api.limits` section): body size,
request rate per credential, objects per project. Here, not in `engine.api`,
because the config validates `api.limits` against them.

Defaults follow IoTDA where it documents a number (50 records a page, 4 flow
control policies a tenant, 10 actions a rule) and are otherwise chosen to
keep one project's configuration small enough to validate on every change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ApiLimits:
    max_body_bytes: int = 1 << 20
    """Largest request body; larger ones get 413 before they are read."""
    rate: float = 50.0
    """Requests per second per credential (token or AK), sustained."""
    burst: int = 100
    """Requests a credential may make at once before `rate` applies."""
    max_rules: int = 100
    max_actions_per_rule: int = 10
    max_flowcontrol_policies: int = 4
    max_backlog_policies: int = 10
    allow_file_channel: bool = False
    """Accept FILE_FORWARDING actions over HTTP. Off by default: it makes the
    worker write to a local path, which a remote API user should not choose
    (rule files and `engine import` are the operator's and always may)."""

    @classmethod
    def from_config(cls, configured: Mapping[str, object],
                    overrides: Sequence[str] = ()) -> ApiLimits:
        """The `api.limits` section of the config, then `NAME=VALUE` overrides."""
        items = [f"{k}={str(v).lower()}" for k, v in configured.items()]
        return cls.parse(items + list(overrides))

    @classmethod
    def parse(cls, items: list[str]) -> ApiLimits:
        """From `NAME=VALUE` strings (the `engine api --limit` option)."""
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, object] = {}
        for item in items:
            name, sep, text = item.partition("=")
            if not sep or name not in types:
                raise ValueError(f"unknown limit '{name}' (known: {', '.join(types)})")
            kind = types[name]
            if kind == "bool":
                values[name] = text.lower() in ("1", "true", "yes", "on")
            else:
                number = float(text) if kind == "float" else int(text)
                if number <= 0:
                    raise ValueError(f"limit {name} must be positive")
                values[name] = number
        return cls(**values)  # type: ignore[arg-type]
