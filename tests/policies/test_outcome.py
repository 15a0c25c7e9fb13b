"""write_sorted: a sink's answer sorted into delivered, permanent and
retryable failures (the one classifier of the runner, the backlog drain and
the dead-letter store); RetryPolicy.steady for waits that keep records in hand."""

from __future__ import annotations

import asyncio

from engine.destinations.base import Failure, Record, Sink, WriteResult
from engine.policies.outcome import write_sorted
from engine.policies.retry import Backoff, RetryPolicy


class Answering(Sink):
    channel = "TEST"

    def __init__(self, answer) -> None:
        self.answer = answer

    async def write(self, records):
        return self.answer(records)


def test_failures_are_sorted_by_position_and_kind():
    records = [Record({"i": i}) for i in range(5)]
    sink = Answering(lambda rs: WriteResult({3: Failure("later", True), 0: Failure("bad", False),
                                             1: Failure("busy", True)}))
    out = asyncio.run(write_sorted(sink, records))
    assert (out.delivered, out.dead, out.retry) == (2, [0], [1, 3])
    assert out.reason in {"later", "bad", "busy"}
    assert asyncio.run(write_sorted(Answering(lambda rs: WriteResult({})), records)).reason is None


def test_a_sink_that_raises_fails_every_record_retryably():
    def boom(records):
        raise ConnectionResetError("gone")
    out = asyncio.run(write_sorted(Answering(boom), [Record({}), Record({})]))
    assert (out.delivered, out.dead, out.retry) == (0, [], [0, 1])
    assert out.reason == "sink raised ConnectionResetError: gone"


def test_steady_policy_doubles_to_its_cap_without_jitter_or_probing():
    backoff = Backoff(RetryPolicy.steady(0.1, 1.0), rand=lambda: 0.0)
    assert [backoff.failure() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert not backoff.probing and backoff.batch_size(500) == 500
