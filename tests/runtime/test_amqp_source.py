import asyncio
import uuid

import aio_pika
import pytest

from engine.sources.amqp import AmqpSource
from tests.runtime.support import take

pytestmark = pytest.mark.services


async def _publish(url: str, queue: str, bodies: list[bytes]) -> None:
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        await ch.declare_queue(queue, durable=True)
        for b in bodies:
            await ch.default_exchange.publish(aio_pika.Message(b), routing_key=queue)


async def _depth(url: str, queue: str) -> int:
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        return q.declaration_result.message_count


async def _delete(url: str, queue: str) -> None:
    conn = await aio_pika.connect(url)
    async with conn:
        ch = await conn.channel()
        await ch.queue_delete(queue)


async def test_batches_in_order_and_acked_messages_are_gone(rabbitmq):
    queue = f"test-rt-{uuid.uuid4().hex[:8]}"
    bodies = [b'{"n":%d}' % i for i in range(2000)]
    src = AmqpSource(url=rabbitmq, queue=queue, prefetch=300, batch_size=200)
    await src.start()
    try:
        await _publish(rabbitmq, queue, bodies)
        got = await asyncio.wait_for(take(src, len(bodies)), 20)
    finally:
        await src.close()
    try:
        assert got == bodies
        assert await _depth(rabbitmq, queue) == 0
    finally:
        await _delete(rabbitmq, queue)


async def test_unacked_batches_are_redelivered(rabbitmq):
    queue = f"test-rt-{uuid.uuid4().hex[:8]}"
    bodies = [b'{"n":%d}' % i for i in range(500)]
    await _publish(rabbitmq, queue, bodies)
    try:
        src = AmqpSource(url=rabbitmq, queue=queue, prefetch=100, batch_size=50)
        await src.start()
        try:
            # Ack the batches covering the first 200, then "crash" (close
            # without acking what follows).
            acked, unacked = 0, 0
            it = src.batches().__aiter__()
            while True:
                try:
                    batch = await asyncio.wait_for(it.__anext__(), 0.5)
                except TimeoutError:
                    break  # the broker stopped delivering: prefetch window full
                if acked < 200:
                    await batch.ack()
                    acked += len(batch.items)
                else:
                    unacked += len(batch.items)
            assert unacked == 100  # exactly the prefetch window, never more
        finally:
            await src.close()
        remaining = len(bodies) - acked
        assert await _depth(rabbitmq, queue) == remaining
        src = AmqpSource(url=rabbitmq, queue=queue, prefetch=100)
        await src.start()
        try:
            again = await asyncio.wait_for(take(src, remaining), 20)
        finally:
            await src.close()
        assert again == bodies[acked:]
    finally:
        await _delete(rabbitmq, queue)
