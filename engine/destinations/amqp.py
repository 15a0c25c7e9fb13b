"""AMQP_FORWARDING: publish rule outputs to a queue with publisher confirms."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field, SecretStr

from engine.destinations.base import Record, Sink, WriteResult
from engine.destinations.common import _Model
from engine.destinations.registry import register


class AmqpForwarding(_Model):
    """IoTDA AmqpForwarding (Table 1-191) plus engine options."""

    queue_name: str = Field(min_length=8, max_length=256)
    # --- engine options (not in the seed) ---
    url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    """Broker URL. In IoTDA the broker is the platform's own; a self-hosted
    engine publishes to yours. A SecretStr because it carries the password."""
    timeout_s: float = Field(default=15.0, gt=0, le=600)
    """Connect timeout and wait for a publisher confirm."""


@register
class AmqpSink(Sink):
    channel = "AMQP_FORWARDING"
    detail_key = "amqp_forwarding"
    Config = AmqpForwarding

    async def write(self, records: Sequence[Record]) -> WriteResult:
        return WriteResult.all_failed(len(records), "not implemented yet", False)
