import asyncio
import errno
import os
import uuid

import aio_pika
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from engine.config import DeadLetterConfig
from engine.destinations.base import Failure, Sink, WriteResult
from engine.runtime.deadletter import (
    AmqpDeadLetters,
    DeadLetters,
    FileDeadLetters,
    KafkaDeadLetters,
    dead_letters_from_config,
)
from engine.schema import KafkaClient

ENTRIES = [{"reason": "invalid JSON", "source": "http", "payload": "{oops"},
           {"reason": "HTTP 400", "source": "action:a", "rule_id": "r", "action_id": "a",
            "key": "dev-1", "payload": {"x": 1}}]


def check(docs):
    assert [{k: v for k, v in d.items() if k != "time"} for d in docs] == ENTRIES
    assert all(d["time"].endswith("Z") for d in docs)


async def test_file(tmp_path):
    dl = dead_letters_from_config(DeadLetterConfig(file=str(tmp_path / "dl.jsonl")))
    assert isinstance(dl, FileDeadLetters)
    await dl.open()
    await dl.write(ENTRIES)
    await dl.write(ENTRIES[:1])
    await dl.close()
    docs = [orjson.loads(x) for x in (tmp_path / "dl.jsonl").read_bytes().splitlines()]
    check(docs[:2])
    assert len(docs) == 3


async def test_file_retries_leave_no_blank_lines(tmp_path, monkeypatch):
    """A write that fails (here: fsync, 3 times) and is retried stores each
    entry once and nothing else: no blank or partial lines per retry."""
    real_fsync, failures = os.fsync, [3]

    def flaky_fsync(fd):
        if failures[0]:
            failures[0] -= 1
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flaky_fsync)
    path = tmp_path / "dl.jsonl"
    dl = dead_letters_from_config(DeadLetterConfig(file=str(path)))
    await dl.open()
    await asyncio.wait_for(dl.write(ENTRIES), 10)
    await dl.write(ENTRIES[:1])
    await dl.close()
    assert failures == [0]
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # every line ends with a newline
    docs = [orjson.loads(x) for x in lines[:-1]]  # no blank line in between
    check(docs[:2])
    assert len(docs) == 3


async def test_write_returns_only_once_stored():
    class FlakySink(Sink):
        """Fails everything twice, then the first entry once more."""

        def __init__(self):
            super().__init__(None)
            self.calls = 0
            self.stored = []

        async def write(self, records):
            self.calls += 1
            if self.calls < 3:
                return WriteResult.all_failed(len(records), "disk full", True)
            if self.calls == 3:
                self.stored += [r.payload for r in records[1:]]
                return WriteResult({0: Failure("disk full", False)})
            self.stored += [r.payload for r in records]
            return WriteResult()

    sink = FlakySink()
    await asyncio.wait_for(DeadLetters(sink).write(ENTRIES), 5)
    assert sink.calls == 4
    check(sorted(sink.stored, key=lambda d: d["source"] != "http"))  # each once


@pytest.mark.services
async def test_kafka(kafka):
    topic = f"dl-{uuid.uuid4().hex[:8]}"
    dl = KafkaDeadLetters(topic, KafkaClient([kafka]))
    await dl.open()
    try:
        await dl.write(ENTRIES)
    finally:
        await dl.close()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka, auto_offset_reset="earliest",
                                group_id=None)
    await consumer.start()
    try:
        got = []
        for _ in range(50):
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                got += [orjson.loads(r.value) for r in recs]
            if len(got) >= 2:
                break
    finally:
        await consumer.stop()
    # Dead letters carry no key, so they spread over the topic's partitions
    # (4 on an auto-created tansu topic): only the order within one is kept.
    reasons = [e["reason"] for e in ENTRIES]
    check(sorted(got, key=lambda d: reasons.index(d["reason"])))


@pytest.mark.services
async def test_amqp(rabbitmq):
    queue = f"dl-{uuid.uuid4().hex[:8]}"
    dl = AmqpDeadLetters(rabbitmq, queue)
    await dl.open()
    try:
        await dl.write(ENTRIES)
    finally:
        await dl.close()
    conn = await aio_pika.connect(rabbitmq)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, durable=True)
        got = []
        for _ in range(2):
            msg = await q.get(timeout=5)
            assert msg.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            got.append(orjson.loads(msg.body))
            await msg.ack()
        await ch.queue_delete(queue)
    check(got)
