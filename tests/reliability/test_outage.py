"""Destination outages during a stream: Kafka (the stream) -> `engine run`
-> a destination that is killed (-9) for OUTAGE_S seconds and started
again. Every matching event must end up in the destination (read back from
it), duplicates only as at-least-once allows (counted, reported), and the
engine's counts must balance.

The destinations are servers these tests start themselves: an HTTP receiver
process, a second RabbitMQ node, a second mariadbd, a second tansu broker
with durable (SeaweedFS S3) storage.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from tests.reliability.support import (
    RULE,
    Engine,
    HttpReceiverProcess,
    check_conservation,
    counts,
    delete_topic,
    duplicates,
    free_port,
    make_events,
    make_topic,
    produce_paced,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]

N = 100_000          # events in the stream (the figure)
STREAM_S = 15.0      # the stream is produced over this long
OUTAGE_AT_S = 3.0    # the destination is killed this long after the stream starts
OUTAGE_S = 20.0      # and started again this long after (the figure)


class HttpDest:
    name = "http"

    def __init__(self, tmp):
        self.rx = HttpReceiverProcess(tmp)

    async def setup(self):
        self.rx.start()

    def action(self):
        return {"channel": "HTTP_FORWARDING",
                "channel_detail": {"http_forwarding": {"url": self.rx.url, "timeout_s": 5}}}

    def kill(self):
        self.rx.kill()

    async def restart(self):
        self.rx.start()

    async def read_back(self) -> list[int]:
        return self.rx.seqs()

    async def cleanup(self):
        self.rx.proc.stop()


class RabbitDest:
    name = "rabbitmq"

    def __init__(self, node):
        self.node = node
        self.queue = f"rel-{uuid.uuid4().hex[:10]}"

    async def setup(self):
        if not self.node.proc.running:
            self.node.start()
        conn = await aio_pika.connect(self.node.url)
        async with conn:
            ch = await conn.channel()
            await ch.declare_queue(self.queue, durable=True)

    def action(self):
        return {"channel": "AMQP_FORWARDING",
                "channel_detail": {"amqp_forwarding": {"queue_name": self.queue,
                                                       "url": self.node.url, "timeout_s": 5}}}

    def kill(self):
        self.node.kill()

    async def restart(self):
        self.node.start()

    async def read_back(self) -> list[int]:
        seqs = []
        conn = await aio_pika.connect(self.node.url)
        async with conn:
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=5000)
            q = await ch.declare_queue(self.queue, durable=True)
            while (msg := await q.get(no_ack=True, fail=False, timeout=10)) is not None:
                seqs.append(orjson.loads(msg.body)["seq"])
            await q.delete(if_unused=False, if_empty=False)
        return seqs

    async def cleanup(self):
        if not self.node.proc.running:
            self.node.start()


class MariaDest:
    name = "mariadb"

    def __init__(self, node):
        self.node = node
        self.table = f"rel_{uuid.uuid4().hex[:10]}"

    async def setup(self):
        if not self.node.proc.running:
            self.node.start()
        self.node.sql(f"CREATE TABLE rel.{self.table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                      "seq BIGINT NOT NULL, device VARCHAR(128), level INT)")

    def action(self):
        return {"channel": "MYSQL_FORWARDING", "channel_detail": {"mysql_forwarding": {
            "address": {"ip": "127.0.0.1", "port": self.node.port}, "db_name": "rel",
            "username": "rel", "password": "Rel-pw-4f9c2e71", "enable_ssl": False,
            "table_name": self.table, "timeout_s": 5,
            "column_mappings": [{"column_name": c, "json_key": c}
                                for c in ("seq", "device", "level")]}}}

    def kill(self):
        self.node.kill()

    async def restart(self):
        self.node.start()

    async def read_back(self) -> list[int]:
        out = self.node.sql(f"SELECT seq FROM rel.{self.table}")
        return [int(x) for x in out.split()]

    async def cleanup(self):
        if not self.node.proc.running:
            self.node.start()
        self.node.sql(f"DROP TABLE IF EXISTS rel.{self.table}")


class KafkaDest:
    name = "kafka"

    def __init__(self, broker):
        self.broker = broker
        self.topic = f"rel-out-{uuid.uuid4().hex[:8]}"

    async def setup(self):
        if not self.broker.broker.running:
            self.broker.start()
        await make_topic(self.broker.bootstrap, self.topic, partitions=2)

    def action(self):
        return {"channel": "DMS_KAFKA_FORWARDING", "channel_detail": {"dms_kafka_forwarding": {
            "region_name": "local", "project_id": "local", "topic": self.topic,
            "addresses": [{"ip": "127.0.0.1", "port": self.broker.port}], "timeout_s": 5}}}

    def kill(self):
        self.broker.kill()

    async def restart(self):
        self.broker.start()

    async def read_back(self) -> list[int]:
        consumer = AIOKafkaConsumer(self.topic, bootstrap_servers=self.broker.bootstrap,
                                    auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        seqs: list[int] = []
        try:
            idle = 0
            while idle < 6:  # 3 s without anything new: all read
                batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
                got = [orjson.loads(r.value)["seq"] for rs in batch.values() for r in rs]
                seqs += got
                idle = 0 if got else idle + 1
        finally:
            await consumer.stop()
        return seqs

    async def cleanup(self):
        if not self.broker.broker.running:
            self.broker.start()
        await delete_topic(self.broker.bootstrap, self.topic)


@pytest.fixture
def destination(request, tmp_path):
    kind = request.param
    if kind == "http":
        return HttpDest(tmp_path)
    if kind == "rabbitmq":
        return RabbitDest(request.getfixturevalue("rabbit_node"))
    if kind == "mariadb":
        return MariaDest(request.getfixturevalue("maria_node"))
    return KafkaDest(request.getfixturevalue("durable_tansu"))


@pytest.mark.parametrize("destination", ["http", "rabbitmq", "mariadb", "kafka"],
                         indirect=True)
async def test_destination_outage_loses_nothing(destination, kafka, tmp_path):
    items, expected = make_events(N)
    topic = await make_topic(kafka, f"rel-in-{uuid.uuid4().hex[:8]}")
    metrics_port = free_port()
    await destination.setup()
    engine = Engine(tmp_path, {
        "sources": [{"kafka": {"bootstrap_servers": kafka, "topics": [topic],
                               "group_id": f"rel-{uuid.uuid4().hex[:8]}",
                               "session_timeout_ms": 3000}}],
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "rules": [RULE],
        "actions": [{"action_id": "out", "rule_id": "battery", **destination.action()}],
        "worker": {"state_dir": str(tmp_path / "state")},
    }, metrics_port)
    try:
        await engine.start()
        t0 = time.monotonic()
        stream = asyncio.create_task(produce_paced(kafka, topic, items, STREAM_S))
        await asyncio.sleep(OUTAGE_AT_S)
        destination.kill()
        await asyncio.sleep(OUTAGE_S)
        during = counts(await engine.metrics(), "out")
        await destination.restart()
        back = time.monotonic()
        await stream
        drain_s = await engine.settled(N, timeout=150)
        drained_at = time.monotonic() - back
        m = await engine.metrics()
        check_conservation(m)
        c = counts(m, "out")
        assert engine.stop() == 0, engine.log.read_text()[-3000:]
        seqs = await destination.read_back()
    finally:
        engine.proc.stop()
        await destination.cleanup()
        await delete_topic(kafka, topic)

    missing = expected - set(seqs)
    extra = set(seqs) - expected
    dups = duplicates(seqs)
    print(f"\nFIGURES outage {destination.name}: events {N}, matching {len(expected)}, "
          f"delivered {len(set(seqs))} distinct / {len(seqs)} rows, duplicates {dups}, "
          f"backlogged at the end of the outage {during['backlogged']:.0f} "
          f"(appended {during['appended']:.0f}), dead-lettered {c['dead']:.0f}, "
          f"drained {drained_at:.1f} s after the restart (settle wait {drain_s:.1f} s), "
          f"whole run {time.monotonic() - t0:.1f} s")
    assert not missing, f"{len(missing)} matching events never delivered"
    assert not extra
    assert c["matched"] == len(expected)
    assert c["forwarded"] >= len(expected) and c["dead"] == 0
    assert during["appended"] > 0, "the outage should have filled the backlog"
    assert c["forwarded"] - len(expected) <= dups + c["appended"], "counted more than it sent"
