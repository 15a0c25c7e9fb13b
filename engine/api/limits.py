"""Limits of the management API: body size, request rate per credential,
objects per project.

Defaults follow IoTDA where it documents a number (50 records a page, 4 flow
control policies a tenant, 10 actions a rule) and are otherwise chosen to
keep one project's configuration small enough to validate on every change.
"""

from __future__ import annotations

import time
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
    def from_config(cls, configured: dict[str, object], overrides: list[str] = ()) -> ApiLimits:
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


class RateLimiter:
    """A token bucket per key: `allow(key)` is false once the key has spent
    its burst faster than `rate` refills it. Keys are authenticated
    credentials only, so their number is bounded by the configuration."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)

    def allow(self, key: str) -> bool:
        now = self._clock()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed
