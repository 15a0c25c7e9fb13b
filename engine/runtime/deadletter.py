"""Dead letters: what the engine could not use or deliver, with the reason.

One JSON document per item: {"time", "reason", "source", "payload"} plus
"rule_id"/"action_id"/"key" for records a destination refused. A malformed
input's payload is its raw text (it may not be JSON at all). `write` returns
only once the entries are stored durably (file fsync'd, Kafka acks=all, AMQP
publisher confirm), because the source batch is acked right after; while the
store fails it keeps retrying rather than lose them.

`DeadLetters()` itself stores nothing: the entries are counted by the caller
and logged here, one line per batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import orjson

from engine.destinations.jsonl_file import append_durably

log = logging.getLogger(__name__)

RETRY_MAX = 30.0


def raw_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class DeadLetters:
    where = "nowhere"

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Connect; raise if the store cannot be used at all."""

    async def close(self) -> None:
        pass

    async def write(self, entries: list[dict[str, Any]]) -> None:
        """Store entries (each with at least reason, source, payload)."""
        if not entries:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        docs = [orjson.dumps({"time": now, **e}) for e in entries]
        delay = 0.1
        async with self._lock:
            while True:
                try:
                    await self._store(docs)
                    return
                except Exception as e:
                    log.error("cannot store %d dead letter(s) in %s: %s: %s; retrying in %gs",
                              len(docs), self.where, type(e).__name__, e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)

    async def _store(self, docs: list[bytes]) -> None:
        log.warning("%d dead letter(s) dropped (no dead_letter configured), first: %s",
                    len(docs), docs[0][:300].decode(errors="replace"))


class FileDeadLetters(DeadLetters):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.where = self.path = path
        self._fd: int | None = None

    async def open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def _store(self, docs: list[bytes]) -> None:
        # Not docs.append(b""): the caller retries with the same list.
        await asyncio.to_thread(append_durably, self._fd, b"\n".join(docs) + b"\n")


class KafkaDeadLetters(DeadLetters):
    def __init__(self, topic: str, **producer_options: Any) -> None:
        super().__init__()
        self.topic = topic
        self.where = f"kafka topic {topic}"
        self._options = producer_options
        self._producer = None

    async def open(self) -> None:
        from aiokafka import AIOKafkaProducer

        self._producer = AIOKafkaProducer(acks="all", **self._options)
        await self._producer.start()

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _store(self, docs: list[bytes]) -> None:
        futures = [await self._producer.send(self.topic, d) for d in docs]
        await asyncio.gather(*futures)


class AmqpDeadLetters(DeadLetters):
    def __init__(self, url: str, queue: str) -> None:
        super().__init__()
        self.url, self.queue = url, queue
        self.where = f"amqp queue {queue}"
        self._connection = None
        self._channel = None

    async def open(self) -> None:
        import aio_pika

        self._connection = await aio_pika.connect_robust(self.url)
        self._channel = await self._connection.channel(publisher_confirms=True)
        await self._channel.declare_queue(self.queue, durable=True)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def _store(self, docs: list[bytes]) -> None:
        import aio_pika

        exchange = self._channel.default_exchange
        # Publish them all, then wait for every confirm: one round trip per batch.
        await asyncio.gather(*(exchange.publish(
            aio_pika.Message(d, content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=self.queue) for d in docs))


def dead_letters_from_config(config) -> DeadLetters:
    """A DeadLetters for a `DeadLetterConfig` (None: store nothing)."""
    if config is None:
        return DeadLetters()
    if config.kind == "file":
        return FileDeadLetters(config.file)
    if config.kind == "kafka":
        from engine.sources.kafka import client_options

        return KafkaDeadLetters(config.kafka.topic, **client_options(config.kafka))
    return AmqpDeadLetters(config.amqp.url.get_secret_value(), config.amqp.queue)
