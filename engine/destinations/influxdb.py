"""INFLUXDB_FORWARDING: rule outputs as InfluxDB points (line protocol)."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field, SecretStr, model_validator

from engine.destinations.base import Record, Sink, WriteResult
from engine.destinations.common import ColumnMapping, NetAddress, _Model
from engine.destinations.registry import register


class InfluxDBForwarding(_Model):
    """IoTDA InfluxDBForwarding (Table 1-195) plus engine options.
    address.port defaults to 8086."""

    address: NetAddress
    db_name: str = Field(min_length=1, max_length=64)
    """Created at open if missing (v1 API)."""
    username: str = Field(min_length=1, max_length=256)
    password: SecretStr = Field(min_length=1, max_length=256)
    measurement: str = Field(min_length=1, max_length=64)
    column_mappings: list[ColumnMapping] = Field(min_length=1, max_length=32)
    # --- engine options (not in the seed) ---
    tags: list[str] = Field(default_factory=list, max_length=32)
    """column_names written as tags (values as strings); every other mapping
    is a field."""
    use_tls: bool = False
    """https instead of http."""
    ca_file: str | None = None
    verify_tls: bool = True
    timeout_s: float = Field(default=15.0, gt=0, le=600)
    max_points_per_request: int = Field(default=5000, ge=1, le=100_000)
    # InfluxDB 2.x/3.x API: set `token` (and `org`) to write through /api/v2/write.
    token: SecretStr | None = None
    org: str | None = Field(default=None, min_length=1, max_length=256)
    bucket: str | None = Field(default=None, min_length=1, max_length=256)
    """v2 bucket; default: db_name."""

    @model_validator(mode="after")
    def _check(self) -> InfluxDBForwarding:
        names = [m.column_name for m in self.column_mappings]
        if len(set(names)) != len(names):
            raise ValueError("a column_name is mapped twice")
        unknown = set(self.tags) - set(names)
        if unknown:
            raise ValueError(f"tags {sorted(unknown)} are not column_names of column_mappings")
        if len(self.tags) == len(names):
            raise ValueError("at least one column mapping must be a field, not a tag")
        if (self.org or self.bucket) and self.token is None:
            raise ValueError("org/bucket select the v2 API, which needs token")
        if self.token is not None and not self.org:
            raise ValueError("the v2 API (token) needs org")
        return self


@register
class InfluxDBSink(Sink):
    channel = "INFLUXDB_FORWARDING"
    detail_key = "influxdb_forwarding"
    Config = InfluxDBForwarding

    async def write(self, records: Sequence[Record]) -> WriteResult:
        return WriteResult.all_failed(len(records), "not implemented yet", False)
