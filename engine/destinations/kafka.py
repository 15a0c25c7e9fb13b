"""DMS_KAFKA_FORWARDING: produce rule outputs to a Kafka topic."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from engine.destinations.base import Record, Sink, WriteResult
from engine.destinations.common import SupportPrivateLinkNetAddress, _Model
from engine.destinations.registry import register


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
    max_batch_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    """Per-partition producer batch size."""
    timeout_s: float = Field(default=15.0, gt=0, le=600)
    """Request timeout and wait for delivery."""

    @model_validator(mode="after")
    def _credentials(self) -> DmsKafkaForwarding:
        if self.mechanism in ("PLAIN", "SCRAM-SHA-512") and not (self.username and self.password):
            raise ValueError(f"mechanism {self.mechanism} needs username and password")
        return self


@register
class KafkaSink(Sink):
    channel = "DMS_KAFKA_FORWARDING"
    detail_key = "dms_kafka_forwarding"
    Config = DmsKafkaForwarding

    async def write(self, records: Sequence[Record]) -> WriteResult:
        return WriteResult.all_failed(len(records), "not implemented yet", False)
