"""RabbitMQ -> `engine run` -> HTTP (real sink, real servers): exact
outputs, malformed messages dead-lettered, everything acked."""

import asyncio
import time
import uuid

import orjson
import pytest

from engine.sources.simulator import SimulatorSource
from tests.runtime.e2e import EngineProcess, Receiver, free_port, wait_ready, write_config
from tests.runtime.support import by_label, scrape
from tests.runtime.test_amqp_source import _delete, _depth, _publish

pytestmark = pytest.mark.services


async def test_amqp_to_http_exact_with_malformed_dead_lettered(rabbitmq, tmp_path):
    queue = f"e2e-{uuid.uuid4().hex[:8]}"
    items = SimulatorSource(rate=1000, devices=50, seed=21, start=1.7e9).make(5000)
    decoded = [orjson.loads(x) for x in items]
    message = next(x for x, e in zip(items, decoded, strict=True)
                   if e["resource"] == "device.message")
    # Malformed inputs, whether or not they mention the rule's subject: the
    # pre-filter only skips valid JSON objects, so each one is reported.
    bad = [message[:90], b'["device.message", "report"]', b"\xff\xfe not utf-8"]
    await _publish(rabbitmq, queue, items[:2500] + bad + items[2500:])
    expected = [{"device": e["notify_data"]["header"]["device_id"], "t": e["event_time_ms"],
                 "content": e["notify_data"]["body"]["content"]}
                for e in decoded if e["resource"] == "device.message"]
    metrics_port = free_port()
    dead = tmp_path / "dead.jsonl"
    try:
        async with Receiver() as rx:
            config = write_config(tmp_path / "rules.yaml", {
                "sources": [{"amqp": {"url": rabbitmq, "queue": queue, "prefetch": 500}}],
                "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
                "dead_letter": {"file": str(dead)},
                "rules": [{"rule_id": "messages",
                           "subject": {"resource": "device.message", "event": "report"},
                           "select": "notify_data.header.device_id AS device, "
                                     "event_time_ms AS t, notify_data.body.content AS content"}],
                "actions": [{"action_id": "hook", "rule_id": "messages",
                             "channel": "HTTP_FORWARDING",
                             "channel_detail": {"http_forwarding": {"url": rx.url}}}],
            })
            with EngineProcess(config) as engine:
                await wait_ready(metrics_port, engine)
                await rx.wait_for(len(expected), timeout=60)
                # Then stop once everything was taken in: the graceful stop
                # must ack the batches still in flight.
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and sum(by_label(
                        await scrape(f"http://127.0.0.1:{metrics_port}/metrics"),
                        "engine_source_received_total", "source").values()) < 5003:
                    await asyncio.sleep(0.05)
                code, err = engine.stop()
        assert code == 0, err
        # Exactly the expected outputs (the HTTP sink posts concurrently, so
        # the order within a batch is not kept).
        assert sorted(map(orjson.dumps, rx.bodies)) == sorted(map(orjson.dumps, expected))
        entries = [orjson.loads(x) for x in dead.read_bytes().splitlines()]
        assert [(e["source"], e["payload"]) for e in entries] == [
            ("amqp", b.decode("utf-8", "replace")) for b in bad]
        assert "invalid JSON" in entries[0]["reason"] and "array" in entries[1]["reason"]
        assert "invalid JSON" in entries[2]["reason"]
        assert await _depth(rabbitmq, queue) == 0   # all acked, malformed ones included
        n = len(expected)
        assert f"5003 in, {n} matched, {n} delivered, 3 dead-lettered" in err
    finally:
        await _delete(rabbitmq, queue)
