"""AMQP_FORWARDING against the local RabbitMQ, read back with a separate connection."""

from __future__ import annotations

import aio_pika
import orjson
import pytest

from engine.destinations.amqp import AmqpForwarding, AmqpSink
from engine.destinations.base import SinkError
from tests.destinations.support import AMQP_URL, HOST, closed_port, records, require, uid

pytestmark = pytest.mark.services


@pytest.fixture
async def broker():
    """An independent client connection, and a unique queue it deletes afterwards."""
    require(5672, "RabbitMQ")
    conn = await aio_pika.connect(AMQP_URL, timeout=10)
    ch = await conn.channel()
    made: list[str] = []

    async def make_queue(**arguments) -> str:
        name = uid("engine_test_q")
        await ch.declare_queue(name, durable=True, arguments=arguments or None)
        made.append(name)
        return name

    yield ch, make_queue
    for name in made:
        await ch.queue_delete(name)
    await conn.close()


def sink_for(queue: str, url: str = AMQP_URL, **kw) -> AmqpSink:
    return AmqpSink(AmqpForwarding(queue_name=queue, url=url, **kw))


async def test_happy_path_exact_content(broker):
    ch, make_queue = broker
    q = await make_queue()
    recs = records(3)
    sink = sink_for(q)
    await sink.open()
    result = await sink.write(recs)
    await sink.close()
    assert result.ok
    queue = await ch.declare_queue(q, passive=True)
    got = []
    for _ in range(3):
        m = await queue.get(timeout=5)
        await m.ack()
        assert m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert m.content_type == "application/json"
        got.append(orjson.loads(m.body))
    assert got == [r.payload for r in recs]
    assert await queue.get(fail=False) is None


async def test_batch_of_10000(broker):
    ch, make_queue = broker
    q = await make_queue()
    sink = sink_for(q)
    await sink.open()
    result = await sink.write(records(10_000))
    await sink.close()
    assert result.ok
    declared = await ch.declare_queue(q, passive=True)
    assert declared.declaration_result.message_count == 10_000


async def test_bad_credentials_raise_without_password(broker):
    _, make_queue = broker
    q = await make_queue()
    sink = sink_for(q, url=f"amqp://guest:Wr0ngPassw0rd@{HOST}:5672/")
    with pytest.raises(SinkError) as e:
        await sink.open()
    assert "Wr0ngPassw0rd" not in str(e.value) and "login" in str(e.value)
    result = await sink.write(records(2))
    assert len(result.failures) == 2 and not any(f.retryable for f in result.failures.values())
    await sink.close()


async def test_missing_queue_is_a_sink_error(broker):
    name = uid("engine_test_missing")
    with pytest.raises(SinkError, match=name):
        await sink_for(name).open()


async def test_destination_down_is_retryable():
    sink = sink_for("engine_test_down", url=f"amqp://guest:guest@{HOST}:{closed_port()}/",
                    timeout_s=2)
    await sink.open()  # does not raise: the broker may come back
    result = await sink.write(records(3))
    await sink.close()
    assert len(result.failures) == 3
    assert all(f.retryable for f in result.failures.values())


async def test_queue_deleted_after_open_is_permanent(broker):
    ch, make_queue = broker
    q = await make_queue()
    sink = sink_for(q)
    await sink.open()
    await ch.queue_delete(q)
    result = await sink.write(records(2))
    await sink.close()
    assert len(result.failures) == 2
    assert all(not f.retryable and "gone" in f.reason for f in result.failures.values())


async def test_broker_nack_is_not_success(broker):
    ch, make_queue = broker
    # A full queue that rejects publishes: the broker nacks what does not fit.
    q = await make_queue(**{"x-max-length": 2, "x-overflow": "reject-publish"})
    sink = sink_for(q)
    await sink.open()
    result = await sink.write(records(5))
    await sink.close()
    declared = await ch.declare_queue(q, passive=True)
    stored = declared.declaration_result.message_count
    assert stored == 2
    assert len(result.failures) == 5 - stored
    assert all(f.retryable and "nack" in f.reason for f in result.failures.values())
