"""Backoff: exponential bounds with full jitter, cap, probing after a streak."""

from __future__ import annotations

import random

from engine.policies.retry import Backoff, RetryPolicy


def test_full_jitter_stays_under_the_exponential_bound():
    policy = RetryPolicy(initial=0.1, cap=5.0, probe_after=100)
    rng = random.Random(7).random
    for failures in range(1, 30):
        bound = min(5.0, 0.1 * 2 ** (failures - 1))
        delays = [policy.delay(failures, rng) for _ in range(200)]
        assert all(0 <= d <= bound for d in delays)
        assert max(delays) > 0.8 * bound and min(delays) < 0.2 * bound  # spread: full jitter


def test_extremes_of_the_random_draw():
    policy = RetryPolicy(initial=0.1, cap=5.0, probe_after=100)
    assert policy.delay(4, lambda: 1.0) == 0.8
    assert policy.delay(4, lambda: 0.0) == 0.0
    assert policy.delay(50, lambda: 1.0) == 5.0


def test_probing_after_a_streak_then_full_batches_again():
    b = Backoff(RetryPolicy(probe_after=3, probe_interval=30.0, probe_batch=2),
                rand=lambda: 0.5)
    assert b.batch_size(500) == 500
    b.failure()
    b.failure()
    assert not b.probing and b.batch_size(500) == 500
    assert b.failure() == 30.0            # the third failure: probe every 30 s (+-10%)
    assert b.probing and b.batch_size(500) == 2
    assert b.failure() == 30.0
    b.success()
    assert not b.probing and b.batch_size(500) == 500 and b.failures == 0


def test_probe_interval_is_jittered_by_ten_percent():
    policy = RetryPolicy(probe_after=1, probe_interval=10.0)
    assert policy.delay(1, lambda: 0.0) == 9.0
    assert policy.delay(1, lambda: 1.0) == 11.0
