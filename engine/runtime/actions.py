"""One running action: a queue of rule outputs in front of one sink.

The pipeline hands an action `Parcel`s (the outputs of one source batch for
that action) through a bounded queue; a full queue makes the pipeline wait,
which is how a slow destination slows the sources down. The runner takes
whole parcels, writes them in batches of up to `batch_size` and settles each
parcel once every record in it is delivered or dead-lettered.

Failures: a retryable one is retried (only the failed records) with capped
exponential backoff for as long as it takes — the source batch stays unacked
meanwhile, so nothing is lost if the engine stops; a permanent one is
dead-lettered with its reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.destinations.base import Failure, Record, Sink, WriteResult
from engine.runtime.deadletter import DeadLetters
from engine.runtime.metrics import Metrics

log = logging.getLogger(__name__)

PROBLEM_LOG_INTERVAL = 30.0  # a persisting failure is logged again this often


@dataclass(slots=True)
class Parcel:
    records: list[Record]
    settle: Callable[[], None]  # called once, when every record is settled
    received_at: float          # monotonic receipt time of the source batch


class ActionRunner:
    def __init__(self, action_id: str, rule_id: str, sink: Sink, *, metrics: Metrics,
                 dead_letters: DeadLetters, batch_size: int = 500, linger: float = 0.02,
                 max_queued: int = 16, retry_initial: float = 0.1,
                 retry_max: float = 10.0) -> None:
        self.action_id = action_id
        self.rule_id = rule_id
        self.sink = sink
        self.batch_size = batch_size
        self.linger = linger
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.dead_letters = dead_letters
        self.totals = metrics.totals
        self.queue: asyncio.Queue[Parcel] = asyncio.Queue(max_queued)
        labels = (action_id, rule_id, sink.channel)
        self._matched = metrics.action_matched.labels(*labels)
        self._forwarded = metrics.action_forwarded.labels(*labels)
        self._failed = metrics.action_failed.labels(*labels)
        self._dead = metrics.action_dead_lettered.labels(*labels)
        self._inflight = metrics.action_inflight.labels(*labels)
        self._latency = metrics.latency.labels(*labels)
        self._rule_stats = metrics.rules
        metrics.action_backlogged.labels(*labels)  # exported as 0 until a backlog exists
        self.forwarded = 0        # plain counts of this action, for summaries
        self.dead_lettered = 0
        self._task: asyncio.Task[None] | None = None
        self._problem: str | None = None
        self._problem_logged = 0.0

    async def open(self) -> None:
        await self.sink.open()
        self._task = asyncio.create_task(self._run(), name=f"action {self.action_id}")

    async def close(self) -> None:
        """Stop writing (unsettled parcels stay unacked) and close the sink."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.sink.close()

    async def submit(self, parcel: Parcel) -> None:
        n = len(parcel.records)
        self._matched.inc(n)
        self._inflight.inc(n)
        self.totals.inflight += n
        await self.queue.put(parcel)

    # -- the writer -----------------------------------------------------------

    async def _run(self) -> None:
        queue = self.queue
        while True:
            parcels = [await queue.get()]
            n = len(parcels[0].records)
            if n < self.batch_size and queue.empty() and self.linger:
                await asyncio.sleep(self.linger)  # let a partial batch fill up a little
            while n < self.batch_size and not queue.empty():
                p = queue.get_nowait()
                parcels.append(p)
                n += len(p.records)
            records = [r for p in parcels for r in p.records]
            for i in range(0, len(records), self.batch_size):
                await self._deliver(records[i:i + self.batch_size])
            now = time.monotonic()
            for p in parcels:
                self._latency.observe(now - p.received_at)
                p.settle()

    async def _deliver(self, records: list[Record]) -> None:
        delay = self.retry_initial
        attempts = 0
        while True:
            attempts += 1
            try:
                result = await self.sink.write(records)
            except Exception as e:  # the contract says write never raises; be safe
                result = WriteResult.all_failed(len(records), f"sink raised {type(e).__name__}: {e}",
                                                True)
            failures = result.failures
            self._settled(len(records) - len(failures), forwarded=True)
            if not failures:
                if self._problem is not None:
                    log.info("action %s: delivering again (after %d attempts)", self.action_id,
                             attempts)
                    self._problem = None
                return
            self._failed.inc(len(failures))
            retry = [i for i, f in failures.items() if f.retryable]
            dead = [i for i, f in failures.items() if not f.retryable]
            if dead:
                await self._dead_letter([records[i] for i in dead], [failures[i] for i in dead])
            if not retry:
                return
            self.totals.retried += len(retry)
            self._report(f"{len(retry)} record(s) failed: {failures[retry[0]].reason}; "
                         f"retrying (attempt {attempts}, next in {delay:g}s)")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max)
            records = [records[i] for i in sorted(retry)]

    async def _dead_letter(self, records: list[Record], failures: list[Failure]) -> None:
        entries = [{"reason": f.reason, "source": f"action:{self.action_id}",
                    "rule_id": r.rule_id, "action_id": r.action_id, "key": r.key,
                    "payload": r.payload} for r, f in zip(records, failures, strict=True)]
        log.warning("action %s: %d record(s) dead-lettered: %s", self.action_id, len(records),
                    failures[0].reason)
        await self.dead_letters.write(entries)
        failed = self._rule_stats.failed
        failed[self.rule_id] = failed.get(self.rule_id, 0) + len(records)
        self._settled(len(records), forwarded=False)

    def _settled(self, n: int, *, forwarded: bool) -> None:
        if not n:
            return
        (self._forwarded if forwarded else self._dead).inc(n)
        self._inflight.dec(n)
        t = self.totals
        t.inflight -= n
        if forwarded:
            t.forwarded += n
            self.forwarded += n
        else:
            t.dead_lettered += n
            self.dead_lettered += n

    def _report(self, problem: str) -> None:
        """One log line per problem: when it starts, then every 30 s."""
        now = time.monotonic()
        if self._problem is None or now - self._problem_logged >= PROBLEM_LOG_INTERVAL:
            log.warning("action %s: %s", self.action_id, problem)
            self._problem_logged = now
        self._problem = problem
