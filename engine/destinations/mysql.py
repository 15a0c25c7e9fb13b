"""MYSQL_FORWARDING: insert rule outputs as rows of a MySQL/MariaDB table.

Each column mapping's json_key is resolved against the rule output (missing
-> NULL; objects/arrays -> JSON text) by the core's `Columns`, for the whole
batch in one call. A batch is one transaction of parameterised
`INSERT INTO `t` (`c1`,...) VALUES (%s,...)` executemany calls, each bounded
by the server's max_allowed_packet. On MariaDB, asyncmy sends each call as one
COM_STMT_BULK_EXECUTE of a prepared statement (values in binary, no escaping
on either side); elsewhere, or when a column mixes value types within a call,
asyncmy builds multi-row text INSERTs. When the server rejects a row's data
(value too long in strict mode, NULL in a NOT NULL column, duplicate key...)
the batch is split in halves until the bad rows are isolated: they fail
permanently, the others are stored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson

from engine.destinations.base import Failure, Record, Sink, SinkError, Unavailable, WriteResult
from engine.destinations.common import SqlForwarding, client_ssl_context, columns
from engine.destinations.registry import register

log = logging.getLogger(__name__)

DEFAULT_PORT = 3306

# Error codes (https://mariadb.com/kb/en/mariadb-error-codes/).
_FATAL = {
    1044: "access to the database denied",
    1045: "login refused (check username and password)",
    1049: "unknown database",
    1142: "INSERT denied on the table",
    1146: "table does not exist",
    1054: "unknown column",
    1227: "access denied",
}
# Transient server states: retrying later can succeed.
_RETRY = {1040, 1053, 1205, 1213, 1290, 2002, 2003, 2006, 2013, 2055}

# Prepared statements kept per connection (asyncmy's statement cache): the
# INSERT, plus its variants with literal NULLs for columns that are NULL in
# every row of a call (MariaDB's bulk protocol needs a value type per column).
_STMT_CACHE = 32
# Upper bound of one statement (or bulk command), below max_allowed_packet.
_MAX_STATEMENT = 4 << 20
# Bytes a value can take on the wire beyond its JSON text (bulk indicator and
# length prefix, or a binary number), used to bound a statement's size.
_VALUE_OVERHEAD = 8


class MysqlForwarding(SqlForwarding):
    """IoTDA MysqlForwarding (Table 1-194); address.port defaults to 3306."""


def _classify(e: BaseException) -> tuple[str, str]:
    """-> (kind, reason); kind is "row" (this row's data), "retry" or "fatal"."""
    # asyncmy is imported when it is used: a worker without MySQL never loads it.
    from asyncmy import errors as my_errors

    if isinstance(e, my_errors.MySQLError) and len(e.args) >= 2:
        code, msg = e.args[0], str(e.args[1])
        if code in _FATAL:
            return "fatal", f"MySQL {code}: {_FATAL[code]}: {msg}"
        if "SSL" in msg or "CERTIFICATE" in msg:
            return "fatal", f"MySQL TLS failure (enable_ssl is true): {msg}"
        sqlstate = getattr(e, "sqlstate", None) or ""
        if isinstance(e, my_errors.DataError | my_errors.IntegrityError) or sqlstate[:2] in ("22", "23"):
            return "row", f"MySQL {code}: {msg}"
        if code in _RETRY or isinstance(e, my_errors.OperationalError | my_errors.InterfaceError):
            return "retry", f"MySQL {code}: {msg}"
        return "fatal", f"MySQL {code}: {msg}"
    if isinstance(e, my_errors.MySQLError | OSError | TimeoutError | ConnectionError):
        return "retry", f"MySQL connection problem: {type(e).__name__}: {e}"
    raise e


def quote_ident(name: str) -> str:
    # Names were checked against IDENTIFIER (no backquotes) in the Config.
    return f"`{name}`"


@register
class MysqlSink(Sink):
    channel = "MYSQL_FORWARDING"
    detail_key = "mysql_forwarding"
    Config = MysqlForwarding
    config: MysqlForwarding

    def __init__(self, config: MysqlForwarding) -> None:
        super().__init__(config)
        self._cols = columns(config.column_mappings)
        cols = ", ".join(quote_ident(m.column_name) for m in config.column_mappings)
        self._n = len(config.column_mappings)
        self._prefix = f"INSERT INTO {quote_ident(config.table_name)} ({cols}) VALUES "
        self._sql = self._prefix + "(" + ", ".join(["%s"] * self._n) + ")"
        self._variants: dict[tuple[bool, ...], str] = {}
        self._max_packet = 1 << 20  # max_allowed_packet, read at connect
        self._budget = self._max_packet - len(self._prefix) - 1024
        self._pool: Any = None

    async def open(self) -> None:
        """Connect and check the table and columns. A server that is down is
        not an error here (writes report retryable failures and reconnect)."""
        try:
            await self._connect()
        except Unavailable as e:
            log.warning("MySQL sink for table %r: %s; will retry on write", self.config.table_name, e)

    async def _connect(self) -> None:
        if self._pool is not None:
            return
        c = self.config
        try:
            import asyncmy

            pool = await asyncmy.create_pool(
                minsize=1, maxsize=c.pool_size,
                host=c.address.host, port=c.address.port_or(DEFAULT_PORT),
                user=c.username, password=c.password.get_secret_value(), database=c.db_name,
                ssl=client_ssl_context(c.ca_file, c.verify_tls) if c.enable_ssl else None,
                connect_timeout=c.timeout_s, autocommit=False, charset="utf8mb4",
                stmt_cache_size=_STMT_CACHE,
            )
        except Exception as e:
            kind, reason = _classify(e)
            if kind == "retry":
                raise Unavailable(reason) from None
            raise SinkError(reason) from None
        try:
            await self._check_table(pool)
        except BaseException:
            pool.close()
            await pool.wait_closed()
            raise
        self._pool = pool

    async def _check_table(self, pool: Any) -> None:
        c = self.config
        async with pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s", (c.db_name, c.table_name))
            rows = await cur.fetchall()
            await cur.execute("SELECT @@max_allowed_packet")
            (max_packet,), = await cur.fetchall()
            await conn.commit()
        self._max_packet = int(max_packet)
        self._budget = max(min(self._max_packet, _MAX_STATEMENT) - len(self._prefix) - 1024, 4096)
        if not rows:
            raise SinkError(f"MySQL table {c.db_name}.{c.table_name} does not exist "
                            "(or the user cannot see it)")
        have = {r[0].lower() for r in rows}
        missing = [m.column_name for m in c.column_mappings if m.column_name.lower() not in have]
        if missing:
            raise SinkError(f"MySQL table {c.db_name}.{c.table_name} has no column "
                            + ", ".join(repr(x) for x in missing))

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            await pool.wait_closed()

    def rows(self, records: Sequence[Record]) -> list[tuple[Any, ...]]:
        return self._cols.rows([r.payload for r in records], True)

    async def write(self, records: Sequence[Record]) -> WriteResult:
        if not records:
            return WriteResult()
        if (failed := await self._connect_or_fail(len(records))) is not None:
            return failed
        failures: dict[int, Failure] = {}
        chunks = self._sized(self.rows(records), list(range(len(records))), failures)
        if not chunks:
            return WriteResult(failures)
        try:
            async with self._pool.acquire() as conn:
                await self._insert(conn, chunks, failures)
        except Exception as e:  # acquiring a connection failed
            kind, reason = _classify(e)
            return WriteResult.all_failed(len(records), reason, kind == "retry")
        return WriteResult(failures)

    # ------------------------------------------------------------ statements

    def _estimate(self, rows: list[tuple[Any, ...]]) -> int:
        """An upper bound of the bytes `rows` take in one statement, text or
        bulk: their JSON text plus a fixed overhead per value (C speed)."""
        try:
            return len(orjson.dumps(rows)) + _VALUE_OVERHEAD * self._n * len(rows)
        except TypeError:  # an int beyond 64 bits, or a string orjson cannot encode
            return sum(len(v) * 4 + 16 if isinstance(v, str) else len(str(v)) + 16
                       for row in rows for v in row)

    def _sized(self, rows: list[tuple[Any, ...]], idx: list[int],
               failures: dict[int, Failure]) -> list[tuple[list[tuple[Any, ...]], list[int]]]:
        """Split rows into chunks that fit in one statement each. A single
        row that cannot fit fails permanently (the server would drop the
        connection on it, again on every retry)."""
        size = self._estimate(rows)
        if size <= self._budget:
            return [(rows, idx)]
        if len(rows) == 1:
            failures[idx[0]] = Failure(
                f"MySQL row of about {size} bytes does not fit in one statement (the server's "
                f"max_allowed_packet is {self._max_packet} bytes)", False)
            return []
        step = -(-len(rows) // -(-size // self._budget))  # ceil(n / ceil(size / budget))
        out = []
        for i in range(0, len(rows), step):
            out += self._sized(rows[i:i + step], idx[i:i + step], failures)
        return out

    def _statement(self, conn: Any, rows: list[tuple[Any, ...]]) -> tuple[str, list[tuple[Any, ...]]]:
        """The INSERT and its parameters for one executemany. MariaDB's bulk
        protocol needs a value type for every parameter, so on a connection
        that uses it, columns that are NULL in every row become literal NULLs
        in the statement (the text protocol path needs all %s placeholders)."""
        if None not in rows[0] or not getattr(conn, "_bulk_supported", False):
            return self._sql, rows
        cols = list(zip(*rows, strict=True))
        nulls = tuple(c.count(None) == len(c) for c in cols)
        if not any(nulls) or all(nulls):
            return self._sql, rows
        sql = self._variants.get(nulls)
        if sql is None:
            if len(self._variants) >= _STMT_CACHE:
                self._variants.clear()
            marks = ", ".join("NULL" if n else "%s" for n in nulls)
            sql = self._variants[nulls] = f"{self._prefix}({marks})"
        return sql, list(zip(*(c for c, n in zip(cols, nulls, strict=True) if not n), strict=True))

    async def _insert(self, conn: Any, chunks: list[tuple[list[tuple[Any, ...]], list[int]]],
                      failures: dict[int, Failure]) -> None:
        """Insert the chunks in one transaction (the connection does not
        autocommit: the first statement opens it, commit closes it)."""
        try:
            async with conn.cursor() as cur:
                cur.max_stmt_length = self._budget  # asyncmy's text multi-row INSERT
                for rows, _ in chunks:
                    await cur.executemany(*self._statement(conn, rows))
            await conn.commit()
            return
        except Exception as e:
            kind, reason = _classify(e)
            try:
                await conn.rollback()
            except Exception:  # the connection is gone; the pool discards it
                pass
        rows = [r for c in chunks for r in c[0]]
        idx = [i for c in chunks for i in c[1]]
        if kind == "row" and len(rows) > 1:
            mid = len(rows) // 2
            await self._insert(conn, self._sized(rows[:mid], idx[:mid], failures), failures)
            await self._insert(conn, self._sized(rows[mid:], idx[mid:], failures), failures)
            return
        f = Failure(reason, kind == "retry")
        for i in idx:
            failures[i] = f
