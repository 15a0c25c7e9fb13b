"""POSTGRESQL_FORWARDING (an extension, not an IoTDA channel): rows of a
PostgreSQL table, written with COPY."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from engine.destinations.base import Record, Sink, WriteResult
from engine.destinations.common import IDENTIFIER, SqlForwarding
from engine.destinations.registry import register


class PostgresqlForwarding(SqlForwarding):
    """Same members as MysqlForwarding; address.port defaults to 5432."""

    schema_name: str = Field(default="public", pattern=IDENTIFIER.pattern)
    """Schema of table_name (engine option)."""


@register
class PostgresqlSink(Sink):
    channel = "POSTGRESQL_FORWARDING"
    detail_key = "postgresql_forwarding"
    Config = PostgresqlForwarding

    async def write(self, records: Sequence[Record]) -> WriteResult:
        return WriteResult.all_failed(len(records), "not implemented yet", False)
