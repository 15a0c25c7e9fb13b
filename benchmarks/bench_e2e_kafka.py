"""Kafka -> engine -> Kafka, side by side with a quixstreams application
doing the same filter and projection in Python.

One 4-partition input topic holds 200,000 simulated notifications (all 12
kinds, ~650 bytes on average). Each round runs, in a fresh process of its
own, either

* the engine: `Worker.from_config` (what `engine run` runs) with a Kafka
  source and a `DMS_KAFKA_FORWARDING` action (acks=all), or
* quixstreams (librdkafka): `app.dataframe(topic).filter(...).apply(...)
  .to_topic(out)`, with `session.timeout.ms` 6000 and
  `auto_offset_reset="earliest"` (what tansu needs),

each with a new consumer group and its own output topic, until all 200,000
inputs were consumed and their outputs produced. The two alternate within
each round (engine, then quixstreams), so a change in machine load hits both.
events/s counts from the first input received to the end of the run
(outputs flushed, offsets committed), so the consumer-group join (slower
for librdkafka on tansu) is left out; `whole_s` includes it. `cpu_s` is the
process's user+system CPU time (librdkafka runs its own threads, so
quixstreams may use more than one core); `events_per_cpu_s` = 200,000 /
cpu_s, start-up (imports, connecting, the group join) included.
`events_per_cpu_s_running` counts, like events/s, only the CPU time from
the first input received to the end (the process's own clock, every
thread). Afterwards each output topic is read back: both must have
produced exactly the expected number of outputs.

Rules (SELECT/WHERE for the engine; the same in Python for quixstreams):

* selective: battery below 10 on property reports (~1 % of the events);
* broad: device id and event time of every property report (~70 %);
* whole: no SELECT (the whole notification) of property reports, WHERE on
  the header's product_id (~47 % of the events).

BENCH_ROUNDS=n sets the rounds (default 3).

    bash scripts/services.sh up
    .venv/bin/python -m pytest benchmarks/bench_e2e_kafka.py --benchmark-only \
        --benchmark-columns=min,median,rounds -s
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest

BOOTSTRAP = "127.0.0.1:9092"
N = 200_000
PARTITIONS = 4
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
OTHER = "1027c4d1c386bbc4cd613e30"  # a simulated product: the rest are ~47 % of the events

RULES = {
    "selective": {"subject": {"resource": "device.property", "event": "report"},
                  "select": "notify_data.header.device_id AS device_id, "
                            "GET_SERVICE_PROPERTY('Battery', 'batteryLevel') AS level",
                  "where": "GET_SERVICE_PROPERTY('Battery', 'batteryLevel') < 10"},
    "broad": {"subject": {"resource": "device.property", "event": "report"},
              "select": "notify_data.header.device_id AS device_id, event_time"},
    # the most common IoTDA rule: no SELECT, forward the whole notification
    "whole": {"subject": {"resource": "device.property", "event": "report"},
              "where": f"notify_data.header.product_id <> '{OTHER}'"},
}


# -- the same rules in Python (quixstreams, and the expected counts) ----------


def _is_property_report(e: dict) -> bool:
    return e.get("resource") == "device.property" and e.get("event") == "report"


def _battery(e: dict):
    for s in e["notify_data"]["body"].get("services") or ():
        if s.get("service_id") == "Battery":
            return (s.get("properties") or {}).get("batteryLevel")
    return None


def _selective_filter(e: dict) -> bool:
    if not _is_property_report(e):
        return False
    level = _battery(e)
    return isinstance(level, int | float) and level < 10


def _selective_project(e: dict) -> dict:
    return {"device_id": e["notify_data"]["header"]["device_id"], "level": _battery(e)}


def _broad_project(e: dict) -> dict:
    return {"device_id": e["notify_data"]["header"]["device_id"], "event_time": e["event_time"]}


def _whole_filter(e: dict) -> bool:
    return _is_property_report(e) and e["notify_data"]["header"].get("product_id") != OTHER


PYTHON = {"selective": (_selective_filter, _selective_project),
          "broad": (_is_property_report, _broad_project),
          "whole": (_whole_filter, lambda e: e)}


# -- the two contenders, each run as `python bench_e2e_kafka.py engine|quix ...` --------


def run_quix(in_topic: str, out_topic: str, group: str, n: int, kind: str) -> dict:
    from quixstreams import Application

    keep, project = PYTHON[kind]
    state = {"count": 0, "first": None}
    app = Application(broker_address=BOOTSTRAP, consumer_group=group,
                      auto_offset_reset="earliest", loglevel="WARNING",
                      consumer_extra_config={"session.timeout.ms": 6000},
                      use_changelog_topics=False)

    def seen(_value) -> None:
        if state["first"] is None:
            state["first"] = time.perf_counter()
            state["cpu0"] = _cpu()
        state["count"] += 1
        if state["count"] == n:
            app.stop()

    sdf = app.dataframe(app.topic(in_topic, value_deserializer="json"))
    sdf = sdf.update(seen)
    sdf = sdf.filter(keep).apply(project)
    sdf.to_topic(app.topic(out_topic, value_serializer="json"))
    t0 = time.perf_counter()
    app.run()
    end = time.perf_counter()
    return {"events_per_s": round(n / (end - state["first"])), "whole_s": round(end - t0, 2),
            "consumed": state["count"],
            "events_per_cpu_s_running": round(n / (_cpu() - state["cpu0"])),
            "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """VmHWM: this process's peak resident memory (ru_maxrss would carry
    the benchmark parent's over the exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _cpu() -> float:
    """CPU seconds of this process so far (all its threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _run_engine(in_topic: str, out_topic: str, group: str, n: int, kind: str) -> dict:
    from engine.config import validate_config_dict
    from engine.runtime.worker import Worker
    from engine.sources.kafka import KafkaSource

    class TimedKafkaSource(KafkaSource):
        first: float | None = None
        cpu0 = 0.0
        seen = 0

        async def batches(self):
            async for batch in super().batches():
                if self.first is None:
                    self.first = time.perf_counter()
                    self.cpu0 = _cpu()
                self.seen += len(batch.items)
                if self.seen >= n:
                    self.stop()
                yield batch

    config = validate_config_dict({
        "rules": [{"rule_id": "r", **RULES[kind]}],
        "actions": [{"action_id": "out", "rule_id": "r", "channel": "DMS_KAFKA_FORWARDING",
                     "channel_detail": {"dms_kafka_forwarding": {
                         "region_name": "local", "project_id": "bench", "topic": out_topic,
                         "addresses": [{"ip": "127.0.0.1", "port": 9092}]}}}],
        "worker": {"batch_size": 2000},  # linger: the default (0, flush on idle)
    })
    source = TimedKafkaSource(bootstrap_servers=BOOTSTRAP, topics=[in_topic], group_id=group,
                              batch_size=2000, session_timeout_ms=3000,
                              heartbeat_interval_ms=1000)
    worker = Worker.from_config(config, sources=[source], serve_metrics=False)
    t0 = time.perf_counter()
    await worker.run(freeze_gc=True)  # as `engine run` does
    end = time.perf_counter()
    t = worker.metrics.totals
    assert t.inflight == 0 and t.dead_lettered == 0
    return {"events_per_s": round(n / (end - source.first)), "whole_s": round(end - t0, 2),
            "consumed": source.seen,
            "events_per_cpu_s_running": round(n / (_cpu() - source.cpu0)),
            # peak resident memory (issue 16, goal 6: at the maximum rate)
            "peak_rss_mb": _peak_rss_mb()}


def run_engine(*args) -> dict:
    from engine.app.main import run_sync

    return run_sync(_run_engine(*args))


# -- the benchmark ----------------------------------------------------------------


async def _admin(create: list[str] = (), delete: list[str] = ()) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        if create:
            await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in create])
        if delete:
            await admin.delete_topics(list(delete))
    finally:
        await admin.close()


async def _produce(topic: str, items: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=20,
                                max_batch_size=1 << 20)
    await producer.start()
    try:
        for i in range(0, len(items), 10_000):
            futures = [await producer.send(topic, v) for v in items[i:i + 10_000]]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _count(topic: str, expected: int, idle: float = 3.0) -> int:
    """Messages on `topic`: read until `expected` arrived and nothing more
    came for a moment (or nothing at all for `idle` seconds)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=BOOTSTRAP, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    n, last = 0, time.monotonic()
    try:
        while time.monotonic() - last < (0.5 if n >= expected else idle):
            got = await consumer.getmany(timeout_ms=200, max_records=10_000)
            if got:
                n += sum(len(v) for v in got.values())
                last = time.monotonic()
    finally:
        await consumer.stop()
    return n


@pytest.fixture(scope="module")
def input_topic():
    from engine.sources.simulator import SimulatorSource

    name = f"bench-e2e-in-{uuid.uuid4().hex[:8]}"
    items = SimulatorSource(rate=10_000, devices=1000, seed=1, start=1.7e9).make(N)
    expected = dict.fromkeys(PYTHON, 0)
    for x in items:
        e = orjson.loads(x)
        for kind, (keep, _) in PYTHON.items():
            expected[kind] += bool(keep(e))
    asyncio.run(_admin(create=[name]))
    asyncio.run(_produce(name, items))
    yield name, expected
    asyncio.run(_admin(delete=[name]))


def _contender(which: str, in_topic: str, out_topic: str, kind: str, tmp: Path) -> dict:
    group = f"bench-{which}-{uuid.uuid4().hex[:8]}"
    root = Path(__file__).resolve().parent.parent
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), which, in_topic, out_topic, group,
         str(N), kind],
        capture_output=True, text=True, timeout=300, cwd=tmp,
        env={**os.environ, "PYTHONPATH": str(root)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result.update(cpu_s=round(cpu, 2), events_per_cpu_s=round(N / cpu))
    return result


@pytest.mark.services
@pytest.mark.parametrize("kind", list(RULES))
def test_kafka_to_kafka(benchmark, input_topic, kind, tmp_path):
    in_topic, expected = input_topic
    results: dict[str, list[dict]] = {"engine": [], "quixstreams": []}
    outs: list[str] = []

    def one_round():
        for which in results:  # alternate: engine, then quixstreams
            out = f"bench-e2e-out-{uuid.uuid4().hex[:8]}"
            outs.append(out)
            asyncio.run(_admin(create=[out]))
            r = _contender("quix" if which == "quixstreams" else "engine", in_topic, out,
                           kind, tmp_path)
            r["outputs"] = asyncio.run(_count(out, expected[kind]))
            results[which].append(r)

    try:
        benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    finally:
        asyncio.run(_admin(delete=outs))
    best = {}
    for which, rs in results.items():
        for r in rs:
            assert r["consumed"] >= N
            assert r["outputs"] == expected[kind], (which, r, expected[kind])
        best[which] = max(rs, key=lambda x: x["events_per_s"])
        benchmark.extra_info[which] = best[which]
        benchmark.extra_info[f"{which}_rounds"] = [r["events_per_s"] for r in rs]
        print(f"\n{kind} {which}: {best[which]['events_per_s']:,} events/s (best of {ROUNDS}: "
              f"{', '.join(format(r['events_per_s'], ',') for r in rs)}), "
              f"{max(r['events_per_cpu_s'] for r in rs):,} events per CPU-second "
              f"({max(r['events_per_cpu_s_running'] for r in rs):,} from the first input), "
              f"{best[which]['outputs']:,} outputs, whole round {best[which]['whole_s']} s, "
              f"peak RSS {max(r['peak_rss_mb'] for r in rs)} MB")
    ratio = best["engine"]["events_per_s"] / best["quixstreams"]["events_per_s"]
    benchmark.extra_info["engine_over_quixstreams"] = round(ratio, 2)
    per_cpu = {w: max(r["events_per_cpu_s"] for r in rs) for w, rs in results.items()}
    running = {w: max(r["events_per_cpu_s_running"] for r in rs) for w, rs in results.items()}
    benchmark.extra_info["engine_over_quixstreams_per_cpu_s"] = round(
        per_cpu["engine"] / per_cpu["quixstreams"], 2)
    benchmark.extra_info["engine_over_quixstreams_per_cpu_s_running"] = round(
        running["engine"] / running["quixstreams"], 2)
    print(f"{kind}: engine / quixstreams = {ratio:.2f}x (events/s, best rounds), "
          f"{per_cpu['engine'] / per_cpu['quixstreams']:.2f}x (events per CPU-second), "
          f"{running['engine'] / running['quixstreams']:.2f}x (per CPU-second from the "
          f"first input); load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    which, in_topic, out_topic, group, n, kind = sys.argv[1:]
    run = run_quix if which == "quix" else run_engine
    print(json.dumps(run(in_topic, out_topic, group, int(n), kind)))
