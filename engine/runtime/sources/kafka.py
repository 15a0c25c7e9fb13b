"""Kafka consumer-group source (aiokafka).

Offsets are committed by hand, only when the pipeline acks a batch: the
commit covers exactly the records of that batch (next offset per partition).
The pipeline acks batches in order, so committed offsets only move forward and
never past a record still in flight. After a rebalance a commit for a lost
partition fails; its records are then redelivered to the new owner
(at-least-once), which is logged, not fatal.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from engine.runtime.sources import Batch, Source

log = logging.getLogger(__name__)


def client_options(conn) -> dict[str, Any]:
    """aiokafka connection arguments for a config `KafkaConnection` (holds the
    password: never log the result)."""
    options: dict[str, Any] = {"bootstrap_servers": conn.bootstrap_servers,
                               "client_id": conn.client_id,
                               "security_protocol": conn.security_protocol}
    if conn.sasl_mechanism:
        options.update(sasl_mechanism=conn.sasl_mechanism, sasl_plain_username=conn.sasl_username,
                       sasl_plain_password=conn.sasl_password.get_secret_value())
    if conn.security_protocol.endswith("SSL"):
        options["ssl_context"] = ssl.create_default_context(cafile=conn.ssl_cafile)
    return options


class KafkaSource(Source):
    kind = "kafka"

    def __init__(self, *, bootstrap_servers: str | list[str] = "127.0.0.1:9092",
                 topics: list[str], group_id: str, batch_size: int = 1000,
                 auto_offset_reset: str = "earliest", session_timeout_ms: int = 10000,
                 heartbeat_interval_ms: int = 3000, name: str | None = None,
                 **consumer_options) -> None:
        super().__init__(name)
        self.topics = topics
        self.batch_size = batch_size
        self._consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            enable_auto_commit=False,
            # Only for a group without committed offsets: an existing group
            # resumes where it committed. ("latest" is unreliable on some
            # Kafka-wire brokers, e.g. tansu.)
            auto_offset_reset=auto_offset_reset,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            max_poll_records=batch_size,
            **consumer_options,
        )
        self._stopped = False
        self._started = False

    async def start(self) -> None:
        await self._consumer.start()
        self._started = True

    def stop(self) -> None:
        self._stopped = True

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self._consumer.stop()

    async def batches(self) -> AsyncIterator[Batch]:
        consumer = self._consumer
        while not self._stopped:
            # A short poll timeout so that stop() is noticed promptly.
            fetched = await consumer.getmany(timeout_ms=200, max_records=self.batch_size)
            if not fetched:
                continue
            items: list[bytes] = []
            offsets: dict[TopicPartition, int] = {}
            for tp, records in fetched.items():
                items.extend(r.value for r in records if r.value is not None)
                offsets[tp] = records[-1].offset + 1
            yield Batch(items, self._committer(offsets))

    def _committer(self, offsets: dict[TopicPartition, int]):
        async def ack() -> None:
            try:
                await self._consumer.commit(offsets)
            except KafkaError as e:
                log.warning("kafka commit failed (records will be redelivered): %s", e)

        return ack
