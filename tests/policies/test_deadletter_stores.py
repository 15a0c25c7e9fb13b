"""Expired backlog entries and refused records reach the real dead-letter
stores (engine.runtime.deadletter: JSONL file, Kafka, RabbitMQ) built from a
DeadLetterConfig; each is read back with an independent client."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from engine.config import DeadLetterConfig
from engine.policies.backlog import Backlog
from engine.runtime.deadletter import dead_letters_from_config
from tests.policies.support import Clock, policy, records

HTTP = "HTTP_FORWARDING"


async def expire_into(store, tmp_path) -> list[dict]:
    """Backlog 5 records, expire 3 by time and refuse 2 (stacking disabled):
    returns the entries the store should now hold (without "time")."""
    clock = Clock()
    await store.open()
    b = Backlog(str(tmp_path / "b.db"), store,
                [policy("t", time=60), policy("off", "ACTION", "a2", size=0)], clock=clock)
    b.add_action("a1", "r1", HTTP)
    b.add_action("a2", "r1", HTTP)
    await b.open()
    try:
        await b.append("a1", records(3))
        await b.append("a2", records(2, action_id="a2", start=3), reason="HTTP 503")
        clock.advance(61)
        assert len(await b.expire()) == 3
    finally:
        await b.close()
        await store.close()
    why = "expired: older than backlog_time 60 s of backlog policy t"
    refused = "HTTP 503; not kept: backlog disabled by policy off (backlog_size 0)"
    return ([{"reason": refused, "source": "backlog:a2", "rule_id": "r1", "action_id": "a2",
              "key": r.key, "payload": r.payload} for r in records(2, action_id="a2", start=3)]
            + [{"reason": why, "source": "backlog:a1", "rule_id": "r1", "action_id": "a1",
                "key": r.key, "payload": r.payload} for r in records(3)])


def check(got: list[dict], expected: list[dict]) -> None:
    assert all(d.pop("time").endswith("Z") for d in got)
    assert got == expected


async def test_file_store(tmp_path):
    path = tmp_path / "dead.jsonl"
    expected = await expire_into(dead_letters_from_config(DeadLetterConfig(file=str(path))),
                                 tmp_path)
    check([orjson.loads(line) for line in path.read_bytes().splitlines()], expected)


@pytest.mark.services
async def test_kafka_store(tmp_path, kafka):
    topic = f"policies-dl-{uuid.uuid4().hex[:8]}"
    config = DeadLetterConfig(kafka={"bootstrap_servers": kafka, "topic": topic})
    expected = await expire_into(dead_letters_from_config(config), tmp_path)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        got: list[dict] = []
        deadline = asyncio.get_running_loop().time() + 15
        while len(got) < len(expected) and asyncio.get_running_loop().time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                got += [orjson.loads(m.value) for m in batch]
    finally:
        await consumer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
        await admin.start()
        try:
            await asyncio.wait_for(admin.delete_topics([topic]), 10)  # self-cleaning
        finally:
            await admin.close()
    # The store sends without a message key, so the broker spreads entries over
    # the topic's partitions: compare as a set-like sorted list, not in order.
    order = lambda d: (d["source"], d["payload"]["i"])  # noqa: E731
    check(sorted(got, key=order), sorted(expected, key=order))


@pytest.mark.services
async def test_amqp_store(tmp_path, rabbitmq):
    queue = f"policies-dl-{uuid.uuid4().hex[:8]}"
    config = DeadLetterConfig(amqp={"url": rabbitmq, "queue": queue})
    expected = await expire_into(dead_letters_from_config(config), tmp_path)
    conn = await aio_pika.connect(rabbitmq)
    async with conn:
        channel = await conn.channel()
        try:
            q = await channel.declare_queue(queue, durable=True, passive=True)
            got = []
            for _ in expected:
                msg = await q.get(timeout=5)
                assert msg.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
                got.append(orjson.loads(msg.body))
                await msg.ack()
            assert await q.get(fail=False) is None
        finally:
            await channel.queue_delete(queue)
    check(got, expected)
