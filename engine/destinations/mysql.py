"""MYSQL_FORWARDING: insert rule outputs as rows of a MySQL/MariaDB table."""

from __future__ import annotations

from collections.abc import Sequence

from engine.destinations.base import Record, Sink, WriteResult
from engine.destinations.common import SqlForwarding
from engine.destinations.registry import register


class MysqlForwarding(SqlForwarding):
    """IoTDA MysqlForwarding (Table 1-194); address.port defaults to 3306."""


@register
class MysqlSink(Sink):
    channel = "MYSQL_FORWARDING"
    detail_key = "mysql_forwarding"
    Config = MysqlForwarding

    async def write(self, records: Sequence[Record]) -> WriteResult:
        return WriteResult.all_failed(len(records), "not implemented yet", False)
