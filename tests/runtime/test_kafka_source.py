import asyncio
import threading
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from engine.sources.kafka import KafkaSource
from tests.runtime.support import take

pytestmark = pytest.mark.services

FAST_GROUP = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 1000}


async def make_topic(bootstrap: str, partitions: int = 3) -> str:
    name = f"rt-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    return name


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, v, key=str(i % 7).encode())
                   for i, v in enumerate(values)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def one_partition(kafka: str, n: int = 1000) -> tuple[str, str, list[bytes]]:
    """A new one-partition topic holding n messages, and a new group id."""
    topic = await make_topic(kafka, partitions=1)
    values = [b'{"n":%d}' % i for i in range(n)]
    await produce(kafka, topic, values)
    return topic, f"g-{uuid.uuid4().hex[:8]}", values


async def resume(kafka: str, topic: str, group: str, n: int) -> list[bytes]:
    """The next n messages the group gets (from its committed offsets)."""
    src = KafkaSource(bootstrap_servers=kafka, topics=[topic], group_id=group, **FAST_GROUP)
    await src.start()
    try:
        return await asyncio.wait_for(take(src, n), 30)
    finally:
        await src.close()


async def test_committed_batches_are_not_consumed_again(kafka):
    topic = await make_topic(kafka)
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = [b'{"n":%d}' % i for i in range(3000)]
    await produce(kafka, topic, first)
    src = KafkaSource(bootstrap_servers=kafka, topics=[topic], group_id=group, batch_size=500,
                      **FAST_GROUP)
    await src.start()
    try:
        got = await asyncio.wait_for(take(src, len(first)), 30)
    finally:
        await src.close()
    assert sorted(got) == sorted(first)

    # The same group resumes after its commits: only new messages arrive.
    second = [b'{"m":%d}' % i for i in range(200)]
    await produce(kafka, topic, second)
    src = KafkaSource(bootstrap_servers=kafka, topics=[topic], group_id=group, **FAST_GROUP)
    await src.start()
    try:
        again = await asyncio.wait_for(take(src, len(second)), 30)
    finally:
        await src.close()
    assert sorted(again) == sorted(second)


async def test_unacked_batches_are_consumed_again(kafka):
    topic, group, values = await one_partition(kafka)
    src = KafkaSource(bootstrap_servers=kafka, topics=[topic], group_id=group, batch_size=100,
                      **FAST_GROUP)
    await src.start()
    try:
        acked = 0
        async for batch in src.batches():
            if acked < 400:
                await batch.ack()
                acked += len(batch.items)
            else:
                break  # "crash": later batches never acked
    finally:
        await src.close()
    rest = await resume(kafka, topic, group, len(values) - acked)
    assert rest == values[acked:]  # one partition: exact order, from the commit on


async def test_acks_during_a_commit_join_the_next_one(kafka):
    # A commit takes milliseconds; batches acked meanwhile are committed
    # together, by one more commit, and the pipeline never waits for one.
    topic, group, values = await one_partition(kafka)
    src = KafkaSource(bootstrap_servers=kafka, topics=[topic], group_id=group, batch_size=100,
                      **FAST_GROUP)
    commits: list[list[int]] = []
    commit = src._commit
    go = threading.Event()  # holds the first commit until every ack returned

    def slow_commit(offsets):
        commits.append([tp.offset for tp in offsets])
        go.wait(10)
        commit(offsets)

    src._commit = slow_commit  # type: ignore[method-assign]
    await src.start()
    try:
        acks, got = [], 0
        async for batch in src.batches():
            acks.append(batch.ack)
            got += len(batch.items)
            if got == len(values):
                break
        assert len(acks) >= 2
        for ack in acks:
            await ack()  # returns at once: the first commit is still held
        go.set()
    finally:
        await src.close()  # the merged commit lands before the consumer closes
    assert len(commits) == 2 and commits[1] == [len(values)]
    more = [b'{"m":%d}' % i for i in range(5)]
    await produce(kafka, topic, more)
    assert await resume(kafka, topic, group, len(more)) == more
