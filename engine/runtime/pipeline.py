"""The data path: source batch -> rule set -> actions -> in-order acks.

For each batch of a source:
  1. the compiled rule set evaluates the raw bytes in one call
     (`route_raw_many`; its pre-filter may skip decoding events no rule can
     match; it also reads each matched event's device id and time, the
     record key and time, and gives a rule that forwards the whole
     notification the input bytes, which the sinks forward as they arrived);
  2. malformed inputs are counted and dead-lettered with their reason;
  3. every match becomes one `Record` per action of its rule, grouped into one
     `Parcel` per action, and handed to the `ActionRunner`s (bounded queues:
     a slow destination blocks here, and so slows the source);
  4. the batch is acked once all its parcels are settled — in the order the
     source produced the batches, so a source may commit "up to here".

At most `max_pending` batches per source are between receipt and ack.

Hot reload: the rule set and the routes form one `Generation`; `swap()`
replaces it atomically (no await in between). A batch reads the current
generation once, so it is evaluated and routed entirely by the old or
entirely by the new one; `drained()` tells when every batch of older
generations is settled, after which actions that were removed can be closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from engine._core import route_records
from engine.runtime.actions import ActionRunner, Parcel
from engine.runtime.deadletter import DeadLetters, raw_text
from engine.runtime.metrics import Metrics
from engine.sources import Batch, Source

log = logging.getLogger(__name__)


class _Settlement:
    """Counts down the parcels of one source batch; `done` resolves at zero."""

    __slots__ = ("remaining", "done")

    def __init__(self, parcels: int) -> None:
        self.remaining = parcels
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if parcels == 0:
            self.done.set_result(None)

    def settle(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set_result(None)


class Generation:
    """One rule set with its routes, and the batches still using it: those
    being evaluated/routed (`active`) and those whose parcels are not
    settled yet (`unsettled`)."""

    __slots__ = ("number", "ruleset", "routes", "active", "unsettled", "_idle")

    def __init__(self, number: int, ruleset: Any,
                 routes: Mapping[str, Sequence[ActionRunner]]) -> None:
        self.number = number
        self.ruleset = ruleset
        self.routes = {k: tuple(v) for k, v in routes.items()}
        self.active = 0
        self.unsettled = 0
        self._idle: asyncio.Event | None = None

    def enter(self) -> None:
        self.active += 1

    def leave(self, done: asyncio.Future[None] | None) -> None:
        """A batch finished routing; `done` resolves when it is settled."""
        self.active -= 1
        if done is not None and not done.done():
            self.unsettled += 1
            done.add_done_callback(self._settled)
        else:
            self._check()

    def _settled(self, _: object) -> None:
        self.unsettled -= 1
        self._check()

    def _check(self) -> None:
        if self._idle is not None and not self.active and not self.unsettled:
            self._idle.set()

    async def wait_idle(self) -> None:
        if not self.active and not self.unsettled:
            return
        if self._idle is None:
            self._idle = asyncio.Event()
        await self._idle.wait()


class Pipeline:
    def __init__(self, ruleset: Any, routes: Mapping[str, Sequence[ActionRunner]], *,
                 metrics: Metrics, dead_letters: DeadLetters, max_pending: int = 8) -> None:
        """`routes`: rule key -> the runners of its actions (every rule of the
        rule set should have an entry, possibly empty)."""
        self.generation = Generation(1, ruleset, routes)
        self._older: list[Generation] = []  # replaced, with batches possibly in flight
        self.metrics = metrics
        self.dead_letters = dead_letters
        self.max_pending = max_pending
        metrics.rules.set_rules(list(self.generation.routes),
                                subjects=getattr(self.generation.ruleset, "subjects", None))

    @property
    def ruleset(self) -> Any:
        return self.generation.ruleset

    @property
    def routes(self) -> dict[str, tuple[ActionRunner, ...]]:
        return self.generation.routes

    def swap(self, ruleset: Any, routes: Mapping[str, Sequence[ActionRunner]]) -> Generation:
        """Make `ruleset`/`routes` the current generation (atomically: batches
        already being routed finish with the old one). Returns the old one."""
        old = self.generation
        self.generation = Generation(old.number + 1, ruleset, routes)
        self._older = [g for g in self._older if g.active or g.unsettled]
        self._older.append(old)
        self.metrics.rules.set_rules(list(self.generation.routes), prune=True,
                                     subjects=getattr(self.generation.ruleset, "subjects", None))
        return old

    async def drained(self, upto: Generation) -> None:
        """Wait until no batch of `upto` or an older generation is in flight."""
        for g in list(self._older):
            if g.number <= upto.number:
                await g.wait_idle()

    async def consume(self, source: Source) -> None:
        """Run one source until its batches end, then wait for its last ack."""
        acks: asyncio.Queue[tuple[Batch, asyncio.Future[None]] | None] = asyncio.Queue(
            self.max_pending)
        acker = asyncio.create_task(self._ack_in_order(acks), name=f"acks {source.name}")
        try:
            async for batch in source.batches():
                done = await self.process(source.name, batch)
                await acks.put((batch, done))
                # Let the action writers and the acker run between two batches:
                # a source with data buffered (Kafka) would otherwise route
                # `max_pending` batches before the first one is written.
                await asyncio.sleep(0)
            await acks.put(None)
            await acker
        finally:
            acker.cancel()  # only matters when cancelled (shutdown timeout)

    @staticmethod
    async def _ack_in_order(acks: asyncio.Queue) -> None:
        while (entry := await acks.get()) is not None:
            batch, done = entry
            await done
            await batch.ack()

    async def process(self, source: str, batch: Batch) -> asyncio.Future[None]:
        """Evaluate one batch and hand its matches to the actions. Returns a
        future that resolves when every match is delivered or dead-lettered."""
        gen = self.generation  # read once: the whole batch uses this generation
        gen.enter()
        done = None
        try:
            done = await self._route(gen, source, batch)
        finally:
            gen.leave(done)
        return done

    async def _route(self, gen: Generation, source: str, batch: Batch) -> asyncio.Future[None]:
        items = batch.items
        # One call: decode (unless the pre-filter rules it out), evaluate,
        # and the record key and time of each matched event.
        results = gen.ruleset.route_raw_many(items)
        self.metrics.rules.count_kinds(gen.ruleset.take_kinds())
        # Every output becomes a Record per action of its rule (compiled: it
        # runs per match and action).
        per_action, matched, fanned, bad = route_records(items, results, gen.routes)
        malformed = [{"reason": reason, "source": source, "payload": raw_text(raw)}
                     for raw, reason in bad]
        self._count(source, len(items), len(malformed), matched)
        if fanned:
            self.metrics.rules.count_fanned(fanned)
        if malformed:
            await self.dead_letters.write(malformed)
        settlement = _Settlement(len(per_action))
        for runner, records in per_action.items():
            await runner.submit(Parcel(records, settlement.settle, batch.received_at))
        return settlement.done

    def _count(self, source: str, received: int, malformed: int, matched: dict[str, int]) -> None:
        m = self.metrics
        t = m.flow
        of_source = t.source(source)
        of_source.received += received
        if malformed:
            of_source.malformed += malformed
            log.warning("%d malformed notification(s) dead-lettered", malformed,
                        extra={"source": source})
        rules = m.rules
        rules.well_formed += received - malformed
        counts = rules.matched
        pruned = rules.pruned
        for rule, n in matched.items():
            if rule not in pruned:  # a rule a reload removed while this batch ran
                counts[rule] = counts.get(rule, 0) + n
            t.matched += n
