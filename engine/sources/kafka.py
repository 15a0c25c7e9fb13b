"""Kafka consumer-group source (confluent-kafka, i.e. librdkafka).

librdkafka fetches and parses records in C threads of its own; the source
takes them in batches (`Consumer.consume`) on a dedicated thread, so the
event loop never blocks on the client, and hands the payloads (bytes) to the
pipeline as they are.

Offsets are committed by hand, only when the pipeline acks a batch: the
commit covers the records of that batch (next offset per partition), and of
the batches acked while the previous commit was under way. The pipeline
acks batches in order, so committed offsets only move forward and never past
a record still in flight. After a rebalance a commit for a lost
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
import threading
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from pydantic import Field

from engine.schema import KafkaConnection
from engine.sources.base import Batch, Source, SourceContext, SourceOptions
from engine.sources.registry import register

log = logging.getLogger(__name__)

# How long start() waits for the cluster's metadata before giving up (it gives
# up at once when every bootstrap server failed or authentication failed).
START_TIMEOUT = 30.0
# The longest one wait for records blocks the consumer thread (stop() is
# noticed within this time).
POLL_TIMEOUT = 0.2


class KafkaOptions(KafkaConnection, SourceOptions):
    """Consume notifications (one JSON object per message) from Kafka topics."""

    topics: list[str] = Field(min_length=1)
    group_id: str = Field(default="forwarder", min_length=1)
    # Where a group without committed offsets starts. "earliest": a new
    # forwarder processes what is already in the topic (at-least-once).
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = Field(default=10_000, ge=1_000, le=3_600_000)
    max_batch: int = Field(default=500, ge=1, le=100_000)
    """Most records taken per poll."""
    fetch_wait_max_ms: int = Field(default=10, ge=1, le=30_000)
    """The longest the broker may hold a fetch before answering (librdkafka's
    fetch.wait.max.ms). A broker that does not answer as soon as records
    arrive (tansu) otherwise hands them over in bursts of up to 500 ms,
    which then queue behind each other in the worker. The price: an idle
    consumer sends each broker a fetch every fetch_wait_max_ms."""


class KafkaStartError(RuntimeError):
    """The source cannot be used: bad settings, broker unreachable, login refused."""


@register
class KafkaSource(Source):
    kind = "kafka"
    Options = KafkaOptions

    def __init__(self, *, bootstrap_servers: str | list[str] = "127.0.0.1:9092",
                 topics: list[str], group_id: str, batch_size: int = 1000,
                 auto_offset_reset: str = "earliest", session_timeout_ms: int = 10000,
                 heartbeat_interval_ms: int = 3000, name: str | None = None,
                 handoff_timeout: float = 10.0, fetch_wait_max_ms: int = 10,
                 config: Mapping[str, Any] | None = None) -> None:
        """`config`: further librdkafka settings (security, client.id; see
        `engine.schema.KafkaClient`); they override the defaults below."""
        super().__init__(name)
        self.topics = topics
        self.group_id = group_id
        self.batch_size = batch_size
        self.handoff_timeout = handoff_timeout
        self.assigned: set[tuple[str, int]] = set()
        servers = bootstrap_servers if isinstance(bootstrap_servers, str) \
            else ",".join(bootstrap_servers)
        self.bootstrap_servers = servers
        self.config: dict[str, Any] = {
            "bootstrap.servers": servers,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Only for a group without committed offsets: an existing group
            # resumes where it committed. ("latest" is unreliable on some
            # Kafka-wire brokers, e.g. tansu.)
            "auto.offset.reset": auto_offset_reset,
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": heartbeat_interval_ms,
            "fetch.wait.max.ms": fetch_wait_max_ms,
            # librdkafka stops fetching a partition whose local queue is over
            # queued.min.messages, and looks again only after this long
            # (default 1 s); a worker that drains the queue within that second
            # then sits idle for the rest of it (measured: 5 ms of work per
            # 2,000 records halved a consumer's rate).
            "fetch.queue.backoff.ms": 10,
            "log.connection.close": False,
            # librdkafka's statistics carry each partition's consumer lag
            # (engine_source_kafka_consumer_lag); parsed on the poll thread.
            "statistics.interval.ms": 5000,
            **(config or {}),
        }
        self.lag: dict[tuple[str, int], int] = {}  # (topic, partition) -> records behind
        self._consumer: Consumer | None = None
        # One thread calls the consumer (consume, rebalance callbacks, close);
        # another one commits, so that a commit never waits for a poll.
        self._poller = ThreadPoolExecutor(1, thread_name_prefix="kafka-poll")
        self._committer_thread = ThreadPoolExecutor(1, thread_name_prefix="kafka-commit")
        self._commit_lock = threading.Lock()
        self._to_commit: dict[tuple[str, int], int] = {}  # acked, not committed: last offsets
        self._commit_batches = 0  # the acked batches _to_commit covers
        self._committing = False  # _commit_pending is queued or running
        self._outstanding = 0            # batches yielded, not committed yet
        self._acked = threading.Condition()  # notified whenever _outstanding drops to 0
        self._errors: list[KafkaError] = []  # reported by librdkafka, not handled yet
        self._fatal: KafkaError | None = None
        self._last_warning: dict[int, float] = {}
        self._stopped = False

    # -- life cycle -------------------------------------------------------------

    @classmethod
    def from_options(cls, options: KafkaOptions, *, batch_size: int,
                     metrics: Any = None, context: SourceContext | None = None) -> KafkaSource:
        o = options  # batch_size: the source has its own (max_batch)
        return cls(bootstrap_servers=o.bootstrap_servers, topics=o.topics, group_id=o.group_id,
                   batch_size=o.max_batch, auto_offset_reset=o.auto_offset_reset,
                   session_timeout_ms=o.session_timeout_ms,
                   heartbeat_interval_ms=max(o.session_timeout_ms // 3, 100),
                   fetch_wait_max_ms=o.fetch_wait_max_ms, config=o.client().librdkafka())

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._poller, self._start)

    def _start(self) -> None:
        config = {**self.config, "error_cb": self._on_error, "stats_cb": self._on_stats,
                  "logger": log.getChild("librdkafka")}
        try:
            consumer = Consumer(config)
        except (KafkaException, ValueError, TypeError) as e:
            raise KafkaStartError(f"kafka source: invalid settings: {_reason(e)}") from None
        try:
            self._wait_for_cluster(consumer)
            consumer.subscribe(self.topics, on_assign=self._on_assign,
                               on_revoke=self._on_revoke, on_lost=self._on_lost)
        except BaseException:
            consumer.close()
            raise
        self._consumer = consumer

    def _wait_for_cluster(self, consumer: Consumer) -> None:
        """Fetch the cluster's metadata once: raises KafkaStartError naming the
        cause when no bootstrap server answers or the login is refused."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                consumer.list_topics(timeout=0.5)
                self._errors.clear()
                return
            except KafkaException as e:
                failure = e.args[0] if e.args else None
            consumer.poll(0)  # serves the error callback (nothing is subscribed yet)
            errors, self._errors = self._errors, []
            causes = [e for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN]
            refused = [e for e in errors if e.fatal() or e.code() in _REFUSED]
            down = any(e.code() == KafkaError._ALL_BROKERS_DOWN for e in errors)
            if refused or down or time.monotonic() > deadline:
                cause = (refused or causes or [failure])[0]
                raise KafkaStartError(f"kafka source: cannot use {self.bootstrap_servers}: "
                                      f"{_reason(cause)}")

    def stop(self) -> None:
        self._stopped = True

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._close)

    def _close(self) -> None:
        # Waits for a commit or a poll still running (after a shutdown timeout).
        self._committer_thread.shutdown(wait=True)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            self._poller.submit(consumer.close).result()
        self._poller.shutdown(wait=True)

    # -- intake -----------------------------------------------------------------

    async def batches(self) -> AsyncIterator[Batch]:
        loop = asyncio.get_running_loop()
        # One batch is taken ahead: the consumer thread converts the next
        # records while the pipeline routes these.
        ahead: asyncio.Future[Any] | None = loop.run_in_executor(self._poller, self._take)
        try:
            while True:
                assert ahead is not None
                items, offsets = await ahead
                ahead = None
                if self._fatal is not None:
                    raise KafkaException(self._fatal)
                if self._stopped:
                    if offsets:  # taken, never yielded: redelivered later
                        self._settled()
                    return
                ahead = loop.run_in_executor(self._poller, self._take)
                if offsets:
                    yield Batch(items, self._ack_for(offsets))
        finally:
            if ahead is not None:  # taken ahead, not yielded (cancelled, or not iterated on)
                ahead.add_done_callback(self._drop_taken)

    def _drop_taken(self, ahead: asyncio.Future) -> None:
        if not ahead.cancelled() and ahead.exception() is None and ahead.result()[1]:
            self._settled()

    def _take(self) -> tuple[list[bytes], dict[tuple[str, int], int]]:
        """(payloads, last offset per partition) of the records available now,
        or of those arriving within POLL_TIMEOUT (on the consumer thread). A
        batch with records counts as outstanding from here on: a rebalance
        in the next call waits for its ack."""
        consumer = self._consumer
        if self._stopped:
            return [], {}
        assert consumer is not None  # started, not closed: the source is iterated
        messages = consumer.consume(self.batch_size, 0)
        if not messages:
            # Returns at the first record (consume() would wait for a full batch).
            first = consumer.poll(POLL_TIMEOUT)
            if first is None:
                return [], {}
            messages = [first]
            if self.batch_size > 1:
                messages.extend(consumer.consume(self.batch_size - 1, 0))
        items: list[bytes] = []
        last: dict[tuple[str, int], int] = {}
        for m in messages:
            error = m.error()
            if error is not None:
                self._on_error(error)
                continue
            value = m.value()
            if value is not None:
                items.append(value)
            last[m.topic(), m.partition()] = m.offset()
        if last:
            with self._acked:
                self._outstanding += 1
        return items, last

    def _settled(self, n: int = 1) -> None:
        with self._acked:
            self._outstanding -= n
            if not self._outstanding:
                self._acked.notify_all()

    # -- acks ---------------------------------------------------------------------

    def _ack_for(self, last: dict[tuple[str, int], int]):
        async def ack() -> None:
            self._queue_commit(last)

        return ack

    def _queue_commit(self, last: dict[tuple[str, int], int]) -> None:
        """An acked batch's offsets join the next commit. Acks come in order,
        so the latest offset of a partition covers the earlier ones: while
        one commit is under way, the batches acked meanwhile are merged into
        one more (a commit takes milliseconds; the pipeline acks a batch
        every few, and would otherwise wait for each)."""
        with self._commit_lock:
            self._to_commit.update(last)
            self._commit_batches += 1
            if self._committing:
                return
            self._committing = True
        self._committer_thread.submit(self._commit_pending)

    def _commit_pending(self) -> None:
        """(committer thread) Commit what was acked until nothing is left. A
        batch stops counting as outstanding once its offsets are committed
        (or the commit failed: its records are then redelivered)."""
        while True:
            with self._commit_lock:
                last, self._to_commit = self._to_commit, {}
                n, self._commit_batches = self._commit_batches, 0
                if not n:
                    self._committing = False
                    return
            try:
                self._commit([TopicPartition(t, p, o + 1) for (t, p), o in last.items()])
            finally:
                self._settled(n)

    def _commit(self, offsets: list[TopicPartition]) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        try:
            done = consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as e:
            log.warning("kafka commit failed (records will be redelivered): %s", _reason(e))
            return
        failed = [tp for tp in done or () if tp.error is not None]
        if failed:
            log.warning("kafka commit failed for %s (records will be redelivered): %s",
                        _partitions((tp.topic, tp.partition) for tp in failed),
                        _reason(failed[0].error))

    # -- callbacks (on the consumer thread) -----------------------------------------

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error
        if self._consumer is None:  # starting: _wait_for_cluster decides
            self._errors.append(error)
            return
        if error.code() == KafkaError._PARTITION_EOF:
            return
        # librdkafka retries by itself; one line per kind of problem per 30 s.
        now = time.monotonic()
        if now - self._last_warning.get(error.code(), -1e9) >= 30:
            self._last_warning[error.code()] = now
            log.warning("kafka: %s", _reason(error))

    def _on_revoke(self, _consumer: Consumer, revoked: list[TopicPartition]) -> None:
        """Before giving up partitions: let the batches in flight be acked."""
        self.assigned.clear()
        if not revoked or self._stopped:
            return
        with self._acked:
            n = self._outstanding
            if not n:
                return
            if self._acked.wait_for(lambda: not self._outstanding, self.handoff_timeout):
                log.info("kafka group %s: rebalance: committed %d batch(es) in flight before "
                         "giving up partitions", self.group_id, n)
            else:
                log.warning("kafka group %s: rebalance: %d batch(es) not acked within %gs; "
                            "their records will be redelivered to the partitions' new owners",
                            self.group_id, self._outstanding, self.handoff_timeout)

    def _on_lost(self, _consumer: Consumer, lost: list[TopicPartition]) -> None:
        self.assigned.clear()
        log.warning("kafka group %s: %d partition(s) lost (session timed out): %s; records "
                    "not committed yet go to their new owners", self.group_id, len(lost),
                    _partitions((tp.topic, tp.partition) for tp in lost))

    def _on_stats(self, stats: str) -> None:
        """librdkafka statistics: keep the lag of the partitions this worker
        owns: from the committed offset (or, with none yet, the oldest
        retained record) to the end of the partition."""
        try:
            topics = orjson.loads(stats).get("topics", {})
        except orjson.JSONDecodeError:
            return
        owned, lag = self.assigned, {}
        for t, topic in topics.items():
            for p, part in topic["partitions"].items():
                if (t, int(p)) not in owned:
                    continue
                n = part.get("consumer_lag", -1)
                if n < 0 and part.get("committed_offset", -1) < 0 <= part.get("lo_offset", -1):
                    # nothing committed yet: every retained record is still to come
                    n = part.get("hi_offset", -1) - part["lo_offset"]
                if n >= 0:
                    lag[(t, int(p))] = n
        self.lag = lag

    def _on_assign(self, _consumer: Consumer, assigned: list[TopicPartition]) -> None:
        self.assigned = {(tp.topic, tp.partition) for tp in assigned}
        log.info("kafka group %s: %d partition(s) assigned: %s", self.group_id,
                 len(assigned), _partitions(self.assigned))


# Errors that retrying does not fix: a refused login, a broker without SSL.
_REFUSED = {KafkaError._AUTHENTICATION, KafkaError._SSL,
            KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError.UNSUPPORTED_SASL_MECHANISM,
            KafkaError.ILLEGAL_SASL_STATE}


def _reason(e: BaseException | KafkaError | None) -> str:
    if isinstance(e, KafkaException) and e.args and isinstance(e.args[0], KafkaError):
        e = e.args[0]
    if isinstance(e, KafkaError):
        return e.str()
    return str(e) if e is not None else "no answer"


def _partitions(tps) -> str:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in tps:
        by_topic.setdefault(topic, []).append(partition)
    return ", ".join(f"{t}{sorted(p)}" for t, p in sorted(by_topic.items())) or "none"
