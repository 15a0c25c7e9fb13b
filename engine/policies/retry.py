"""When to try a failing destination again, and with how much.

Exponential backoff with full jitter (a uniform delay between 0 and the
exponential step, capped): many actions failing against one server spread
their retries instead of hitting it in waves. After `probe_after`
consecutive failures the destination is considered down and is only probed:
one small batch (`probe_batch` records) every `probe_interval` seconds
(jittered by +-10%), so a dead server is not hammered with full batches.
The first success ends probing and the backlog drains at full batch size.

Interface (one `Backoff` per action):

    backoff = Backoff(RetryPolicy())
    n = backoff.batch_size(500)       # 500 normally, probe_batch while probing
    ... write n records ...
    backoff.success()                 # or: await asyncio.sleep(backoff.failure())
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial: float = 0.1        # first retry delay bound, seconds
    cap: float = 30.0           # largest delay bound between retries
    multiplier: float = 2.0
    probe_after: int = 8        # consecutive failures before probing (0.1 * 2**7 = 12.8 s)
    probe_interval: float = 30.0
    probe_batch: int = 1
    jitter: bool = True         # False: wait the whole step (one waiter, nothing to spread)

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """Delay after the `failures`-th consecutive failure (1-based)."""
        if failures >= self.probe_after:
            return self.probe_interval * (0.9 + 0.2 * rand())
        bound = min(self.cap, self.initial * self.multiplier ** (failures - 1))
        return bound * rand() if self.jitter else bound

    @classmethod
    def steady(cls, initial: float, cap: float) -> RetryPolicy:
        """Doubling from `initial` up to `cap`, no jitter, never probing: for
        a wait that keeps the same records in hand until it succeeds."""
        return cls(initial=initial, cap=cap, probe_after=sys.maxsize, jitter=False)


class Backoff:
    """Consecutive-failure state of one destination."""

    __slots__ = ("policy", "failures", "_rand")

    def __init__(self, policy: RetryPolicy | None = None, *,
                 rand: Callable[[], float] = random.random) -> None:
        self.policy = policy or RetryPolicy()
        self.failures = 0
        self._rand = rand

    @property
    def probing(self) -> bool:
        return self.failures >= self.policy.probe_after

    def batch_size(self, normal: int) -> int:
        return min(normal, self.policy.probe_batch) if self.probing else normal

    def failure(self) -> float:
        """Record a failed attempt; return how long to wait before the next."""
        self.failures += 1
        return self.policy.delay(self.failures, self._rand)

    def success(self) -> None:
        self.failures = 0
