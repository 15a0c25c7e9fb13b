"""Kafka consumer-group source (aiokafka).

Offsets are committed by hand, only when the pipeline acks a batch: the
commit covers exactly the records of that batch (next offset per partition).
The pipeline acks batches in order, so committed offsets only move forward and
never past a record still in flight. After a rebalance a commit for a lost
partition fails; its records are then redelivered to the new owner
(at-least-once), which is logged, not fatal.

Scale-out: workers with the same `group_id` split the partitions. When the
group rebalances (a worker joins, or one left or died), a worker that is
giving up partitions first waits - at most `handoff_timeout` seconds - until
the batches it already took are acked, so their offsets are committed before
the new owner starts reading: a planned rebalance causes no duplicates. A
worker that dies (kill -9) commits nothing more; its partitions go to the
others once its session times out, and they re-read from its last commit
(duplicates, at-least-once). Assignments are logged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
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
                 handoff_timeout: float = 10.0, **consumer_options) -> None:
        super().__init__(name)
        self.topics = topics
        self.group_id = group_id
        self.batch_size = batch_size
        self.handoff_timeout = handoff_timeout
        self.assigned: set[TopicPartition] = set()
        self._outstanding = 0            # batches yielded, not acked yet
        self._acked = asyncio.Event()    # set whenever _outstanding drops to 0
        self._consumer = AIOKafkaConsumer(
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
        self._consumer.subscribe(topics, listener=_Handoff(self))
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
            self._outstanding += 1
            self._acked.clear()
            yield Batch(items, self._committer(offsets))

    def _committer(self, offsets: dict[TopicPartition, int]):
        async def ack() -> None:
            try:
                await self._consumer.commit(offsets)
            except KafkaError as e:
                log.warning("kafka commit failed (records will be redelivered): %s", e)
            finally:
                self._outstanding -= 1
                if not self._outstanding:
                    self._acked.set()

        return ack

    async def _handoff(self, revoked: set[TopicPartition]) -> None:
        """Before giving up partitions: let the batches in flight be acked."""
        if not revoked or not self._outstanding or self._stopped:
            return
        n = self._outstanding
        try:
            await asyncio.wait_for(self._acked.wait(), self.handoff_timeout)
        except TimeoutError:
            log.warning("kafka group %s: rebalance: %d batch(es) not acked within %gs; their "
                        "records will be redelivered to the partitions' new owners",
                        self.group_id, self._outstanding, self.handoff_timeout)
        else:
            log.info("kafka group %s: rebalance: committed %d batch(es) in flight before "
                     "giving up partitions", self.group_id, n)


def _partitions(tps) -> str:
    by_topic: dict[str, list[int]] = {}
    for tp in tps:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return ", ".join(f"{t}{sorted(p)}" for t, p in sorted(by_topic.items())) or "none"


class _Handoff(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked) -> None:
        await self.source._handoff(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        self.source.assigned = set(assigned)
        log.info("kafka group %s: %d partition(s) assigned: %s", self.source.group_id,
                 len(assigned), _partitions(assigned))
