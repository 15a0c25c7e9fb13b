"""AMQP 0-9-1 (RabbitMQ) queue consumer.

The prefetch window bounds what the broker hands us unacknowledged, which is
also the backpressure: while batches wait in the pipeline, deliveries stop.
A batch is whatever arrived by the time the pipeline asks (up to
`batch_size`); its ack is one `basic.ack(multiple=True)` on its last delivery
tag — correct because the pipeline acks a source's batches in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from pydantic import Field

from engine.schema import AmqpConnection
from engine.sources.base import Batch, Source, SourceContext, SourceOptions
from engine.sources.registry import register

if TYPE_CHECKING:  # imported when the source starts: a worker without AMQP never loads it
    import aio_pika
    from aio_pika.abc import AbstractIncomingMessage

log = logging.getLogger(__name__)


class AmqpOptions(AmqpConnection, SourceOptions):
    """Consume notifications from an AMQP 0-9-1 queue (e.g. RabbitMQ)."""

    queue: str = Field(min_length=1, max_length=255)
    prefetch: int = Field(default=256, ge=1, le=65_535)
    """Unacknowledged messages the broker may send ahead."""


@register
class AmqpSource(Source):
    kind = "amqp"
    Options = AmqpOptions

    def __init__(self, *, url: str = "amqp://guest:guest@127.0.0.1:5672/", queue: str,
                 prefetch: int = 1000, batch_size: int = 500, linger: float = 0.005,
                 name: str | None = None) -> None:
        super().__init__(name)
        self.url = url
        self.queue_name = queue
        self.prefetch = prefetch
        self.batch_size = min(batch_size, prefetch)
        self.linger = linger
        self._buffer: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._queue: aio_pika.abc.AbstractQueue | None = None
        self._tag: str | None = None

    @classmethod
    def from_options(cls, options: AmqpOptions, *, batch_size: int,
                     metrics: Any = None, context: SourceContext | None = None) -> AmqpSource:
        return cls(url=options.url.get_secret_value(), queue=options.queue,
                   prefetch=options.prefetch, batch_size=batch_size)

    async def start(self) -> None:
        import aio_pika

        self._connection = await aio_pika.connect_robust(self.url)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        self._queue = await channel.declare_queue(self.queue_name, durable=True)
        self._tag = await self._queue.consume(self._buffer.put, no_ack=False)

    def stop(self) -> None:
        # Deliveries already buffered but not yet yielded stay unacked and go
        # back to the queue when the channel closes.
        self._buffer.put_nowait(None)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def batches(self) -> AsyncIterator[Batch]:
        buffer = self._buffer
        while (first := await buffer.get()) is not None:
            messages = [first]
            if buffer.qsize() < self.batch_size - 1:
                # Deliveries trickle in frame by frame: waiting a moment once
                # turns a stream of tiny batches into a few full ones.
                await asyncio.sleep(self.linger)
            while len(messages) < self.batch_size and not buffer.empty():
                m = buffer.get_nowait()
                if m is None:  # stopped: the sentinel ends the next round
                    buffer.put_nowait(None)
                    break
                messages.append(m)
            yield Batch([m.body for m in messages], _acker(messages[-1]))
        if self._queue is not None and self._tag is not None:
            try:
                await self._queue.cancel(self._tag)
            except Exception as e:  # connection already gone: nothing to cancel
                log.warning("amqp %s: cancelling the consumer failed: %s", self.queue_name, e)


def _acker(last: AbstractIncomingMessage):
    async def ack() -> None:
        try:
            await last.ack(multiple=True)
        except Exception as e:
            # The channel was lost (reconnect): the broker requeues everything
            # unacked on it, so these messages come again. At-least-once.
            log.warning("amqp ack failed (messages will be redelivered): %s", e)

    return ack
