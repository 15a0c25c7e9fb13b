"""Garbage collection for a worker in a process of its own.

CPython's collector runs after every 700 net allocations of container
objects. A worker allocates thousands per batch (each decoded event is a
tree of dicts and lists) and keeps them alive until the batch is delivered,
so most collections find the batch in flight, scan it, and promote it to
the older generations, which are scanned again: 0.6-0.9 s of a 3.3 s round
of 200,000 events with a broad rule (benchmarks/README.md). Events are
acyclic and freed by their reference counts; the few cycles a worker makes
(exceptions with tracebacks, asyncio internals) need a collector, not 3,000
collections a round. So the automatic collector is off while the worker
runs, and a task collects the young generations every second and everything
every minute. What start-up created is frozen first (never scanned again).
"""

from __future__ import annotations

import asyncio
import gc

YOUNG_EVERY = 1.0        # seconds between collections of generations 0 and 1
FULL_EVERY = 60          # every this many young collections, a full one


class ScheduledCollection:
    """Freeze what exists, then collect on a timer instead of per allocation
    count, from start() until stop() restores the automatic collector."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._was_enabled = False

    def start(self) -> None:
        self._was_enabled = gc.isenabled()
        gc.freeze()
        gc.disable()
        self._task = asyncio.create_task(_collect_periodically(), name="garbage collection")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
            if self._was_enabled:
                gc.enable()


async def _collect_periodically() -> None:
    n = 0
    while True:
        await asyncio.sleep(YOUNG_EVERY)
        n += 1
        gc.collect(2 if n % FULL_EVERY == 0 else 1)
