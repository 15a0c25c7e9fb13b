"""An action with a sink that allows several writes under way at once
(`Sink.writes_in_flight`, the Kafka sink's 2): the next write starts during
the previous one's round trip, yet outcomes are handled in write order, so
records that fail go to the backlog - and come out of it - in order."""

import asyncio
from collections.abc import Sequence

from engine.destinations.base import Failure, Record, WriteResult
from engine.runtime.actions import ActionRunner, Parcel
from engine.runtime.deadletter import DeadLetters
from engine.runtime.metrics import Metrics
from tests.runtime.support import MemorySink


class HeldSink(MemorySink):
    """Each write waits until the test releases it (`release[n]`, n from 0),
    and fails all its records retryably on their first attempt."""

    def __init__(self, in_flight: int) -> None:
        super().__init__()
        self.writes_in_flight = in_flight  # type: ignore[misc]  # per instance, for the test
        self.release: list[asyncio.Event] = [asyncio.Event() for _ in range(10)]
        self.started: list[int] = []
        self.under_way = 0
        self.most_under_way = 0
        self.attempted: set[int] = set()

    async def write(self, records: Sequence[Record]) -> WriteResult:
        n = self.writes
        self.writes += 1
        self.started.append(n)
        self.under_way += 1
        self.most_under_way = max(self.most_under_way, self.under_way)
        try:
            if n < len(self.release):
                await self.release[n].wait()
            failures = {}
            for i, r in enumerate(records):
                if r.payload in self.attempted:
                    self.records.append(r)
                else:
                    self.attempted.add(r.payload)
                    failures[i] = Failure("HTTP 503", True)
            return WriteResult(failures)
        finally:
            self.under_way -= 1


def parcel(first: int, n: int, settled: list[int]) -> Parcel:
    return Parcel([Record(i, "dev-1") for i in range(first, first + n)],
                  lambda: settled.append(first), 0.0)


async def until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def run_three_writes(in_flight: int):
    sink = HeldSink(in_flight)
    runner = ActionRunner("a", "r", sink, metrics=Metrics(), dead_letters=DeadLetters(),
                          batch_size=10, linger=0, retry_initial=0.01, retry_max=0.02)
    await runner.open()
    settled: list[int] = []
    try:
        for first in (0, 10, 20):
            await runner.submit(parcel(first, 10, settled))
        await until(lambda: len(sink.started) == min(in_flight, 3))
        await asyncio.sleep(0.05)
        started_before_release = list(sink.started)
        # The second write ends (fails) before the first.
        for n in (1, 0, 2, *range(3, 10)):
            sink.release[n].set()
            await asyncio.sleep(0.01)
        await until(lambda: len(sink.records) == 30)
        return sink, settled, started_before_release, runner.counts
    finally:
        await runner.close()


async def test_two_writes_under_way_and_failures_kept_in_write_order():
    sink, settled, started, counts = await run_three_writes(2)
    assert started == [0, 1]           # the second write did not wait for the first
    assert sink.most_under_way == 2    # never more than the sink allows
    # Write 1 failed first, yet write 0's records entered the backlog first:
    # delivered from it oldest first, in the order they were handed over.
    assert [r.payload for r in sink.records] == list(range(30))
    assert settled == [0, 10, 20]
    assert counts.forwarded == 30 and counts.inflight == 0 and counts.backlogged == 0


async def test_one_write_at_a_time_by_default():
    sink, settled, started, _ = await run_three_writes(1)
    assert started == [0]
    assert sink.most_under_way == 1
    assert [r.payload for r in sink.records] == list(range(30))
    assert settled == [0, 10, 20]


class SizedSink(MemorySink):
    """Records the size of each write; the first one waits for `release`."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self.release = asyncio.Event()

    async def write(self, records: Sequence[Record]) -> WriteResult:
        self.sizes.append(len(records))
        if len(self.sizes) == 1:
            await self.release.wait()
        return await super().write(records)


async def test_flush_on_idle_and_batches_grow_while_a_write_is_under_way():
    # Default linger (0): a partial batch goes out at once when the action
    # is idle; what arrives during that write goes out together after it.
    sink = SizedSink()
    runner = ActionRunner("a", "r", sink, metrics=Metrics(), dead_letters=DeadLetters(),
                          batch_size=100)
    await runner.open()
    settled: list[int] = []
    try:
        await runner.submit(parcel(0, 3, settled))
        await until(lambda: sink.sizes == [3])     # written without waiting for more
        for first in (3, 6, 9):
            await runner.submit(parcel(first, 3, settled))
            await asyncio.sleep(0.02)  # the writer sees each parcel arrive
        assert sink.sizes == [3]                   # one write at a time
        sink.release.set()
        await until(lambda: len(settled) == 4)
        assert sink.sizes == [3, 9]                # the three queued parcels in one write
        assert [r.payload for r in sink.records] == list(range(12))
    finally:
        await runner.close()
