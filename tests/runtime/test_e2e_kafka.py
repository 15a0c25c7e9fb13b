"""Kafka -> `engine run` -> HTTP: 100,000 notifications, every expected
output arrives with exact content."""

import asyncio
import time
import uuid
from collections import Counter

import orjson
import pytest

from engine.sources.simulator import SimulatorSource
from tests.runtime.e2e import EngineProcess, Receiver, free_port, wait_ready, write_config
from tests.runtime.test_kafka_source import make_topic, produce

pytestmark = pytest.mark.services

N = 100_000


def expected_outputs(items: list[bytes]) -> Counter:
    """The rule below, computed by hand: battery level of property reports under 40."""
    out = Counter()
    for raw in items:
        e = orjson.loads(raw)
        if e["resource"] != "device.property":
            continue
        for s in e["notify_data"]["body"]["services"]:
            if s["service_id"] == "Battery":
                if s["properties"]["batteryLevel"] < 40:
                    out[orjson.dumps({"device": e["notify_data"]["header"]["device_id"],
                                      "level": s["properties"]["batteryLevel"],
                                      "at": e["event_time"]})] += 1
                break
    return out


async def test_kafka_to_http_100k_exact(kafka, tmp_path):
    items = SimulatorSource(rate=10_000, devices=500, seed=11, start=1.7e9).make(N)
    expected = expected_outputs(items)
    assert 5_000 < sum(expected.values()) < 40_000
    topic = await make_topic(kafka, partitions=4)
    await produce(kafka, topic, items)

    metrics_port = free_port()
    async with Receiver() as rx:
        config = write_config(tmp_path / "rules.yaml", {
            "sources": [{"kafka": {"bootstrap_servers": kafka, "topics": [topic],
                                   "group_id": f"e2e-{uuid.uuid4().hex[:8]}",
                                   "session_timeout_ms": 3000, "max_batch": 2000}}],
            "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
            "dead_letter": {"file": str(tmp_path / "dead.jsonl")},
            "rules": [{"rule_id": "battery", "subject": {"resource": "device.property",
                                                         "event": "report"},
                       "select": "notify_data.header.device_id AS device, "
                                 "GET_SERVICE_PROPERTY('Battery', 'batteryLevel') AS level, "
                                 "event_time AS at",
                       "where": "GET_SERVICE_PROPERTY('Battery', 'batteryLevel') < 40"}],
            "actions": [{"action_id": "hook", "rule_id": "battery", "channel": "HTTP_FORWARDING",
                         "channel_detail": {"http_forwarding": {"url": rx.url}}}],
        })
        t0 = time.monotonic()
        with EngineProcess(config) as engine:
            await wait_ready(metrics_port, engine)
            await rx.wait_for(sum(expected.values()), timeout=90)
            elapsed = time.monotonic() - t0
            await asyncio.sleep(0.5)  # anything extra (duplicates) would show up now
            code, err = engine.stop()
    assert code == 0, err
    got = Counter(orjson.dumps(b) for b in rx.bodies)
    assert got == expected, f"missing {sum((expected - got).values())}, extra {sum((got - expected).values())}"
    assert "Traceback" not in err
    print(f"\n{N} events, {sum(expected.values())} outputs delivered in {elapsed:.1f}s")
