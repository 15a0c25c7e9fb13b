"""Helpers for the runtime tests: in-memory sources and sinks (unit tests
only; the integration tests use real servers), and metric scraping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from engine.destinations.base import Failure, Record, Sink, WriteResult
from engine.sources import Batch, Source


class ListSource(Source):
    """Yields the given batches; records which batches were taken and acked."""

    kind = "list"

    def __init__(self, batches: Sequence[list[bytes]], name: str = "list") -> None:
        super().__init__(name)
        self._batches = list(batches)
        self.taken = 0
        self.acked: list[int] = []
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    async def batches(self) -> AsyncIterator[Batch]:
        for i, items in enumerate(self._batches):
            if self._stopped:
                return
            self.taken += 1
            yield Batch(list(items), self._acker(i))
            await asyncio.sleep(0)

    def _acker(self, i: int):
        async def ack() -> None:
            self.acked.append(i)

        return ack


async def take(src: Source, n: int, *, ack: bool = True) -> list[bytes]:
    """Items of `src` until at least `n` arrived (acking each batch if asked),
    checking that no batch exceeds the source's batch size."""
    got: list[bytes] = []
    async for batch in src.batches():
        assert len(batch.items) <= src.batch_size
        got.extend(batch.items)
        if ack:
            await batch.ack()
        if len(got) >= n:
            src.stop()
    return got


class _NoConfig(BaseModel):
    pass


class MemorySink(Sink):
    """Collects records. `fail(payload) -> Failure | None` decides per record
    and attempt; `gate` (an Event), when set, holds every write until set."""

    channel = "MEMORY"
    detail_key = "memory"
    Config = _NoConfig

    def __init__(self, fail=None, gate: asyncio.Event | None = None) -> None:
        super().__init__(_NoConfig())
        self.records: list[Record] = []
        self.writes = 0
        self.fail = fail
        self.gate = gate
        self.opened = self.closed = False

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.closed = True

    async def write(self, records: Sequence[Record]) -> WriteResult:
        self.writes += 1
        if self.gate is not None:
            await self.gate.wait()
        failures: dict[int, Failure] = {}
        for i, r in enumerate(records):
            f = self.fail(r) if self.fail else None
            if f is None:
                self.records.append(r)
            else:
                failures[i] = f
        return WriteResult(failures)


async def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted label items): value}."""
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        assert resp.status == 200
        text = await resp.text()
    out = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def by_label(samples: dict, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


def assert_balanced(samples: dict) -> None:
    """The accounting identities of engine.runtime.metrics."""
    received = sum(by_label(samples, "engine_source_received_total", "source").values())
    malformed = sum(by_label(samples, "engine_source_malformed_total", "source").values())
    matched = by_label(samples, "engine_rule_matched_total", "rule")
    not_matched = by_label(samples, "engine_rule_not_matched_total", "rule")
    assert matched, "no rule metrics"
    for rule in matched:
        assert received == malformed + matched[rule] + not_matched[rule], rule
    a_matched = by_label(samples, "engine_action_matched_total", "action")
    restored = by_label(samples, "engine_action_backlog_restored_total", "action")
    parts = [by_label(samples, f"engine_action_{k}", "action")  # backlogged: a gauge (now)
             for k in ("forwarded_total", "backlogged", "dead_lettered_total", "inflight")]
    for action, n in a_matched.items():
        assert n + restored.get(action, 0) == sum(p.get(action, 0) for p in parts), action
