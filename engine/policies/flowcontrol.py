"""Flow control: how many records per second an action may forward.

IoTDA flow-control policies (API reference 1.4.22) have a scope and a limit
in TPS (records forwarded per second):

    USER     every record the engine forwards (one bucket for all actions)
    CHANNEL  records forwarded to one channel, e.g. scope_value HTTP_FORWARDING
             (one bucket shared by every action of that channel)
    RULE     records forwarded by the actions of one rule (scope_value = rule_id)
    ACTION   records forwarded by one action (scope_value = action_id)

A record must pass every policy that applies to its action; the first limit
reached holds it back. IoTDA discards what it holds back. Here nothing is
discarded: the limiter only says how many records may go now, and the caller
keeps the rest (in memory, or in the action's backlog) and sends them when
the limiter allows. IoTDA caps `limit` at 1000 TPS; this engine accepts up
to `engine.config.models.FLOW_LIMIT_MAX` (an extension).

Interface (what the action runner calls):

    flow = FlowControl(config.flowcontrol_policies)          # once per engine
    limiter = flow.limiter_for(rule_id, action_id, channel)  # once per action
    k = await limiter.acquire(len(batch))   # waits; 1..len(batch): send batch[:k]
    # or, never waiting (e.g. to put the rest in the backlog):
    k = limiter.try_acquire(len(batch))     # 0..len(batch) available right now
    limiter.delay_until_available(len(batch))  # when to look again (a hint)

Neither blocks the event loop or raises; a limiter with no applicable
policy grants everything (`limiter.unlimited` is True then). Use `acquire`
where actions share a bucket (USER, CHANNEL, RULE scopes): it is fair
between them, polling with try_acquire is not.

Each policy is one token bucket refilled at `limit` tokens per second. The
bucket holds at most BURST_SECONDS of tokens, so over any window of T
seconds at most limit * (T + BURST_SECONDS) records pass: a one-second
measurement of a 100 TPS policy sees at most 110, a ten-second one at most
101 per second on average. The burst is what lets a batch go out whole
instead of one record at a time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable

from engine.config.models import FlowControlPolicy

BURST_SECONDS = 0.1
"""A bucket holds this many seconds' worth of tokens (at least 1 token)."""
WAKE_SECONDS = 0.01
"""A waiting limiter wakes when this many seconds' worth of tokens (at least
1) are there: at most 100 wake-ups per second, batches of limit/100."""


class TokenBucket:
    """`rate` tokens per second, at most `capacity` stored. Not thread-safe:
    used from the event loop only, where no await separates check and take."""

    __slots__ = ("policy_id", "rate", "capacity", "wake", "tokens", "_stamp", "_clock")

    def __init__(self, policy_id: str, rate: float, clock: Callable[[], float]) -> None:
        self.policy_id = policy_id
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate * BURST_SECONDS)
        self.wake = max(1.0, self.rate * WAKE_SECONDS)
        self._clock = clock
        self._stamp = clock()
        self.tokens = self.capacity  # start full: the first batch need not wait

    def refill(self) -> float:
        now = self._clock()
        elapsed = now - self._stamp
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self._stamp = now
        return self.tokens

    def delay_for(self, n: float) -> float:
        """Seconds until the bucket holds min(n, WAKE_SECONDS worth) tokens
        (after refill()). Waiting for a full burst instead would starve a
        large-batch action on a bucket shared with a small-batch one: the
        small one would always grab the tokens first."""
        missing = min(n, self.wake) - self.tokens
        return missing / self.rate if missing > 0 else 0.0


class Limiter:
    """The buckets of every policy applying to one action."""

    __slots__ = ("buckets", "limited_by")

    def __init__(self, buckets: Iterable[TokenBucket]) -> None:
        self.buckets = tuple(buckets)
        self.limited_by: str | None = None
        """policy_id of the policy that last held records back (for logs/metrics)."""

    @property
    def unlimited(self) -> bool:
        return not self.buckets

    @property
    def policy_ids(self) -> list[str]:
        return [b.policy_id for b in self.buckets]

    def try_acquire(self, n: int) -> int:
        """Take up to n tokens from every bucket at once; return how many
        records (0..n) may be sent now. The tightest bucket decides."""
        if not self.buckets or n <= 0:
            return max(n, 0)
        tightest = min(self.buckets, key=TokenBucket.refill)
        # max(0, ...): acquire() may have put the buckets into debt.
        k = max(0, min(n, math.floor(tightest.tokens + 1e-6)))  # +1e-6: float refill
        if k < n:
            self.limited_by = tightest.policy_id
        if k > 0:
            for b in self.buckets:
                b.tokens -= k
        return k

    def delay_until_available(self, n: int = 1) -> float:
        """Seconds until `try_acquire(n)` grants min(n, limit x WAKE_SECONDS,
        at least 1) records, unless another action sharing a bucket takes
        them first (0.0 if it would now)."""
        if not self.buckets or n <= 0:
            return 0.0
        for b in self.buckets:
            b.refill()
        return max(b.delay_for(n) for b in self.buckets)

    async def acquire(self, n: int) -> int:
        """Wait until records may go; return how many (1..n). Fair between
        actions sharing a bucket: when nothing is available the caller
        reserves its share at once (the buckets go into debt) and sleeps
        until it is paid for, so later callers queue behind it. (Polling
        with try_acquire lets whoever wakes first take everything.)"""
        if n <= 0:
            return 0
        k = self.try_acquire(n)
        if k or not self.buckets:
            return k
        k = min(n, math.floor(min(b.wake for b in self.buckets)))
        for b in self.buckets:
            b.tokens -= k
        await asyncio.sleep(max(-b.tokens / b.rate for b in self.buckets))
        return k


class FlowControl:
    """All flow-control policies of an engine and their shared buckets."""

    def __init__(self, policies: Iterable[FlowControlPolicy] = (), *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # One bucket per policy: every limiter whose action the policy covers
        # gets the same object, which is what makes USER/CHANNEL/RULE shared.
        self.policies = list(policies)
        self._buckets = [TokenBucket(p.policy_id, p.limit, clock) for p in self.policies]

    def limiter_for(self, rule_id: str, action_id: str, channel: str) -> Limiter:
        target = {"USER": None, "CHANNEL": channel, "RULE": rule_id, "ACTION": action_id}
        return Limiter(b for p, b in zip(self.policies, self._buckets, strict=True)
                       if p.scope == "USER" or p.scope_value == target[p.scope])
