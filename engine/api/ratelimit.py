"""The management API's request rate limit: a token bucket per credential."""

from __future__ import annotations

import time


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
