"""POSTGRESQL_FORWARDING (an extension, not an IoTDA channel): rule outputs
as rows of a PostgreSQL table, written with COPY (asyncpg
copy_records_to_table).

Same channel_detail shape as MYSQL_FORWARDING. COPY's binary format wants
Python values of the column's type, so each value is converted by the
column's type (read at open): text columns take strings (other values as
JSON text), json/jsonb columns take any JSON value, numeric and boolean
columns take numbers/booleans (or numeric strings), timestamp columns take
the notification time formats. A value that still does not fit fails its row
only: the batch is split in halves until the bad rows are isolated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import Field

from engine.destinations.base import Failure, Record, Sink, SinkError, Unavailable, WriteResult
from engine.destinations.common import (
    IDENTIFIER,
    SqlForwarding,
    client_ssl_context,
    columns,
    event_time_ms,
)
from engine.destinations.registry import register

if TYPE_CHECKING:
    import asyncpg  # imported when a sink opens: a worker without PostgreSQL never loads it

log = logging.getLogger(__name__)

DEFAULT_PORT = 5432


class PostgresqlForwarding(SqlForwarding):
    """Same members as MysqlForwarding; address.port defaults to 5432."""

    schema_name: str = Field(default="public", pattern=IDENTIFIER.pattern)
    """Schema of table_name (engine option). Names are used exactly as
    written (quoted), so they are case-sensitive."""


# ------------------------------------------------------------------ value conversion


def _json_text(v: Any) -> str:
    return orjson.dumps(v).decode()


def _text(v: Any) -> Any:
    return v if isinstance(v, str) else _json_text(v)


def _int(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            pass
    return v  # bool is an int; anything else fails its row with a clear TypeError


def _float(v: Any) -> Any:
    if isinstance(v, int | str) and not isinstance(v, bool):
        try:
            return float(v)
        except ValueError:
            pass
    return v


def _numeric(v: Any) -> Any:
    if isinstance(v, int | float | str) and not isinstance(v, bool):
        try:
            return Decimal(str(v))
        except InvalidOperation:
            pass
    return v


def _bool(v: Any) -> Any:
    return {"true": True, "false": False}.get(v, v) if isinstance(v, str) else v


def _timestamp(v: Any) -> Any:
    if isinstance(v, str) and (ms := event_time_ms(v)) is not None:
        return datetime.fromtimestamp(ms / 1000, UTC)
    return v


def _timestamp_naive(v: Any) -> Any:
    v = _timestamp(v)
    return v.replace(tzinfo=None) if isinstance(v, datetime) else v


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "text": _text, "varchar": _text, "bpchar": _text, "citext": _text, "name": _text,
    "json": _json_text, "jsonb": _json_text,
    "int2": _int, "int4": _int, "int8": _int,
    "float4": _float, "float8": _float, "numeric": _numeric,
    "bool": _bool,
    "timestamptz": _timestamp, "timestamp": _timestamp_naive,
}


def _as_is(v: Any) -> Any:
    return _json_text(v) if isinstance(v, dict | list) else v


# ------------------------------------------------------------------ errors

_FATAL_STATES = {
    "28000": "login refused (unknown role or not allowed)",
    "28P01": "login refused (check username and password)",
    "3D000": "database does not exist",
    "42P01": "table does not exist",
    "42703": "column does not exist",
    "42501": "permission denied",
}


def _classify(e: BaseException) -> tuple[str, str]:
    """-> (kind, reason); kind is "row" (this row's data), "retry" or "fatal"."""
    import asyncpg

    if isinstance(e, asyncpg.PostgresError):
        state = e.sqlstate or ""
        if state in _FATAL_STATES:
            return "fatal", f"PostgreSQL {state}: {_FATAL_STATES[state]}: {e}"
        if state[:2] in ("22", "23"):  # data exception, integrity violation
            return "row", f"PostgreSQL {state}: {e}"
        if state[:2] in ("08", "40", "53", "57", "58"):
            return "retry", f"PostgreSQL {state}: {e}"
        return "fatal", f"PostgreSQL {state}: {e}"
    if isinstance(e, TypeError | ValueError):  # a value that cannot be encoded for its column
        return "row", f"PostgreSQL cannot take value: {e}"
    if isinstance(e, OSError | TimeoutError | asyncpg.InterfaceError):
        if "SSL" in str(e):
            return "fatal", f"PostgreSQL TLS failure (enable_ssl is true): {e}"
        return "retry", f"PostgreSQL connection problem: {type(e).__name__}: {e}"
    raise e


@register
class PostgresqlSink(Sink):
    channel = "POSTGRESQL_FORWARDING"
    detail_key = "postgresql_forwarding"
    Config = PostgresqlForwarding
    config: PostgresqlForwarding

    def __init__(self, config: PostgresqlForwarding) -> None:
        super().__init__(config)
        self._cols = columns(config.column_mappings)
        self._columns = [m.column_name for m in config.column_mappings]
        self._convert: list[Callable[[Any], Any]] = [_as_is] * len(self._columns)
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """Connect and check the table and columns. A server that is down is
        not an error here (writes report retryable failures and reconnect)."""
        try:
            await self._connect()
        except Unavailable as e:
            log.warning("PostgreSQL sink for table %r: %s; will retry on write",
                        self.config.table_name, e)

    async def _connect(self) -> None:
        if self._pool is not None:
            return
        c = self.config
        try:
            import asyncpg

            pool = await asyncpg.create_pool(
                host=c.address.host, port=c.address.port_or(DEFAULT_PORT),
                user=c.username, password=c.password.get_secret_value(), database=c.db_name,
                ssl=client_ssl_context(c.ca_file, c.verify_tls) if c.enable_ssl else False,
                min_size=1, max_size=c.pool_size, timeout=c.timeout_s,
                command_timeout=c.timeout_s,
            )
        except Exception as e:
            kind, reason = _classify(e)
            if kind == "retry":
                raise Unavailable(reason) from None
            raise SinkError(reason) from None
        try:
            await self._check_table(pool)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _check_table(self, pool: asyncpg.Pool) -> None:
        c = self.config
        rows = await pool.fetch(
            "SELECT column_name, udt_name FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = $2", c.schema_name, c.table_name)
        where = f"{c.schema_name}.{c.table_name}"
        if not rows:
            raise SinkError(f"PostgreSQL table {where} does not exist (or the user cannot see it)")
        types = {r["column_name"]: r["udt_name"] for r in rows}
        missing = [name for name in self._columns if name not in types]
        if missing:
            raise SinkError(f"PostgreSQL table {where} has no column "
                            + ", ".join(repr(x) for x in missing))
        self._convert = [_CONVERT.get(types[name], _as_is) for name in self._columns]

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def rows(self, records: Sequence[Record]) -> list[tuple[Any, ...]]:
        raw = self._cols.rows([r.payload for r in records])
        convert = self._convert
        if all(c is _as_is for c in convert):
            return raw
        return [tuple(None if v is None else c(v) for v, c in zip(row, convert, strict=True))
                for row in raw]

    async def write(self, records: Sequence[Record]) -> WriteResult:
        if not records:
            return WriteResult()
        if (failed := await self._connect_or_fail(len(records))) is not None:
            return failed
        assert self._pool is not None
        failures: dict[int, Failure] = {}
        try:
            async with self._pool.acquire() as conn:
                await self._copy(conn, self.rows(records), list(range(len(records))), failures)
        except Exception as e:  # acquiring a connection failed
            kind, reason = _classify(e)
            return WriteResult.all_failed(len(records), reason, kind == "retry")
        return WriteResult(failures)

    async def _copy(self, conn: asyncpg.Connection, rows: list[tuple[Any, ...]], idx: list[int],
                    failures: dict[int, Failure]) -> None:
        c = self.config
        try:
            # One COPY is one statement: all of its rows are stored or none.
            await conn.copy_records_to_table(
                c.table_name, records=rows, columns=self._columns, schema_name=c.schema_name,
                timeout=c.timeout_s)
            return
        except Exception as e:
            kind, reason = _classify(e)
        if kind == "row" and len(rows) > 1:
            mid = len(rows) // 2
            await self._copy(conn, rows[:mid], idx[:mid], failures)
            await self._copy(conn, rows[mid:], idx[mid:], failures)
            return
        f = Failure(reason, kind == "retry")
        for i in idx:
            failures[i] = f
