"""Flow control: which policies apply, how they combine, shared buckets, and
the delivered rate measured over a fixed wall-clock window."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine.config import FlowControlPolicy
from engine.policies.flowcontrol import BURST_SECONDS, FlowControl
from tests.policies.support import Clock


@pytest.fixture
def clock() -> Clock:
    # Near 0 like time.monotonic(): float steps at 1.7e9 (a wall clock) are 2e-7 s.
    return Clock(0.0)


def fc(pid: str, limit: int, scope: str = "USER", value: str | None = None) -> FlowControlPolicy:
    return FlowControlPolicy(policy_id=pid, scope=scope, scope_value=value, limit=limit)


POLICIES = [
    fc("user", 1000),
    fc("http", 500, "CHANNEL", "HTTP_FORWARDING"),
    fc("rule-r1", 200, "RULE", "r1"),
    fc("act-a1", 50, "ACTION", "a1"),
]


def test_each_scope_applies_to_its_actions(clock):
    flow = FlowControl(POLICIES, clock=clock)
    assert flow.limiter_for("r1", "a1", "HTTP_FORWARDING").policy_ids == [
        "user", "http", "rule-r1", "act-a1"]
    assert flow.limiter_for("r1", "a2", "KAFKA_FORWARDING").policy_ids == ["user", "rule-r1"]
    assert flow.limiter_for("r2", "a3", "HTTP_FORWARDING").policy_ids == ["user", "http"]
    assert flow.limiter_for("r2", "a4", "AMQP_FORWARDING").policy_ids == ["user"]


def test_no_policy_means_unlimited(clock):
    limiter = FlowControl([], clock=clock).limiter_for("r", "a", "HTTP_FORWARDING")
    assert limiter.unlimited
    assert limiter.try_acquire(1_000_000) == 1_000_000
    assert limiter.delay_until_available(10) == 0.0


def test_tightest_policy_holds_back_and_is_named(clock):
    flow = FlowControl(POLICIES, clock=clock)
    limiter = flow.limiter_for("r1", "a1", "HTTP_FORWARDING")
    # Buckets start with BURST_SECONDS of tokens; the 50 TPS action policy has 5.
    assert limiter.try_acquire(100) == 5
    assert limiter.limited_by == "act-a1"
    assert limiter.try_acquire(1) == 0
    assert limiter.delay_until_available(1) == pytest.approx(1 / 50)
    clock.advance(0.04)  # 2 tokens at 50/s
    assert limiter.try_acquire(10) == 2


def test_a_grant_is_taken_from_every_applicable_bucket(clock):
    flow = FlowControl([fc("user", 100), fc("act", 1000, "ACTION", "a1")], clock=clock)
    a1 = flow.limiter_for("r1", "a1", "HTTP_FORWARDING")
    assert a1.try_acquire(1000) == 10        # the USER bucket (10 tokens) is tighter
    assert a1.limited_by == "user"
    a2 = flow.limiter_for("r1", "a2", "HTTP_FORWARDING")
    assert a2.try_acquire(1) == 0            # the USER bucket is shared and empty
    clock.advance(1.0)
    assert a2.try_acquire(1000) == 10        # refilled to its burst, not to 100


@pytest.mark.parametrize("scope,value", [("USER", None), ("CHANNEL", "HTTP_FORWARDING"),
                                         ("RULE", "r1")])
def test_shared_scopes_share_one_bucket(clock, scope, value):
    flow = FlowControl([fc("p", 100, scope, value)], clock=clock)
    a = flow.limiter_for("r1", "a1", "HTTP_FORWARDING")
    b = flow.limiter_for("r1", "a2", "HTTP_FORWARDING")
    assert a.buckets[0] is b.buckets[0]
    assert a.try_acquire(7) == 7
    assert b.try_acquire(7) == 3


def test_action_scope_is_not_shared(clock):
    flow = FlowControl([fc("p1", 100, "ACTION", "a1"), fc("p2", 100, "ACTION", "a2")],
                       clock=clock)
    a = flow.limiter_for("r1", "a1", "HTTP_FORWARDING")
    b = flow.limiter_for("r1", "a2", "HTTP_FORWARDING")
    assert a.try_acquire(10) == 10 and b.try_acquire(10) == 10


def test_limits_above_iotda_1000_tps_are_accepted(clock):
    flow = FlowControl([fc("big", 200_000)], clock=clock)
    limiter = flow.limiter_for("r", "a", "KAFKA_FORWARDING")
    assert limiter.try_acquire(50_000) == 200_000 * BURST_SECONDS
    clock.advance(0.01)
    assert limiter.try_acquire(50_000) == 2000


def test_simulated_rate_is_exact_with_a_fake_clock(clock):
    """10 simulated seconds in 1 ms steps: 100 TPS gives 100 per second (plus the burst)."""
    limiter = FlowControl([fc("p", 100)], clock=clock).limiter_for("r", "a", "HTTP_FORWARDING")
    per_second = []
    for _ in range(10):
        n = 0
        for _ in range(1000):
            n += limiter.try_acquire(500)
            clock.advance(0.001)
        per_second.append(n)
    assert 109 <= per_second[0] <= 110     # the initial burst of 10 + 100 per second
    assert all(95 <= n <= 105 for n in per_second[1:]), per_second


def test_held_back_records_are_not_lost(clock):
    """try_acquire only grants; the caller keeps the rest and sends it later."""
    limiter = FlowControl([fc("p", 10)], clock=clock).limiter_for("r", "a", "HTTP_FORWARDING")
    pending = list(range(25))
    sent: list[int] = []
    while pending:
        k = limiter.try_acquire(len(pending))
        sent += pending[:k]
        del pending[:k]
        clock.advance(max(limiter.delay_until_available(len(pending) or 1), 0.001))
    assert sent == list(range(25))


WINDOW_S = 3.0


async def _consume(limiter, batch: int, until: float) -> int:
    """Send as fast as the limiter allows until `until`; count what was granted."""
    n = 0
    while True:
        k = await limiter.acquire(batch)
        if time.monotonic() >= until:
            return n
        n += k
        await asyncio.sleep(0)  # a real runner awaits its write here


async def test_rate_over_a_wall_clock_window():
    """Real clock, 3 s window, three consumers at once: a 100 TPS policy alone,
    and two actions sharing a 200 TPS USER policy, one of them also capped at
    50 TPS by an ACTION policy. Counts must be within 10% of limit x window
    (plus the burst), robust on a loaded 2-core machine because a late wakeup
    leaves the tokens in the bucket."""
    alone = FlowControl([fc("p", 100)]).limiter_for("r", "a", "HTTP_FORWARDING")
    shared = FlowControl([fc("user", 200), fc("act", 50, "ACTION", "a1")])
    a1 = shared.limiter_for("r1", "a1", "HTTP_FORWARDING")
    a2 = shared.limiter_for("r1", "a2", "HTTP_FORWARDING")
    until = time.monotonic() + WINDOW_S
    n_alone, n_a1, n_a2 = await asyncio.gather(
        _consume(alone, 500, until), _consume(a1, 500, until), _consume(a2, 7, until))
    print(f"\nflow control over {WINDOW_S:g} s: 100 TPS alone -> {n_alone} "
          f"({n_alone / WINDOW_S:.1f}/s); USER 200 shared -> {n_a1 + n_a2} "
          f"({(n_a1 + n_a2) / WINDOW_S:.1f}/s), of which ACTION 50 -> {n_a1} "
          f"({n_a1 / WINDOW_S:.1f}/s)")
    assert 0.9 * 300 <= n_alone <= 1.1 * 300 + 10
    assert 0.9 * 600 <= n_a1 + n_a2 <= 1.1 * 600 + 20
    assert 0.9 * 150 <= n_a1 <= 1.1 * 150 + 5


async def test_acquire_waits_instead_of_refusing():
    limiter = FlowControl([fc("p", 100)]).limiter_for("r", "a", "HTTP_FORWARDING")
    assert await limiter.acquire(50) == 10          # the burst
    t0 = time.monotonic()
    assert await limiter.acquire(5) == 1            # 1 token = WAKE_SECONDS at 100 TPS
    assert time.monotonic() - t0 < 1.0               # bounded: about 10 ms
    assert limiter.try_acquire(1) == 0               # paid for by waiting, none left


async def test_acquire_queues_callers_on_a_shared_bucket():
    """Two actions on one 100 TPS USER bucket, one asking for 1 record at a
    time, the other for 500: both get served, in turn."""
    flow = FlowControl([fc("user", 100)])
    small = flow.limiter_for("r", "a1", "HTTP_FORWARDING")
    big = flow.limiter_for("r", "a2", "HTTP_FORWARDING")
    small.try_acquire(100)  # empty the burst
    got = await asyncio.gather(*(lim.acquire(n) for _ in range(5)
                                 for lim, n in ((small, 1), (big, 500))))
    assert got == [1] * 10
