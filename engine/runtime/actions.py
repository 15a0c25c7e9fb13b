"""One running action: a queue of rule outputs in front of one sink.

The pipeline hands an action `Parcel`s (the outputs of one source batch for
that action) through a bounded queue; a full queue makes the pipeline wait,
which is how a slow destination slows the sources down. The runner takes
whole parcels, writes them in batches of up to `batch_size` and settles each
parcel once every record in it is delivered, in the durable backlog, or
dead-lettered - only then may the source batch be acknowledged.

Flow control (`limiter`, engine.policies.flowcontrol) applies to every
write: records wait for it; a batch the limit would hold back longer than
FLOW_WAIT goes to the backlog instead (sent later, as the limit allows).

One delivery path, through the action's backlog (engine.policies.backlog:
the durable one `Worker.from_config` builds, or - for a runner built
without one, in tests and embedded use - `Backlog.in_memory`, which the
runner owns and the worker drains before it ends):

* a retryable failure (destination down, timeout, throttled) appends the
  failed records to the action's backlog - committed to disk - and the
  parcel settles, so the source batch is acked without waiting for the
  destination;
* while the action's backlog is not empty, new records are appended behind
  it (a device's new records never overtake its old ones), and one drain
  task per action sends the backlog oldest first with `drain_step`:
  exponential backoff with jitter, a destination that stays down is probed;
* records the backlog expires or refuses (stacking disabled by a 0 policy)
  are dead-lettered there, with the reason, and counted here.

A permanent failure is dead-lettered with its reason.

Counting (per action, see engine.runtime.metrics): matched + restored =
forwarded + backlogged + dead_lettered + inflight at every scrape; counters
move once per batch, never per record.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from engine.destinations.base import Failure, Record, Sink
from engine.policies.backlog import Backlog
from engine.policies.deadletters import entry
from engine.policies.drain import drain_step
from engine.policies.flowcontrol import Limiter
from engine.policies.outcome import write_sorted
from engine.policies.retry import Backoff, RetryPolicy
from engine.runtime.deadletter import DeadLetters
from engine.runtime.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

PROBLEM_LOG_INTERVAL = 30.0  # a persisting failure is logged again this often
FLOW_WAIT = 1.0              # longest a batch waits for flow control before going to the backlog
EXPIRE_INTERVAL = 1.0        # seconds between backlog expiry rounds (backlog_time bounds)
STORE_RETRY_MAX = 30.0       # cap of the wait between attempts to write the backlog itself


@dataclass(slots=True)
class _Counted:
    """How much of one action's backlog counters is already in the metrics,
    and the action's drain coordination. Shared by every runner of that
    action on that backlog (a reload may run an old and a new one side by
    side for a moment), so nothing is counted twice and one drain step runs
    at a time (two would send the same oldest entries)."""

    in_backlog: int = 0
    expired: int = 0
    refused: int = 0
    restored: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # the backlog grew
    drain_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_COUNTED: weakref.WeakKeyDictionary[Backlog, dict[str, _Counted]] = weakref.WeakKeyDictionary()


@dataclass(slots=True)
class Parcel:
    records: list[Record]
    settle: Callable[[], None]  # called once, when every record is settled
    received_at: float          # monotonic receipt time of the source batch


class ActionRunner:
    def __init__(self, action_id: str, rule_id: str, sink: Sink, *, metrics: Metrics,
                 dead_letters: DeadLetters, batch_size: int = 500, linger: float = 0.0,
                 max_queued: int = 16, retry_initial: float = 0.1,
                 retry_max: float = 10.0, limiter: Limiter | None = None,
                 backlog: Backlog | None = None, retry_policy: RetryPolicy | None = None) -> None:
        self.action_id = action_id
        self.rule_id = rule_id
        self.error_action = False   # receives the rule's dead letters (engine.runtime.worker)
        self.sink = sink
        self.batch_size = batch_size
        self.linger = linger
        self.dead_letters = dead_letters
        self.limiter = limiter or Limiter(())  # no policy: unlimited
        # No backlog given: an in-memory one of its own (retried with
        # retry_initial/retry_max), opened and closed with the runner.
        self.owns_backlog = backlog is None
        if backlog is None:
            backlog = Backlog.in_memory(dead_letters)
            retry_policy = retry_policy or RetryPolicy(initial=retry_initial, cap=retry_max)
        self.backlog = backlog
        self.retry_policy = retry_policy or RetryPolicy()
        backlog.add_action(action_id, rule_id, sink.channel)
        self._counted = _COUNTED.setdefault(backlog, {}).setdefault(action_id, _Counted())
        self.queue: asyncio.Queue[Parcel] = asyncio.Queue(max_queued)
        labels = (action_id, rule_id, sink.channel)
        self._log = {"action_id": action_id, "rule_id": rule_id}  # fields of its log lines
        # The action's counts (shared with a runner replacing this one): what
        # /metrics, the status line and the API read.
        self.counts = metrics.actions.of(*labels)
        self._latency = metrics.latency.labels(*labels)
        self._rule_stats = metrics.rules
        # A reload removed the action (set by the worker): it gets no new
        # records and drains only what its backlog holds.
        self.removed = False
        self.draining = True  # False: the backlog is another runner's now
        self._drain_wake = self._counted.wake
        self._tasks: list[asyncio.Task[None]] = []
        self._drain_task: asyncio.Task[None] | None = None
        self._stepping = False  # a drain step (a write from the backlog) is under way
        self._closing = False   # close() began: the drain takes no new step
        self._problem: str | None = None
        self._problem_logged = 0.0

    async def open(self) -> None:
        """Open the sink and start writing. What an earlier run left in the
        backlog (opened before, unless the runner owns it) is counted as
        restored and drained first."""
        if self.owns_backlog:
            await self.backlog.open()
        await self.sink.open()
        self._tasks.append(asyncio.create_task(self._run(), name=f"action {self.action_id}"))
        if not self._counted.restored:  # the first runner of the action after start-up
            self._counted.restored = True
            restored = self.backlog.size(self.action_id)[0]
            if restored:
                self.counts.restored += restored
                log.info("%d record(s) in the backlog from an earlier run; draining them "
                         "first", restored, extra=self._log)
        self.sync_backlog()
        self._drain_wake.set()
        self._drain_task = asyncio.create_task(self._drain(), name=f"backlog {self.action_id}")
        self._tasks.append(self._drain_task)

    async def close(self, grace: float = 0.0) -> None:
        """Stop writing (unsettled parcels stay unacked, the backlog stays on
        disk) and close the sink. A drain step under way is let finish - cut
        off, its write would be sent again (by the runner that has the
        backlog, or at the next start): a replaced runner's always (its
        write has a timeout), otherwise for up to `grace` seconds (the
        worker's shutdown time left)."""
        self._closing = True  # no drain step after the one under way
        step = self._drain_task if self._stepping else None
        if step is not None and self.draining and grace > 0:
            await asyncio.wait({step}, timeout=grace)
        for task in self._tasks:
            if not (task is step and not self.draining):
                task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []
        if self.draining and (left := self.backlog.size(self.action_id)[0]):
            if not self.backlog.durable:
                log.warning("action %s: %d record(s) in its in-memory backlog are lost (a "
                            "runner built without a backlog keeps nothing on disk)",
                            self.action_id, left, extra=self._log)
            elif self.removed:
                log.warning("action %s (removed by a reload): %d record(s) stay in the backlog "
                            "(%s); a start without this action dead-letters them", self.action_id,
                            left, self.backlog.path)
            else:
                log.warning("action %s: %d record(s) stay in the backlog (%s); they are "
                            "delivered first on the next start", self.action_id, left,
                            self.backlog.path, extra=self._log)
        await self.sink.close()
        if self.owns_backlog:
            await self.backlog.close()

    def stop_draining(self) -> None:
        """Leave the action's backlog to another runner (a reload replaced
        this one): the drain ends after the step it is in, if any."""
        self.draining = False
        self._drain_wake.set()

    async def submit(self, parcel: Parcel) -> None:
        n = len(parcel.records)
        self.counts.matched += n
        self.counts.inflight += n
        await self.queue.put(parcel)

    # -- the writer -----------------------------------------------------------

    async def _run(self) -> None:
        """Take parcels and write them in rounds of up to batch_size records:
        what is queued when a write slot is free (after `linger`, if set and
        the batch is partial). Up to `sink.writes_in_flight` rounds are
        under way at once; each handles its outcome (counts, backlog,
        settling) only after the previous round has, so the backlog
        receives records in order."""
        queue = self.queue
        slots = asyncio.Semaphore(max(1, self.sink.writes_in_flight))
        rounds: set[asyncio.Task[None]] = set()
        previous: asyncio.Future[None] | None = None
        try:
            while True:
                parcels = [await queue.get()]
                # A free write slot first: while the writes under way take
                # their time, parcels queue, and the round takes them all -
                # batches grow with the arrival rate, with no timer.
                await slots.acquire()
                n = len(parcels[0].records)
                if n < self.batch_size and queue.empty() and self.linger:
                    await asyncio.sleep(self.linger)  # let a partial batch fill up a little
                while n < self.batch_size and not queue.empty():
                    p = queue.get_nowait()
                    parcels.append(p)
                    n += len(p.records)
                done = asyncio.get_running_loop().create_future()
                task = asyncio.create_task(self._round(parcels, previous, done))
                rounds.add(task)

                def ended(t: asyncio.Task[None]) -> None:
                    rounds.discard(t)
                    slots.release()
                    self._crashed(t)

                task.add_done_callback(ended)
                previous = done
        finally:
            for task in rounds:
                task.cancel()
            await asyncio.gather(*rounds, return_exceptions=True)

    def _crashed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (e := task.exception()) is not None:
            # A bug, not a delivery problem: its parcels stay unsettled (their
            # source batches unacked, redelivered after a restart).
            log.error("action %s: write round failed: %s: %s", self.action_id,
                      type(e).__name__, e, exc_info=e, extra=self._log)

    async def _round(self, parcels: list[Parcel], previous: asyncio.Future[None] | None,
                     done: asyncio.Future[None]) -> None:
        try:
            records = [r for p in parcels for r in p.records]
            # One flow-control wait for the whole round, not one per batch.
            deadline = time.monotonic() + FLOW_WAIT
            for i in range(0, len(records), self.batch_size):
                await self._deliver(records[i:i + self.batch_size], deadline, previous)
                previous = None  # its turn came before the first batch's outcome
            await _after(previous)
            now = time.monotonic()
            for p in parcels:
                self._latency.observe(now - p.received_at)
                p.settle()
        finally:
            done.set_result(None)

    async def _deliver(self, records: list[Record], deadline: float,
                       previous: asyncio.Future[None] | None = None) -> None:
        """Deliver within the flow limit, or put in the backlog what cannot
        be delivered now (failed retryably, or held back by flow control
        past `deadline`). Returns once every record is settled. The outcome
        is handled - records counted, kept or dead-lettered - only once
        `previous` (the round before, writing concurrently) is done."""
        backlog, limiter = self.backlog, self.limiter
        if backlog.size(self.action_id)[0]:  # keep per-device order: behind the backlog
            await _after(previous)
            await self._keep(records, "queued behind the backlog", behind=True)
            return
        throttled = False
        while records:
            k = limiter.try_acquire(len(records))
            if k < len(records) and not throttled:  # count each record once
                throttled = True
                self.counts.throttled += len(records) - k
            if not k:
                wait = limiter.delay_until_available(len(records))
                if not backlog.stacking(self.action_id):
                    k = await limiter.acquire(len(records))  # nowhere to keep them: wait
                elif time.monotonic() + wait > deadline:
                    await _after(previous)
                    await self._keep(records, f"held back by flow control policy "
                                              f"{limiter.limited_by}")
                    return
                else:
                    await asyncio.sleep(wait)
                    continue
            batch, records = records[:k], records[k:]
            retry, reason = await self._write_once(batch, previous)
            previous = None
            if retry:
                if backlog.stacking(self.action_id):  # these and the rest, in order
                    self._count_retried(len(retry))
                    await self._keep(retry + records, reason)
                    return
                await self._keep(retry, reason)  # stacking disabled: dead-lettered, with reason
        await _after(previous)
        self._recovered()

    async def _write_once(self, records: list[Record], previous: asyncio.Future[None] | None = None
                          ) -> tuple[list[Record], str | None]:
        """One write. Counts what was delivered, dead-letters permanent
        failures; returns the records that failed retryably (in order) and
        the first reason. Delivered and dead-lettered records leave the
        in-flight count when they are counted (no await in between: the
        counts balance at every scrape). The outcome is handled after
        `previous` is done."""
        outcome = await write_sorted(self.sink, records)
        await _after(previous)
        self._count_forwarded(outcome.delivered)
        self._out(outcome.delivered)
        if not outcome.failures:
            return [], None
        self.counts.failed += len(outcome.failures)
        if outcome.dead:
            await self._dead_letter([records[i] for i in outcome.dead],
                                    [outcome.failures[i] for i in outcome.dead])
        return [records[i] for i in outcome.retry], outcome.reason

    async def _keep(self, records: list[Record], reason: str | None, *,
                    behind: bool = False) -> None:
        """Append to the backlog; return once committed (or dead-lettered,
        when a 0 policy disables stacking) and the action's size bounds are
        kept again. `behind`: queued only to stay behind older records
        (nothing failed: not reported). If the backlog itself cannot be
        written, keep trying: the records stay in memory, the batch unacked."""
        appended = await self._retrying(
            lambda: self.backlog.store(self.action_id, records, reason),
            f"cannot write the backlog; {len(records)} record(s) stay unacked")
        # Out of flight in the step the backlog counted them in (no await
        # in between): the counts balance at every scrape.
        self._out(len(records))
        self.sync_backlog()
        if appended.stored:
            self.counts.appended += appended.stored
            if not behind:
                self._report(f"{appended.stored} record(s) kept in the backlog", reason)
            self._drain_wake.set()
            # Stored already: a failure here is retried alone (retrying the
            # store would keep the records twice).
            await self._retrying(lambda: self.backlog.trim(self.action_id),
                                 "cannot dead-letter the backlog entries past its size "
                                 "bound; the batch stays unacked")
            self.sync_backlog()

    async def _retrying(self, call: Callable[[], Awaitable[T]], problem: str) -> T:
        """`call()` until the backlog's storage answers (SQLite, disk or
        dead-letter store errors are reported and retried)."""
        backoff = Backoff(RetryPolicy.steady(0.1, STORE_RETRY_MAX))
        while True:
            try:
                return await call()
            except (sqlite3.Error, OSError) as e:
                delay = backoff.failure()
                self._report(f"{problem}, retrying in {delay:g}s", f"{type(e).__name__}: {e}")
                await asyncio.sleep(delay)

    # -- the backlog drain ------------------------------------------------------

    async def _drain(self) -> None:
        """Send the backlog oldest first while it is not empty (one task per
        action, so at most one write at a time from the backlog)."""
        backlog, action_id = self.backlog, self.action_id
        backoff = Backoff(self.retry_policy)
        lock = self._counted.drain_lock
        while self._may_step:
            if not backlog.size(action_id)[0]:
                self._drain_wake.clear()
                await self._drain_wake.wait()
                continue
            async with lock:
                if not self._may_step:
                    return
                self._stepping = True
                try:
                    step = await drain_step(backlog, action_id, self.sink, limiter=self.limiter,
                                            backoff=backoff, dead_letters=self.dead_letters,
                                            batch_size=self.batch_size)
                finally:
                    self._stepping = False
            self._count_forwarded(step.delivered)
            if step.dead_lettered:
                log.warning("%d record(s) dead-lettered", step.dead_lettered,
                            extra={**self._log, "reason": step.reason})
                self._count_dead(step.dead_lettered)
            if step.failed or step.dead_lettered:
                self.counts.failed += step.failed + step.dead_lettered
            self.sync_backlog()
            if step.failed:
                self._count_retried(step.failed)
                how = ("probing every ~" if backoff.probing else "next attempt in ")
                self._report(f"{step.failed} record(s) failed; "
                             f"{self._counted.in_backlog} in the backlog, "
                             f"{how}{step.wait:.1f}s", step.reason)
            elif step.delivered:
                self._recovered()
            if step.wait and self._may_step:
                await asyncio.sleep(step.wait)

    @property
    def _may_step(self) -> bool:
        """The drain may take another step: the backlog is this runner's and
        it is not closing."""
        return self.draining and not self._closing

    def sync_backlog(self) -> None:
        """Bring the backlog gauges and the dead-letter count up to date with
        the backlog's own counters (expiry and refusals happen inside it)."""
        s, c = self.backlog.stats(self.action_id), self._counted
        expired, refused = s.expired - c.expired, s.refused - c.refused
        if expired or refused:
            c.expired, c.refused = s.expired, s.refused
            self.counts.expired += expired
            self._count_dead(expired + refused)
        c.in_backlog = s.count
        self.counts.backlogged = s.count
        self.counts.backlog_bytes = s.bytes

    # -- counting and logging ------------------------------------------------

    async def _dead_letter(self, records: list[Record], failures: list[Failure]) -> None:
        source = f"action:{self.action_id}"
        log.warning("%d record(s) dead-lettered", len(records),
                    extra={**self._log, "reason": failures[0].reason})
        await self.dead_letters.write([entry(r, f.reason, source)
                                       for r, f in zip(records, failures, strict=True)])
        self._count_dead(len(records))
        self._out(len(records))

    def _out(self, n: int) -> None:
        """n records handed over by the pipeline are settled (counted elsewhere)."""
        if n:
            self.counts.inflight -= n

    def _count_forwarded(self, n: int) -> None:
        if n:
            self.counts.forwarded += n

    def _count_retried(self, n: int) -> None:
        self.counts.retried += n

    def _count_dead(self, n: int) -> None:
        if n:
            self.counts.dead_lettered += n
            failed = self._rule_stats.failed
            failed[self.rule_id] = failed.get(self.rule_id, 0) + n

    def _report(self, problem: str, reason: str | None = None) -> None:
        """One log line per problem: when it starts, then every 30 s."""
        now = time.monotonic()
        if self._problem is None or now - self._problem_logged >= PROBLEM_LOG_INTERVAL:
            log.warning("%s", problem, extra={**self._log, "reason": reason})
            self._problem_logged = now
        self._problem = problem

    def _recovered(self) -> None:
        if self._problem is not None:
            log.info("delivering again", extra=self._log)
            self._problem = None


async def _after(previous: asyncio.Future[None] | None) -> None:
    if previous is not None and not previous.done():
        await previous


async def expire_periodically(backlog: Backlog,
                              runners: Callable[[], Iterable[ActionRunner]]) -> None:
    """Apply the backlog_time bounds every EXPIRE_INTERVAL seconds (expired
    entries are dead-lettered inside the backlog) and update the runners'
    counts. `runners` is called each round: the set may change (reload)."""
    while True:
        await asyncio.sleep(EXPIRE_INTERVAL)
        try:
            expired = await backlog.expire()
        except (sqlite3.Error, OSError) as e:
            log.error("backlog expiry failed: %s: %s (retrying)", type(e).__name__, e)
            continue
        if expired:
            log.warning("backlog: %d record(s) expired and dead-lettered, first: %s",
                        len(expired), expired[0][1])
        for runner in runners():
            if runner.backlog is backlog:
                runner.sync_backlog()
