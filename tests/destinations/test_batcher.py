"""Batcher with a fake in-memory sink (unit level: no server involved)."""

from __future__ import annotations

import asyncio

import pytest

from engine.destinations.base import Failure, Record, Sink, WriteResult
from engine.destinations.batcher import Batcher


class FakeSink(Sink):
    channel = "FAKE"
    detail_key = "fake"

    def __init__(self, delay: float = 0.0, fail_every: int = 0, raises: bool = False):
        self.batches: list[list[Record]] = []
        self.delay, self.fail_every, self.raises = delay, fail_every, raises
        self.in_flight = 0
        self.max_in_flight = 0

    async def write(self, records):
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.raises:
                raise RuntimeError("boom")
            self.batches.append(list(records))
            fails = {i: Failure("no", False) for i in range(len(records))
                     if self.fail_every and i % self.fail_every == 0}
            return WriteResult(fails)
        finally:
            self.in_flight -= 1


def recs(n: int, size: int = 10) -> list[Record]:
    return [Record({"i": i, "pad": "x" * size}) for i in range(n)]


class Results:
    def __init__(self):
        self.calls: list[tuple[list[Record], WriteResult]] = []

    def __call__(self, batch, result):
        self.calls.append((batch, result))


async def test_batches_by_count_keeping_order():
    sink, res = FakeSink(), Results()
    b = Batcher(sink, res, max_count=3, max_linger_s=10)
    for r in recs(7):
        await b.add(r)
    await b.close()
    assert [len(x) for x in sink.batches] == [3, 3, 1]
    assert [r.payload["i"] for x in sink.batches for r in x] == list(range(7))
    assert len(res.calls) == 3 and all(r.ok for _, r in res.calls)


async def test_batches_by_bytes():
    sink, res = FakeSink(), Results()
    one = len(b'{"i":0,"pad":"xxxxxxxxxx"}')
    b = Batcher(sink, res, max_count=1000, max_bytes=3 * one, max_linger_s=10)
    for r in recs(7):
        await b.add(r)
    await b.close()
    assert sum(len(x) for x in sink.batches) == 7
    assert max(len(x) for x in sink.batches) <= 3


async def test_oversized_record_goes_alone():
    sink, res = FakeSink(), Results()
    b = Batcher(sink, res, max_bytes=50, max_linger_s=10)
    await b.add(Record({"i": 1}))
    await b.add(Record({"big": "y" * 500}))
    await b.add(Record({"i": 2}))
    await b.close()
    assert [[r.payload for r in x] for x in sink.batches] == [
        [{"i": 1}], [{"big": "y" * 500}], [{"i": 2}]]


async def test_linger_sends_a_partial_batch_without_flush():
    sink, res = FakeSink(), Results()
    b = Batcher(sink, res, max_count=1000, max_linger_s=0.02)
    for r in recs(5):
        await b.add(r)
    for _ in range(200):  # bounded wait: up to 2 s
        if sink.batches:
            break
        await asyncio.sleep(0.01)
    assert [len(x) for x in sink.batches] == [5]
    await b.close()
    assert len(res.calls) == 1


async def test_in_flight_window_is_bounded():
    sink, res = FakeSink(delay=0.02), Results()
    b = Batcher(sink, res, max_count=2, max_in_flight=2, max_linger_s=10)
    for r in recs(20):
        await b.add(r)
    await b.close()
    assert sink.max_in_flight == 2
    assert sum(len(x) for x in sink.batches) == 20


async def test_failures_reported_with_batch_indices():
    sink, res = FakeSink(fail_every=2), Results()
    b = Batcher(sink, res, max_count=4, max_linger_s=10)
    for r in recs(4):
        await b.add(r)
    await b.close()
    (batch, result), = res.calls
    assert sorted(result.failures) == [0, 2]
    assert [batch[i].payload["i"] for i in result.failures] == [0, 2]


async def test_a_raising_sink_becomes_retryable_failures():
    sink, res = FakeSink(raises=True), Results()
    b = Batcher(sink, res, max_count=3, max_linger_s=10)
    for r in recs(3):
        await b.add(r)
    await b.close()
    (_, result), = res.calls
    assert len(result.failures) == 3
    assert all(f.retryable and "boom" in f.reason for f in result.failures.values())


async def test_add_after_close_is_refused():
    b = Batcher(FakeSink(), Results())
    await b.close()
    with pytest.raises(RuntimeError):
        await b.add(Record({}))
