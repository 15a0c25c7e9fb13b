"""DMS_KAFKA_FORWARDING: produce rule outputs to a Kafka topic.

acks=all; the record key (the device id) is the message key, so one device's
events land on one partition in order. A write() groups its records by the
partition aiokafka's default partitioner picks for the key and packs them
into batches of up to max_batch_bytes.

Uncompressed (the default), the core encodes the batches (kafka_batches:
half the CPU or less of aiokafka's builder driven from Python, see
benchmarks/route_cpu.py) and the sink produces them itself through
aiokafka's client: one produce request per partition leader holding each
partition's next batch, the acknowledgements read from the response: about
a third less CPU per write than going through aiokafka's producer
(accumulator, sender loop, a future per batch; benchmarks/README.md). The
client still owns the connections, metadata, SASL and TLS. A partition's
batches go one request at a time, and a write's requests only after the
previous write's are answered, so order holds per partition; a batch that
fails retryably (leader moved, timed out, connection lost) is sent again
after a metadata refresh until timeout_s, as aiokafka's producer does, and
then fails, and so do the later batches of its partition (in the same and
the next write), so a retry never overtakes them. Compressed, aiokafka's
builder and producer do it all.

The idempotent producer is not enabled (several Kafka-wire brokers do not
implement it), so a retried batch can duplicate messages: delivery is
at-least-once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import struct
import time
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import Field, SecretStr, model_validator

from engine._core import kafka_batches
from engine.destinations.base import Failure, Record, Sink, SinkError, Unavailable, WriteResult
from engine.destinations.common import SupportPrivateLinkNetAddress, _Model, client_ssl_context
from engine.destinations.registry import register
from engine.schema import KafkaClient

# aiokafka is imported when a sink opens (or classifies an error): a worker
# without Kafka actions or dead letters never loads it.
if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer


class DmsKafkaForwarding(_Model):
    """IoTDA DmsKafkaForwarding (Table 1-192) plus engine options."""

    region_name: str = Field(min_length=1, max_length=256)
    """Required by IoTDA; a self-hosted engine accepts and ignores it."""
    project_id: str = Field(min_length=1, max_length=256)
    """Required by IoTDA; a self-hosted engine accepts and ignores it."""
    addresses: list[SupportPrivateLinkNetAddress] = Field(min_length=1)
    topic: str = Field(min_length=1, max_length=256)
    username: str | None = Field(default=None, min_length=1, max_length=256)
    password: SecretStr | None = Field(default=None, min_length=1, max_length=256)
    mechanism: Literal["PAAS", "PLAIN", "SCRAM-SHA-512"] | None = None
    """PAAS or absent: no SASL, plaintext. PLAIN / SCRAM-SHA-512: SASL."""
    security_protocol: Literal["SASL_SSL", "SASL_PLAINTEXT"] | None = None
    """Absent means SASL_SSL; ignored when mechanism is PAAS or absent."""
    # --- engine options (not in the seed) ---
    ca_file: str | None = None
    """PEM CA bundle for SASL_SSL. Default: the system CAs."""
    verify_tls: bool = True
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    """snappy/lz4/zstd need aiokafka's optional extras installed."""
    linger_ms: int = Field(default=5, ge=0, le=60_000)
    """Passed to the producer (it sends compressed batches); write() sends its batches at once."""
    max_batch_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    """Size of the record batches a write() builds per partition."""
    timeout_s: float = Field(default=15.0, gt=0, le=600)
    """Request timeout and wait for delivery."""

    @model_validator(mode="after")
    def _credentials(self) -> DmsKafkaForwarding:
        if self.mechanism in ("PLAIN", "SCRAM-SHA-512") and not (self.username and self.password):
            raise ValueError(f"mechanism {self.mechanism} needs username and password")
        return self


log = logging.getLogger(__name__)

DEFAULT_PORT = 9092
MAX_REQUEST_BYTES = 1 << 20
"""Largest message (as aiokafka estimates it) accepted; aiokafka's default."""
_KEY_CACHE_MAX = 100_000
RETRY_BACKOFF_S = 0.1
"""Wait before a batch is sent again (aiokafka's retry_backoff_ms)."""



def _auth_errors() -> tuple[type[Exception], ...]:
    from aiokafka import errors as kafka_errors

    return (kafka_errors.SaslAuthenticationFailed, kafka_errors.UnsupportedSaslMechanismError,
            kafka_errors.IllegalSaslStateError, kafka_errors.TopicAuthorizationFailedError,
            kafka_errors.ClusterAuthorizationFailedError)


def client(c: DmsKafkaForwarding) -> KafkaClient:
    """The connection settings of a channel_detail (holds the password)."""
    servers = []
    for a in c.addresses:
        host = f"[{a.host}]" if ":" in a.host else a.host  # IPv6 literal
        servers.append(f"{host}:{a.port_or(DEFAULT_PORT)}")
    if c.mechanism in (None, "PAAS"):
        # IoTDA: security_protocol does not apply without SASL.
        return KafkaClient(servers)
    assert c.username is not None and c.password is not None  # checked by the model
    return KafkaClient(servers, c.security_protocol or "SASL_SSL", c.mechanism, c.username,
                       c.password.get_secret_value(), c.ca_file)


def producer_kwargs(c: DmsKafkaForwarding, connection: KafkaClient | None = None
                    ) -> dict[str, Any]:
    """The AIOKafkaProducer arguments for a channel_detail, connecting as
    `connection` says if given (the dead-letter store), else as `c` does
    (pure; holds the password, so never log the result)."""
    conn = connection or client(c)
    ssl_context = client_ssl_context(c.ca_file, c.verify_tls) \
        if connection is None and conn.tls else None
    return {
        **conn.aiokafka(ssl_context),
        "acks": "all",
        "enable_idempotence": False,
        "compression_type": None if c.compression == "none" else c.compression,
        "linger_ms": c.linger_ms,
        "max_batch_size": c.max_batch_bytes,
        "max_request_size": MAX_REQUEST_BYTES,
        "request_timeout_ms": int(c.timeout_s * 1000),
    }


def _failure(e: BaseException) -> Failure:
    from aiokafka import errors as kafka_errors

    if isinstance(e, _auth_errors()):
        return Failure(f"Kafka refused: {type(e).__name__}", False)
    if isinstance(e, kafka_errors.KafkaTimeoutError | asyncio.TimeoutError):
        return Failure("Kafka delivery timed out", True)
    if isinstance(e, kafka_errors.KafkaError):
        return Failure(f"Kafka error: {type(e).__name__}: {e}", bool(e.retriable))
    if isinstance(e, Exception):
        return Failure(f"Kafka error: {type(e).__name__}: {e}", True)
    raise e


def _end_turn(turn: asyncio.Future[dict[int, Failure]]) -> None:
    if not turn.done():
        turn.set_result({})


_PARTITION = struct.Struct(">ii")  # partition, size of its record batch


def encode_produce(version: int, acks: int, timeout_ms: int,
                   topics: list[tuple[str, list[tuple[int, bytes]]]]) -> bytes:
    """A ProduceRequest's body (v0-v8 share this layout; v3 on with the
    transactional id, null here), each record batch copied once: what
    aiokafka's encoder makes with about five copies."""
    chunks = [b"\xff\xff" if version >= 3 else b"", struct.pack(">hii", acks, timeout_ms,
                                                                 len(topics))]
    for topic, parts in topics:
        name = topic.encode()
        chunks.append(struct.pack(">h", len(name)) + name + struct.pack(">i", len(parts)))
        for p, buf in parts:
            chunks.append(_PARTITION.pack(p, len(buf)))
            chunks.append(buf)
    return b"".join(chunks)


@cache
def _produce_request() -> Any:
    """aiokafka's ProduceRequest, its body encoded by encode_produce (the
    client still picks the version the broker speaks and adds the header)."""
    from aiokafka.protocol.produce import ProduceRequest

    class _ProduceRequest(ProduceRequest):
        def build(self, request_struct_class: Any) -> Any:
            request = super().build(request_struct_class)
            if not request_struct_class.FLEXIBLE_VERSION:  # every version aiokafka has
                body = encode_produce(request_struct_class.API_VERSION, self._required_acks,
                                      self._timeout, self._topics)
                request.encode = lambda: body
            return request

    return _ProduceRequest


def _too_large(size: int) -> Failure:
    from aiokafka import errors as kafka_errors

    return _failure(kafka_errors.MessageSizeTooLargeError(
        f"The message is {size} bytes when serialized which is larger than the maximum "
        "request size you have configured with the max_request_size configuration"))  # aiokafka's


@register
class KafkaSink(Sink):
    channel = "DMS_KAFKA_FORWARDING"
    detail_key = "dms_kafka_forwarding"
    Config = DmsKafkaForwarding
    config: DmsKafkaForwarding
    # A write sends its batches in call order (see write) and then waits
    # for the broker; the next write is packed meanwhile and goes out when
    # the previous one is answered (one request per partition at a time, so
    # order holds per partition).
    writes_in_flight = 2

    def __init__(self, config: DmsKafkaForwarding, *,
                 connection: KafkaClient | None = None) -> None:
        """`connection` replaces the addresses and security of `config`
        (the dead-letter store's `kafka:` settings)."""
        super().__init__(config)
        self.connection = connection
        self._producer: AIOKafkaProducer | None = None
        # The latest write's turn: done when its batches are sent and answered
        # (queued, compressed), with the partitions it left failed.
        self._turn: asyncio.Future[dict[int, Failure]] | None = None
        self._parts: list[int] = []          # the topic's partitions the cache is for
        # device id -> (its bytes, partition): one lookup per record
        self._key_parts: dict[str, tuple[bytes, int]] = {}

    async def open(self) -> None:
        """Connect and look the topic up. A broker that is down is not an
        error here (writes report retryable failures and reconnect); refused
        credentials or TLS raise SinkError."""
        try:
            await self._connect()
        except Unavailable as e:
            log.warning("Kafka sink for topic %r: %s; will retry on write", self.config.topic, e)

    async def _connect(self) -> None:
        if self._producer is not None:
            return
        from aiokafka import AIOKafkaProducer
        from aiokafka import errors as kafka_errors

        kw = producer_kwargs(self.config, self.connection)
        producer = AIOKafkaProducer(**kw)
        try:
            await producer.start()
            # Metadata for the topic: fails if it does not exist and the broker
            # does not create topics on demand.
            await producer.partitions_for(self.config.topic)
        except Exception as e:
            await producer.stop()
            if isinstance(e, kafka_errors.UnknownTopicOrPartitionError):
                raise SinkError(f"Kafka topic {self.config.topic!r} does not exist") from None
            if isinstance(e, _auth_errors()):
                raise SinkError(f"Kafka refused the client: {type(e).__name__}") from None
            # The producer reports every bootstrap failure alike; one direct
            # connection tells a refused login or certificate from a down broker.
            await self._diagnose(kw)
            raise Unavailable(f"cannot reach the Kafka brokers ({type(e).__name__})") from None
        self._producer = producer

    async def _diagnose(self, kw: dict[str, Any]) -> None:
        from aiokafka import errors as kafka_errors
        from aiokafka.conn import create_conn

        for server in kw["bootstrap_servers"]:
            host, _, port = server.rpartition(":")
            try:
                conn = await create_conn(
                    host.strip("[]"), int(port),
                    request_timeout_ms=kw["request_timeout_ms"],
                    ssl_context=kw.get("ssl_context"),
                    security_protocol=kw["security_protocol"],
                    sasl_mechanism=kw.get("sasl_mechanism"),
                    sasl_plain_username=kw.get("sasl_plain_username"),
                    sasl_plain_password=kw.get("sasl_plain_password"),
                )
                conn.close()
                return
            except kafka_errors.UnsupportedSaslMechanismError:
                raise SinkError(f"Kafka broker {server} does not offer SASL mechanism "
                                f"{kw.get('sasl_mechanism')}") from None
            except (kafka_errors.SaslAuthenticationFailed, kafka_errors.IllegalSaslStateError):
                raise SinkError(f"Kafka broker {server} refused the SASL login "
                                "(check username and password)") from None
            except ssl.SSLCertVerificationError as e:
                raise SinkError(f"Kafka broker {server}: TLS certificate not trusted: "
                                f"{e.verify_message}") from None
            except Exception:  # down or unreachable: try the next address
                continue

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()  # flushes what is still batched

    def _partitioner(self, topic: str) -> tuple[dict[str, tuple[bytes, int]], Any]:
        """What aiokafka's DefaultPartitioner does, with the key -> partition
        choice cached while the topic's partition list stays the same: a
        key's partition is murmur2(key) over all partitions (sorted); no key
        means a random available partition."""
        from aiokafka import errors as kafka_errors
        from aiokafka.partitioner import murmur2

        assert self._producer is not None
        cluster = self._producer.client.cluster
        parts = sorted(cluster.partitions_for_topic(topic) or ())
        if parts != self._parts or len(self._key_parts) > _KEY_CACHE_MAX:
            self._parts, self._key_parts = parts, {}
        if not parts:
            raise kafka_errors.UnknownTopicOrPartitionError(topic)
        available = list(cluster.available_partitions_for_topic(topic) or ()) or parts
        return self._key_parts, lambda key: (
            parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)] if key is not None
            else random.choice(available))

    def _pack(self, records: Sequence[Record], cache: dict[str, tuple[bytes, int]], choose: Any
              ) -> tuple[dict[int, list[tuple[bytes, list[int]]]], dict[int, Failure]]:
        """Uncompressed: the core encodes the batches (`kafka_batches`)."""
        from aiokafka.record.util import calc_crc32c

        packed, too_large = kafka_batches(records, cache, choose, self.config.max_batch_bytes,
                                          MAX_REQUEST_BYTES, int(time.time() * 1000),
                                          calc_crc32c)
        return packed, {i: _too_large(size) for i, size in too_large}

    def _pack_compressed(self, records: Sequence[Record], cache: dict[str, tuple[bytes, int]],
                         choose: Any
                         ) -> tuple[dict[int, list[tuple[Any, list[int]]]], dict[int, Failure]]:
        """Compressed: aiokafka's batch builder (it compresses at the end)."""
        from aiokafka.record.default_records import DefaultRecordBatchBuilder

        producer = self._producer
        assert producer is not None
        failures: dict[int, Failure] = {}
        batches: dict[int, list[tuple[Any, list[int]]]] = {}
        current: dict[int, tuple[Any, list[int]]] = {}
        dumps = orjson.dumps
        limit = MAX_REQUEST_BYTES - 512  # below this no exact size estimate is needed
        for i, rec in enumerate(records):
            if (k := rec.key) is None:
                key, p = None, -1  # partition chosen below, if the record fits
            elif (hit := cache.get(k)) is not None:
                key, p = hit
            else:
                key = k.encode()
                p = choose(key)
                cache[k] = (key, p)
            value = rec.raw
            if value is None:
                value = dumps(rec.payload)
            if len(value) + (len(key) if key else 0) > limit:
                size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])
                if size > MAX_REQUEST_BYTES:  # what producer.send() refuses
                    failures[i] = _too_large(size)
                    continue
            if key is None:
                p = choose(None)
            cur = current.get(p)
            if cur is None or cur[0].append(key=key, value=value, timestamp=None) is None:
                # No batch yet, or it is full (append closed it): start another.
                cur = current[p] = (producer.create_batch(), [])
                batches.setdefault(p, []).append(cur)
                # An empty batch always takes its first record (aiokafka's rule);
                # should that ever change, fail the record rather than drop it.
                if cur[0].append(key=key, value=value, timestamp=None) is None:
                    failures[i] = Failure("Kafka error: the record does not fit a batch", False)
                    continue
            cur[1].append(i)
        return batches, failures

    async def write(self, records: Sequence[Record]) -> WriteResult:
        if not records:
            return WriteResult()
        # Concurrent writes go out in the order write() was called, whatever
        # each awaits before: each waits for the previous one's turn to end
        # (its batches answered, or queued when compressed) and learns which
        # partitions it left failed: its own batches to those fail too, so
        # they are retried behind the failed ones. (Only the next write
        # learns it: the runtime writes nothing more before the failed
        # records are in its backlog.)
        after, turn = self._turn, asyncio.get_running_loop().create_future()
        self._turn = turn
        try:
            return await self._write(records, after, turn)
        finally:
            if not turn.done():  # gave up early: still not before the previous write
                if after is None or after.done():
                    _end_turn(turn)
                else:
                    after.add_done_callback(lambda _: _end_turn(turn))

    async def _write(self, records: Sequence[Record],
                     after: asyncio.Future[dict[int, Failure]] | None,
                     turn: asyncio.Future[dict[int, Failure]]) -> WriteResult:
        if (failed := await self._connect_or_fail(len(records))) is not None:
            return failed
        producer = self._producer
        assert producer is not None
        topic = self.config.topic
        try:
            # Metadata for the topic (no request when it is known already).
            await producer.partitions_for(topic)
            cache, choose = self._partitioner(topic)
        except Exception as e:
            return WriteResult(dict.fromkeys(range(len(records)), _failure(e)))
        if self.config.compression != "none":
            return await self._write_compressed(records, cache, choose, after, turn)

        # batches[p] = [(batch bytes, indexes of its records), ...], in record order
        batches, failures = self._pack(records, cache, choose)
        broken = await after if after is not None else {}
        for p, f in broken.items():  # behind a failed batch: fail too, keep the order
            for _, idx in batches.pop(p, ()):
                failures.update(dict.fromkeys(idx, f))
        broken = await self._produce(topic, batches, failures)
        turn.set_result(broken)
        return WriteResult(failures)

    async def _produce(self, topic: str, batches: dict[int, list[tuple[bytes, list[int]]]],
                       failures: dict[int, Failure]) -> dict[int, Failure]:
        """Send `batches` in rounds (every partition's first batch, then every
        second one...), each round's batches in one request per leader, and
        wait for the acks. A batch that fails retryably is sent again until
        timeout_s; one that fails for good fails the rest of its partition.
        Fills `failures` (record index -> Failure); returns the partitions
        left failed."""
        deadline = time.monotonic() + self.config.timeout_s
        broken: dict[int, Failure] = {}
        for n in range(max((len(g) for g in batches.values()), default=0)):
            todo = {p: g[n] for p, g in batches.items() if n < len(g)}
            while todo:
                errors = await self._send_round(topic, todo, deadline)
                retry = {}
                for p, e in errors.items():
                    f = _failure(e)
                    if f.retryable and time.monotonic() + RETRY_BACKOFF_S < deadline:
                        retry[p] = todo[p]
                        continue
                    broken[p] = f
                    for _, idx in batches.pop(p)[n:]:
                        failures.update(dict.fromkeys(idx, f))
                if retry:
                    log.info("Kafka sink for topic %r: resending to partition(s) %s",
                             topic, sorted(retry))
                    await self._refresh_metadata(deadline)
                todo = retry
        return broken

    async def _send_round(self, topic: str, todo: dict[int, tuple[bytes, list[int]]],
                          deadline: float) -> dict[int, BaseException]:
        """One batch per partition, in one produce request per leader (split
        where a request would pass MAX_REQUEST_BYTES); the error of each
        partition that failed."""
        from aiokafka import errors as kafka_errors
        from aiokafka.structs import TopicPartition

        assert self._producer is not None
        client = self._producer.client
        errors: dict[int, BaseException] = {}
        requests: dict[int, list[list[tuple[int, bytes]]]] = {}
        for p, (buf, _) in todo.items():
            leader = client.cluster.leader_for_partition(TopicPartition(topic, p))
            if leader is None or leader < 0:
                errors[p] = kafka_errors.LeaderNotAvailableError(f"no leader for partition {p}")
                continue
            parts = requests.setdefault(leader, [[]])
            if parts[-1] and sum(len(b) for _, b in parts[-1]) + len(buf) > MAX_REQUEST_BYTES:
                parts.append([])
            parts[-1].append((p, buf))
        timeout_ms = max(1, int((deadline - time.monotonic()) * 1000))

        async def send(leader: int, parts: list[tuple[int, bytes]]) -> None:
            try:
                response = await client.send(
                    leader, _produce_request()(None, -1, timeout_ms, [(topic, parts)]))
            except Exception as e:  # connection lost, timed out, node not ready
                errors.update(dict.fromkeys((p for p, _ in parts), e))
                return
            answered = set()
            for _, partitions in response.topics:
                for info in partitions:  # (partition, error_code, base offset, ...)
                    answered.add(info[0])
                    if info[1]:
                        errors[info[0]] = kafka_errors.for_code(info[1])()
            for p, _ in parts:
                if p not in answered:
                    errors[p] = kafka_errors.KafkaError(f"no answer for partition {p}")

        sends = [send(leader, parts) for leader, group in requests.items() for parts in group]
        if len(sends) == 1:
            await sends[0]
        else:
            await asyncio.gather(*sends)
        return errors

    async def _refresh_metadata(self, deadline: float) -> None:
        """Back off, then let aiokafka's client look the leaders up again."""
        await asyncio.sleep(RETRY_BACKOFF_S)
        assert self._producer is not None
        try:
            await asyncio.wait_for(self._producer.client.force_metadata_update(),
                                   max(0.01, deadline - time.monotonic()))
        except Exception:  # the next send reports what is wrong
            pass

    async def _write_compressed(self, records: Sequence[Record],
                                cache: dict[str, tuple[bytes, int]], choose: Any,
                                after: asyncio.Future[dict[int, Failure]] | None,
                                turn: asyncio.Future[dict[int, Failure]]) -> WriteResult:
        """aiokafka's builder compresses and its producer sends: the batches
        are queued in rounds and the acks awaited. The producer holds one
        undrained batch per partition, so a partition's later batches wait
        for its earlier ones, and it drains every partition's batch into one
        request: the batches go in rounds (every partition's first, then
        every second one...), awaited one by one, so only a partition's own
        earlier batch is ever waited for. Waiting for the turn keeps
        concurrent writes from interleaving their batches within a
        partition."""
        producer = self._producer
        assert producer is not None
        topic = self.config.topic
        batches, failures = self._pack_compressed(records, cache, choose)
        pending: list[tuple[list[int], asyncio.Future[Any]]] = []
        groups = list(batches.items())
        broken: set[int] = set()  # partitions a batch failed to queue on
        if after is not None:
            await after
        for n in range(max((len(g) for _, g in groups), default=0)):
            for p, group in groups:
                if n >= len(group) or p in broken:
                    continue
                batch, idx = group[n]
                batch.close()
                try:
                    pending.append((idx, await producer.send_batch(batch, topic, partition=p)))
                except Exception as e:  # e.g. timed out waiting for buffer space
                    # Later batches of this partition fail too (order).
                    broken.add(p)
                    f = _failure(e)
                    for _, rest in group[n:]:
                        failures.update(dict.fromkeys(rest, f))
        turn.set_result({})
        for idx, fut in pending:
            try:
                await fut
            except Exception as e:
                failures.update(dict.fromkeys(idx, _failure(e)))
        return WriteResult(failures)
