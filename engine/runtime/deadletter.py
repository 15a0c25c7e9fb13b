"""Dead letters: what the engine could not use or deliver, with the reason.

One JSON document per item: {"time", "reason", "source", "payload"} plus
"rule_id"/"action_id"/"key" for records a destination refused. A malformed
input's payload is its raw text (it may not be JSON at all).

A dead-letter store is a thin wrapper over a destination (`Sink`): the
`dead_letter:` file, Kafka topic or AMQP queue is written by the
FILE_FORWARDING, DMS_KAFKA_FORWARDING or AMQP_FORWARDING sink. `write`
returns only once every entry is stored durably (file fsync'd, Kafka
acks=all, AMQP publisher confirm), because the source batch is acked right
after; while the store fails it keeps retrying the entries not yet stored
rather than lose them.

`DeadLetters()` without a sink stores nothing: the entries are counted by
the caller and logged here, one line per batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import SecretStr

from engine.destinations.amqp import AmqpForwarding, AmqpSink
from engine.destinations.base import Record, Sink
from engine.destinations.jsonl_file import FileForwarding, JsonlFileSink
from engine.destinations.kafka import DmsKafkaForwarding, KafkaSink
from engine.policies.outcome import write_sorted
from engine.policies.retry import Backoff, RetryPolicy
from engine.schema import KafkaClient

log = logging.getLogger(__name__)

RETRY_MAX = 30.0


def raw_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class DeadLetters:
    def __init__(self, sink: Sink | None = None, where: str = "nowhere") -> None:
        self.sink = sink
        self.where = where
        self._lock = asyncio.Lock()
        # Called with the entries once they are stored: the worker hands the
        # rules' dead letters to their error actions (engine.runtime.worker).
        self.on_stored: Callable[[list[dict[str, Any]]], None] | None = None

    async def open(self) -> None:
        """Connect; raise if the store cannot be used at all (also when it
        cannot be reached now: a worker does not start without its store)."""
        if self.sink is not None:
            await self.sink.open()
            await self.sink._connect()

    async def close(self) -> None:
        if self.sink is not None:
            await self.sink.close()

    async def write(self, entries: list[dict[str, Any]]) -> None:
        """Store entries (each with at least reason, source, payload)."""
        if not entries:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        pending = [Record({"time": now, **e}) for e in entries]
        stored = [r.payload for r in pending]
        if self.sink is None:
            log.warning("%d dead letter(s) dropped (no dead_letter configured), first: %s",
                        len(pending), orjson.dumps(pending[0].payload)[:300].decode(
                            errors="replace"))
            if self.on_stored is not None:
                self.on_stored(stored)
            return
        backoff = Backoff(RetryPolicy.steady(0.1, RETRY_MAX))
        async with self._lock:
            while True:
                outcome = await write_sorted(self.sink, pending)
                if not outcome.failures:
                    break
                # Whatever the failure, retry: a dead letter has nowhere else to go.
                pending = [pending[i] for i in sorted(outcome.failures)]
                delay = backoff.failure()
                log.error("cannot store %d dead letter(s) in %s: %s; retrying in %gs",
                          len(pending), self.where, outcome.reason, delay)
                await asyncio.sleep(delay)
        if self.on_stored is not None:
            self.on_stored(stored)


class FileDeadLetters(DeadLetters):
    """Appended to a JSONL file, one line per entry."""

    def __init__(self, path: str) -> None:
        super().__init__(JsonlFileSink(FileForwarding(path=path)), path)
        self.path = path


class KafkaDeadLetters(DeadLetters):
    """Sent to a Kafka topic, without a key, connecting as `connection` says."""

    def __init__(self, topic: str, connection: KafkaClient) -> None:
        # Only the topic and the producer tuning of the channel_detail are
        # used: `connection` says where and how to connect.
        config = DmsKafkaForwarding.model_construct(topic=topic)
        super().__init__(KafkaSink(config, connection=connection), f"kafka topic {topic}")
        self.topic = topic


class AmqpDeadLetters(DeadLetters):
    """Published to an AMQP queue (declared durable if missing)."""

    def __init__(self, url: str, queue: str) -> None:
        config = AmqpForwarding.model_construct(queue_name=queue, url=SecretStr(url))
        super().__init__(AmqpSink(config, declare=True), f"amqp queue {queue}")
        self.url, self.queue = url, queue


def dead_letters_from_config(config) -> DeadLetters:
    """A DeadLetters for a `DeadLetterConfig` (None: store nothing)."""
    if config is None:
        return DeadLetters()
    if config.kind == "file":
        return FileDeadLetters(config.file)
    if config.kind == "kafka":
        return KafkaDeadLetters(config.kafka.topic, config.kafka.client())
    return AmqpDeadLetters(config.amqp.url.get_secret_value(), config.amqp.queue)
