"""The built-in device simulator as a source: `Fleet` notifications at a
chosen rate, bounded by a count and/or a duration.

Rate limiting is a token bucket refilled at `rate` per second; batches are cut
so that one is produced about every 50 ms at most (small batches at low
rates keep latency realistic, large ones at high rates keep overhead low).
When the pipeline is slower than `rate`, the bucket simply stops filling past
its capacity: the simulator slows down instead of bursting afterwards.
Event times follow a simulated clock (start + i / rate), so a seeded run with
a fixed `start` is reproducible byte for byte.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from pydantic import Field

from engine.schema import Kind
from engine.sources.base import Batch, Source, SourceContext, SourceOptions
from engine.sources.fleet import Fleet
from engine.sources.registry import register


class SimulatorOptions(SourceOptions):
    """Generate synthetic notifications (demo, benchmarks)."""

    rate: float = Field(default=1000.0, gt=0, le=10_000_000)
    """Events per second."""
    devices: int = Field(default=100, ge=1, le=10_000_000)
    kinds: list[Kind] | None = None
    """Notification kinds to generate; default: all 12."""
    seed: int | None = None
    """Random seed for a reproducible stream."""
    count: int | None = Field(default=None, ge=1)
    """Stop after this many events (default: run until stopped)."""
    duration: float | None = Field(default=None, gt=0)
    """Stop after this many seconds."""


@register
class SimulatorSource(Source):
    kind = "simulator"
    Options = SimulatorOptions

    def __init__(self, *, rate: float = 1000.0, devices: int = 100, seed: int = 0,
                 count: int | None = None, duration: float | None = None,
                 start: float | None = None, batch_size: int = 500,
                 kinds: list[tuple[str, str]] | None = None, name: str | None = None) -> None:
        super().__init__(name)
        if rate <= 0:
            raise ValueError("rate must be positive (events per second)")
        self.rate = rate
        self.count = count
        self.duration = duration
        self.start_time = time.time() if start is None else start
        self.batch_size = batch_size
        self.fleet = Fleet(seed=seed, devices=devices, start=self.start_time, kinds=kinds)
        self.produced = 0
        self._stopped = False

    @classmethod
    def from_options(cls, options: SimulatorOptions, *, batch_size: int,
                     metrics: Any = None, context: SourceContext | None = None) -> SimulatorSource:
        o = options
        kinds: list[tuple[str, str]] | None = (
            [(k.resource, k.event) for k in o.kinds] if o.kinds else None)
        return cls(rate=o.rate, devices=o.devices, seed=o.seed or 0, count=o.count,
                   duration=o.duration, kinds=kinds, batch_size=batch_size)

    def stop(self) -> None:
        self._stopped = True

    def make(self, n: int) -> list[bytes]:
        """The next `n` notifications, encoded."""
        fleet, dumps, t0, step = self.fleet, orjson.dumps, self.start_time, 1.0 / self.rate
        first = self.produced
        self.produced += n
        return [dumps(fleet.notification(t0 + i * step)) for i in range(first, first + n)]

    async def batches(self) -> AsyncIterator[Batch]:
        rate = self.rate
        target = max(1, min(self.batch_size, int(rate * 0.05)))
        capacity = 2 * target
        tokens = float(target)  # start with one batch ready
        began = last = time.monotonic()
        while not self._stopped:
            now = time.monotonic()
            if self.duration is not None and now - began >= self.duration:
                break
            remaining = None if self.count is None else self.count - self.produced
            if remaining == 0:
                break
            tokens = min(capacity, tokens + (now - last) * rate)
            last = now
            want = target if remaining is None else min(target, remaining)
            if tokens < want:
                await asyncio.sleep((want - tokens) / rate)
                continue
            tokens -= want
            yield Batch(self.make(want))
