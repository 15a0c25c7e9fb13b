"""The whole data path: Kafka source -> rule set -> an in-memory counting
action, for a selective rule and a match-all rule.

200,000 simulated notifications (all 12 kinds, ~600 bytes on average) are
produced to a fresh 4-partition topic once; each round consumes all of them
with a new consumer group through `Worker` (the same code `engine run` runs),
until every batch is acked (offsets committed). events/s is measured from
the first batch received to the last ack, so the consumer-group join (a few
seconds on tansu, the same for both rules) is left out; `whole_s` includes it.

    bash scripts/services.sh up
    .venv/bin/python -m pytest benchmarks/bench_pipeline.py --benchmark-only \
        --benchmark-columns=min,median,rounds -s
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import BaseModel

from engine import RuleSpec, compile_ruleset
from engine.destinations.base import Record, Sink, WriteResult
from engine.runtime.actions import ActionRunner
from engine.runtime.deadletter import DeadLetters
from engine.runtime.main import new_event_loop
from engine.runtime.metrics import Metrics
from engine.runtime.sources.kafka import KafkaSource
from engine.runtime.sources.simulator import SimulatorSource
from engine.runtime.worker import Worker

pytestmark = pytest.mark.services

BOOTSTRAP = "127.0.0.1:9092"
N = 200_000

RULES = {
    # ~1 % of the events: low batteries (the pre-filter skips decoding most events)
    "selective": RuleSpec("r", "notify_data.header.device_id AS device_id, "
                               "GET_SERVICE_PROPERTY('Battery', 'batteryLevel') AS level",
                          "GET_SERVICE_PROPERTY('Battery', 'batteryLevel') < 10",
                          resource="device.property", event="report"),
    # every event (a few fields: SELECT * costs the rule core ~4x more, see docs/runtime.md)
    "match-all": RuleSpec("r", "notify_data.header.device_id AS device_id, resource, event, "
                               "event_time", None),
}


class _NoConfig(BaseModel):
    pass


class CountingSink(Sink):
    channel = "COUNT"
    detail_key = "count"
    Config = _NoConfig

    def __init__(self) -> None:
        super().__init__(_NoConfig())
        self.count = 0

    async def write(self, records: Sequence[Record]) -> WriteResult:
        self.count += len(records)
        return WriteResult()


class TimedKafkaSource(KafkaSource):
    """Notes when the first batch arrives, and stops after the last event."""

    def __init__(self, total: int, **kw) -> None:
        super().__init__(**kw)
        self.total = total
        self.first: float | None = None
        self.seen = 0

    async def batches(self):
        async for batch in super().batches():
            if self.first is None:
                self.first = time.perf_counter()
            self.seen += len(batch.items)
            if self.seen >= self.total:
                self.stop()
            yield batch


async def _produce(topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 4, 1)])
    finally:
        await admin.close()
    items = SimulatorSource(rate=10_000, devices=1000, seed=1, start=1.7e9).make(N)
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=20,
                                max_batch_size=1 << 20)
    await producer.start()
    try:
        for i in range(0, N, 10_000):
            futures = [await producer.send(topic, v) for v in items[i:i + 10_000]]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _round(topic: str, rule: RuleSpec) -> dict:
    metrics = Metrics()
    sink = CountingSink()
    source = TimedKafkaSource(N, bootstrap_servers=BOOTSTRAP, topics=[topic],
                              group_id=f"bench-{uuid.uuid4().hex[:8]}", batch_size=2000,
                              session_timeout_ms=3000, heartbeat_interval_ms=1000)
    runner = ActionRunner("count", "r", sink, metrics=metrics, dead_letters=DeadLetters(),
                          batch_size=2000, linger=0.005)
    worker = Worker(compile_ruleset([rule]), [runner], [source], metrics=metrics,
                    rule_keys=["r"])
    t0 = time.perf_counter()
    await worker.run()
    end = time.perf_counter()
    assert metrics.totals.received == N and metrics.totals.inflight == 0
    return {"events_per_s": round(N / (end - source.first)), "whole_s": round(end - t0, 2),
            "matched": sink.count}


@pytest.fixture(scope="module")
def topic():
    name = f"bench-pipeline-{uuid.uuid4().hex[:8]}"
    with asyncio.Runner(loop_factory=new_event_loop) as r:
        r.run(_produce(name))
    return name


@pytest.mark.parametrize("kind", list(RULES))
def test_kafka_pipeline(benchmark, topic, kind):
    results = []

    def one_round():
        with asyncio.Runner(loop_factory=new_event_loop) as r:
            results.append(r.run(_round(topic, RULES[kind])))

    benchmark.pedantic(one_round, rounds=3, iterations=1)
    best = max(results, key=lambda x: x["events_per_s"])
    benchmark.extra_info.update(best)
    print(f"\n{kind}: {best['events_per_s']:,} events/s (best of 3), "
          f"{best['matched']:,} matches, whole round {best['whole_s']} s")
