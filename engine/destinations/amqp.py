"""AMQP_FORWARDING: publish rule outputs to a queue with publisher confirms.

Persistent messages go through the default exchange with the queue as routing
key. A batch's publishes are pipelined and their confirms gathered: a record
succeeds only when the broker acks it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr

from engine.destinations.base import Failure, Record, Sink, SinkError, Unavailable, WriteResult
from engine.destinations.common import AmqpUrl, _Model
from engine.destinations.registry import register

if TYPE_CHECKING:
    import aio_pika  # imported when a sink opens: a worker without AMQP never loads it


class AmqpForwarding(_Model):
    """IoTDA AmqpForwarding (Table 1-191) plus engine options."""

    queue_name: str = Field(min_length=8, max_length=256)
    # --- engine options (not in the seed) ---
    url: AmqpUrl = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    """Broker URL. In IoTDA the broker is the platform's own; a self-hosted
    engine publishes to yours. A SecretStr because it carries the password."""
    timeout_s: float = Field(default=15.0, gt=0, le=600)
    """Connect timeout and wait for a publisher confirm."""


log = logging.getLogger(__name__)


@register
class AmqpSink(Sink):
    channel = "AMQP_FORWARDING"
    detail_key = "amqp_forwarding"
    Config = AmqpForwarding
    config: AmqpForwarding

    def __init__(self, config: AmqpForwarding, *, declare: bool = False) -> None:
        """`declare`: create the queue (durable) if it is missing, instead
        of refusing to open (the dead-letter store's behaviour)."""
        super().__init__(config)
        self.declare = declare
        self._conn: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None

    async def open(self) -> None:
        """Connect and check the queue. A broker that is down is not an error
        here (writes report retryable failures and reconnect); bad
        credentials or a missing queue raise SinkError."""
        try:
            await self._connect()
        except Unavailable as e:
            log.warning("AMQP sink for queue %r: %s; will retry on write",
                        self.config.queue_name, e)

    async def _connect(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            return
        import aio_pika
        import aiormq.exceptions as amqp_errors

        c = self.config
        try:
            if self._conn is None:
                # Robust: once connected, reconnects by itself after a loss.
                self._conn = await aio_pika.connect_robust(
                    c.url.get_secret_value(), timeout=c.timeout_s)
            channel = await self._conn.channel(publisher_confirms=True, on_return_raises=True)
        except amqp_errors.ProbableAuthenticationError:
            raise SinkError("AMQP broker refused the login: check user and password in url") from None
        except amqp_errors.ConnectionNotAllowed:
            raise SinkError("AMQP broker refused access to the virtual host in url") from None
        except (amqp_errors.AMQPError, OSError, TimeoutError) as e:
            # Not `from e`: the cause's text may carry the URL with its password.
            await self._drop()
            raise Unavailable(f"cannot connect to the AMQP broker ({type(e).__name__})") from None
        try:
            await channel.declare_queue(c.queue_name, passive=not self.declare,
                                        durable=self.declare, timeout=c.timeout_s)
        except amqp_errors.ChannelNotFoundEntity:
            await self._drop()
            raise SinkError(f"AMQP queue {c.queue_name!r} does not exist") from None
        except amqp_errors.ChannelAccessRefused:
            await self._drop()
            raise SinkError(f"AMQP access to queue {c.queue_name!r} refused") from None
        except (amqp_errors.AMQPError, OSError, TimeoutError) as e:
            raise Unavailable(f"AMQP queue check failed ({type(e).__name__})") from None
        self._channel = channel

    async def _drop(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # closing a broken connection: nothing to report
                pass

    async def close(self) -> None:
        await self._drop()

    async def write(self, records: Sequence[Record]) -> WriteResult:
        if (failed := await self._connect_or_fail(len(records))) is not None:
            return failed
        assert self._channel is not None
        import aio_pika

        exchange = self._channel.default_exchange
        queue, timeout = self.config.queue_name, self.config.timeout_s

        async def publish(rec: Record) -> None:
            msg = aio_pika.Message(
                rec.json_bytes(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                # aiormq matches a returned (unroutable) message by its id.
                message_id=uuid.uuid4().hex,
            )
            await exchange.publish(msg, routing_key=queue, mandatory=True, timeout=timeout)

        # Pipelined: every publish is written before any confirm is awaited.
        outcomes = await asyncio.gather(*(publish(r) for r in records), return_exceptions=True)
        failures = {i: _failure(o, queue) for i, o in enumerate(outcomes) if o is not None}
        if any(f.retryable for f in failures.values()) and self._channel.is_closed:
            self._channel = None  # reopen (and re-check the queue) next time
        return WriteResult(failures)


def _failure(exc: BaseException, queue: str) -> Failure:
    import aiormq.exceptions as amqp_errors

    if isinstance(exc, amqp_errors.PublishError):
        # mandatory + no route: the queue was deleted after open.
        return Failure(f"AMQP message returned unroutable: queue {queue!r} is gone", False)
    if isinstance(exc, amqp_errors.DeliveryError):
        return Failure("AMQP broker refused the message (nack)", True)
    if isinstance(exc, TimeoutError):
        return Failure("AMQP publisher confirm timed out", True)
    if isinstance(exc, Exception):
        return Failure(f"AMQP publish failed: {type(exc).__name__}", True)
    raise exc  # CancelledError and friends propagate
