"""The whole data path: Kafka source -> rule set -> an in-memory counting
action, for a selective rule and a match-all rule.

200,000 simulated notifications (all 12 kinds, ~600 bytes on average) are
produced to a fresh 4-partition topic once; each round consumes all of them
with a new consumer group through `Worker` (the same code `engine run` runs),
until every batch is acked (offsets committed). events/s is measured from
the first batch received to the last ack, so the consumer-group join (a few
seconds on tansu, the same for both rules) is left out; `whole_s` includes it.

Latency (`test_latency_at_half_rate`): a fresh topic is produced to at half
the best events/s just measured for the rule (paced, from a separate
process, so producing does not take the worker's CPU), while the worker
consumes it; for every record handed to the action, the time from the
receipt of its source batch (Kafka fetch returned) to the action's ack is
recorded. p50/p90/p99/max go into extra_info (per record; for the selective
rule only matched events make records). `BENCH_LATENCY_RATE=n` sets the
rate instead (e.g. to run the latency test alone, or to compare trees at
one rate).

    bash scripts/services.sh up
    .venv/bin/python -m pytest benchmarks/bench_pipeline.py --benchmark-only \
        --benchmark-columns=min,median,rounds -s
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import BaseModel

from engine import RuleSpec, compile_ruleset
from engine._core import kafka_batches
from engine.app.main import new_event_loop
from engine.destinations.base import Record, Sink, WriteResult
from engine.runtime.actions import ActionRunner, Parcel
from engine.runtime.deadletter import DeadLetters
from engine.runtime.metrics import Metrics
from engine.runtime.worker import Worker
from engine.sources.kafka import KafkaSource
from engine.sources.simulator import SimulatorSource

pytestmark = pytest.mark.services

BOOTSTRAP = "127.0.0.1:9092"
N = 200_000
PARTITIONS = 4

RULES = {
    # ~1 % of the events: low batteries (the pre-filter skips decoding most events)
    "selective": RuleSpec("r", "notify_data.header.device_id AS device_id, "
                               "GET_SERVICE_PROPERTY('Battery', 'batteryLevel') AS level",
                          "GET_SERVICE_PROPERTY('Battery', 'batteryLevel') < 10",
                          resource="device.property", event="report"),
    # every event, a few fields (SELECT * costs about the same since the raw forms
    # stopped copying the event they decoded: 284k vs 306k events/s, rule core alone)
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


async def _create(topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()


async def _delete(topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


async def _produce(topic: str) -> None:
    await _create(topic)
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
                          batch_size=2000)  # linger: the default (0, flush on idle)
    worker = Worker(compile_ruleset([rule]), [runner], [source], metrics=metrics,
                    rule_keys=["r"])
    t0 = time.perf_counter()
    await worker.run(freeze_gc=True)  # as `engine run` does
    end = time.perf_counter()
    assert metrics.totals.received == N and metrics.totals.inflight == 0
    return {"events_per_s": round(N / (end - source.first)), "whole_s": round(end - t0, 2),
            "matched": sink.count}


@pytest.fixture(scope="module")
def topic():
    name = f"bench-pipeline-{uuid.uuid4().hex[:8]}"
    with asyncio.Runner(loop_factory=new_event_loop) as r:
        r.run(_produce(name))
    yield name
    asyncio.run(_delete(name))


BEST: dict[str, int] = {}  # kind -> best events/s of test_kafka_pipeline


@pytest.mark.parametrize("kind", list(RULES))
def test_kafka_pipeline(benchmark, topic, kind):
    results = []

    def one_round():
        with asyncio.Runner(loop_factory=new_event_loop) as r:
            results.append(r.run(_round(topic, RULES[kind])))

    benchmark.pedantic(one_round, rounds=3, iterations=1)
    best = max(results, key=lambda x: x["events_per_s"])
    BEST[kind] = best["events_per_s"]
    benchmark.extra_info.update(best)
    print(f"\n{kind}: {best['events_per_s']:,} events/s (best of 3), "
          f"{best['matched']:,} matches, whole round {best['whole_s']} s")


# -- latency at half the maximum rate ---------------------------------------------


class LatencyRunner(ActionRunner):
    """Records, per parcel, the time from source-batch receipt to settle."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.samples: list[tuple[float, int]] = []  # (seconds, records)

    async def submit(self, parcel: Parcel) -> None:
        settle, t0, n = parcel.settle, parcel.received_at, len(parcel.records)

        def timed() -> None:
            self.samples.append((time.monotonic() - t0, n))
            settle()

        parcel.settle = timed
        await super().submit(parcel)


def percentiles(samples: list[tuple[float, int]], ps=(50, 90, 99)) -> dict[str, float]:
    """Record-weighted percentiles, in milliseconds."""
    samples = sorted(samples)
    total = sum(n for _, n in samples)
    out, acc, i = {}, 0, 0
    for p in ps:
        target = total * p / 100
        while acc + samples[i][1] < target:
            acc += samples[i][1]
            i += 1
        out[f"p{p}_ms"] = round(samples[i][0] * 1000, 2)
    out["max_ms"] = round(samples[-1][0] * 1000, 2)
    return out


SLICE_S = 0.005


def _produce_request(topic: bytes, batches: list[tuple[int, bytes]], correlation: int) -> bytes:
    """A whole ProduceRequest v3 frame (acks=1) for `batches` [(partition,
    record batch bytes)] of one topic."""
    body = [struct.pack(">hhih", 0, 3, correlation, 5), b"bench",  # key, version, id, client
            struct.pack(">hhiih", -1, 1, 30_000, 1, len(topic)), topic,  # no txn, acks, timeout
            struct.pack(">i", len(batches))]
    for p, buf in batches:
        body += [struct.pack(">ii", p, len(buf)), buf]
    frame = b"".join(body)
    return struct.pack(">i", len(frame)) + frame


def _produce_errors(frame: bytes) -> list[int]:
    """The partition error codes of a ProduceResponse v3 frame (after its size)."""
    pos = 4 + 4  # correlation id, topic count (one)
    (n,) = struct.unpack_from(">h", frame, pos)
    pos += 2 + n
    (parts,) = struct.unpack_from(">i", frame, pos)
    pos += 4
    errors = []
    for _ in range(parts):
        _, err = struct.unpack_from(">ih", frame, pos)
        errors.append(err)
        pos += 4 + 2 + 8 + 8
    return errors


def _per_slice(rate: float) -> int:
    return max(1, round(rate * SLICE_S))


def paced_produce(topic: str, rate: float, count: int) -> None:
    """`count` simulated notifications to `topic` at `rate` per second, in
    5 ms slices (runs in its own process). Every slice is one produce
    request, encoded before the clock starts (its record batches by the
    core's `kafka_batches`, as the engine's Kafka sink makes them) and
    written to the broker's socket as it falls due; a thread reads the
    answers. The load, the broker and the worker share 2 cores, and a
    producer encoding as it goes took a large share of them (librdkafka's
    produce() per record; aiokafka's request encoding, copying each request
    several times, ~0.45 core at 186k events/s)."""
    from aiokafka.record.util import calc_crc32c

    per_slice = _per_slice(rate)
    assert count % per_slice == 0, "whole slices"
    # At most 200,000 distinct notifications, sent over and over after that.
    items = SimulatorSource(rate=10_000, devices=1000, seed=2, start=1.7e9).make(
        min(count, -(-200_000 // per_slice) * per_slice))
    now_ms = int(time.time() * 1000)
    turn = itertools.cycle(range(PARTITIONS))  # no keys: the records go round the partitions
    slices = []
    for i in range(0, len(items), per_slice):
        recs = [Record(None, raw=v) for v in items[i:i + per_slice]]
        packed, _ = kafka_batches(recs, {}, lambda _key: next(turn), 1 << 20, 1 << 20,
                                  now_ms, calc_crc32c)
        slices.append(_produce_request(topic.encode(), [
            (p, buf) for p, group in packed.items() for buf, _ in group], len(slices)))
    requests = count // per_slice
    host, port = BOOTSTRAP.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    errors: list[int] = []

    def answers() -> None:
        reader = sock.makefile("rb")
        for _ in range(requests):
            (size,) = struct.unpack(">i", reader.read(4))
            errors.extend(e for e in _produce_errors(reader.read(size)) if e)

    reading = threading.Thread(target=answers)
    reading.start()
    t0, cpu0 = time.monotonic(), time.process_time()
    for n in range(requests):
        if (wait := t0 + n * SLICE_S - time.monotonic()) > 0:
            time.sleep(wait)
        sock.sendall(slices[n % len(slices)])
    reading.join()
    sock.close()
    assert not errors, f"produce errors {sorted(set(errors))}"
    print(f"produced {count} in {time.monotonic() - t0:.2f}s "
          f"({time.process_time() - cpu0:.2f} CPU-s)", flush=True)


async def _latency_round(topic: str, rule: RuleSpec, rate: float, count: int) -> dict:
    metrics = Metrics()
    source = TimedKafkaSource(count, bootstrap_servers=BOOTSTRAP, topics=[topic],
                              group_id=f"bench-{uuid.uuid4().hex[:8]}", batch_size=2000,
                              session_timeout_ms=3000, heartbeat_interval_ms=1000)
    runner = LatencyRunner("count", "r", CountingSink(), metrics=metrics,
                           dead_letters=DeadLetters(), batch_size=2000)  # default linger
    worker = Worker(compile_ruleset([rule]), [runner], [source], metrics=metrics,
                    rule_keys=["r"])
    run = asyncio.create_task(worker.run(freeze_gc=True))  # as `engine run` does
    deadline = time.monotonic() + 30
    while not source.assigned:  # joined the group: the producer may start
        assert time.monotonic() < deadline and not run.done(), "no partitions assigned"
        await asyncio.sleep(0.05)
    producer = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "produce",
                                 topic, str(rate), str(count)],
                                cwd=Path(__file__).resolve().parent.parent)
    try:
        await asyncio.wait_for(run, 120)
    finally:
        if producer.poll() is None:
            producer.kill()
        producer.wait()
    end = time.perf_counter()
    assert metrics.totals.received == count and metrics.totals.inflight == 0
    return {"rate": round(rate), "consumed_per_s": round(count / (end - source.first)),
            "records": sum(n for _, n in runner.samples), **percentiles(runner.samples)}


@pytest.mark.parametrize("kind", list(RULES))
def test_latency_at_half_rate(benchmark, kind):
    rate = float(os.environ.get("BENCH_LATENCY_RATE", 0)) or BEST.get(kind, 40_000) / 2
    count = int(rate * 8) // _per_slice(rate) * _per_slice(rate)  # about 8 s of stream
    name = f"bench-latency-{uuid.uuid4().hex[:8]}"
    results = []

    def one_round():
        with asyncio.Runner(loop_factory=new_event_loop) as r:
            r.run(_create(name))
            results.append(r.run(_latency_round(name, RULES[kind], rate, count)))

    try:
        benchmark.pedantic(one_round, rounds=1, iterations=1)
    finally:
        asyncio.run(_delete(name))
    (res,) = results
    benchmark.extra_info.update(res)
    print(f"\n{kind} at {res['rate']:,} events/s (consumed {res['consumed_per_s']:,}/s): "
          f"receipt -> action ack p50 {res['p50_ms']} ms, "
          f"p90 {res['p90_ms']} ms, p99 {res['p99_ms']} ms, max {res['max_ms']} ms "
          f"({res['records']:,} records)")


if __name__ == "__main__":
    if sys.argv[1] == "produce":
        paced_produce(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
