"""POSTGRESQL_FORWARDING against the local PostgreSQL, read back with a separate connection."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import orjson
import pytest
from pydantic import ValidationError

from engine.destinations.base import Record, SinkError
from engine.destinations.postgresql import PostgresqlForwarding, PostgresqlSink
from tests.destinations.support import HOST, PG, closed_port, records, require, uid

pytestmark = pytest.mark.services

MAPPINGS = [
    {"column_name": "service_id", "json_key": "notify_data.body.services[0].service_id"},
    {"column_name": "battery", "json_key": "notify_data.body.services[0].properties.batteryLevel"},
    {"column_name": "ratio", "json_key": "notify_data.body.services[0].properties.ratio"},
    {"column_name": "ok", "json_key": "notify_data.body.services[0].properties.ok"},
    {"column_name": "props", "json_key": "notify_data.body.services[0].properties"},
    {"column_name": "Device", "json_key": "notify_data.header.device_id"},
    {"column_name": "at", "json_key": "event_time"},
    {"column_name": "missing", "json_key": "notify_data.body.services[3].service_id"},
]


def config(table: str, **kw) -> PostgresqlForwarding:
    base = dict(address={"ip": HOST, "port": PG["port"]}, db_name=PG["db"],
                username=PG["user"], password=PG["password"], enable_ssl=False,
                table_name=table, column_mappings=MAPPINGS)
    base.update(kw)
    return PostgresqlForwarding(**base)


@pytest.fixture
async def db():
    """An independent connection and a unique table, dropped afterwards."""
    require(PG["port"], "PostgreSQL")
    conn = await asyncpg.connect(host=HOST, port=PG["port"], user=PG["user"],
                                 password=PG["password"], database=PG["db"])
    table = uid("t_engine")
    await conn.execute(
        f'CREATE TABLE "{table}" (id BIGSERIAL PRIMARY KEY, service_id VARCHAR(16), battery INT,'
        ' ratio DOUBLE PRECISION, ok BOOLEAN, props JSONB, "Device" TEXT NOT NULL,'
        ' at TIMESTAMPTZ, missing TEXT)')
    yield table, conn
    await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
    await conn.close()


async def run(cfg: PostgresqlForwarding, recs):
    sink = PostgresqlSink(cfg)
    await sink.open()
    try:
        return await sink.write(recs)
    finally:
        await sink.close()


def test_config_identifiers():
    with pytest.raises(ValidationError, match="plain identifier"):
        config('t"; DROP TABLE x; --')
    with pytest.raises(ValidationError):
        config("t", schema_name="a.b")


async def test_happy_path_exact_rows(db):
    table, conn = db
    recs = [Record({**r.payload, "event_time": "20151212T121212Z"}) for r in records(3, "dev-7")]
    # Literal keys, as a rule emits paths selected without an alias; a numeric
    # string goes into an INT column; no event_time gives NULL.
    recs.append(Record({"notify_data.header.device_id": "dev-8",
                        "notify_data.body.services[0].properties.batteryLevel": "42"}))
    result = await run(config(table), recs)
    assert result.ok, result.failures
    rows = await conn.fetch(f'SELECT * FROM "{table}" ORDER BY id')
    at = datetime(2015, 12, 12, 12, 12, 12, tzinfo=UTC)
    got = [(r["service_id"], r["battery"], r["ratio"], r["ok"], r["Device"], r["at"], r["missing"])
           for r in rows]
    assert got == [("Battery", 0, 0.0, True, "dev-7", at, None),
                   ("Battery", 1, 0.25, False, "dev-7", at, None),
                   ("Battery", 2, 0.5, True, "dev-7", at, None),
                   (None, 42, None, None, "dev-8", None, None)]
    props = [orjson.loads(r["props"]) if r["props"] else None for r in rows]
    assert props == [{"batteryLevel": i, "ratio": i / 4, "ok": i % 2 == 0} for i in range(3)] + [None]


async def test_batch_of_10000(db):
    table, conn = db
    result = await run(config(table), records(10_000))
    assert result.ok
    row = await conn.fetchrow(f'SELECT COUNT(*), SUM(battery), COUNT(DISTINCT battery) FROM "{table}"')
    assert tuple(row) == (10_000, sum(range(10_000)), 10_000)


async def test_bad_values_fail_only_their_rows(db):
    table, conn = db
    recs = records(6)
    recs[1].payload["notify_data"]["body"]["services"][0]["service_id"] = "X" * 40  # too long
    recs[4].payload["notify_data"]["body"]["services"][0]["properties"]["batteryLevel"] = "many"
    recs[5] = Record({**recs[5].payload, "event_time": "not a time"})
    result = await run(config(table), recs)
    assert sorted(result.failures) == [1, 4, 5]
    assert not result.failures[1].retryable and "too long" in result.failures[1].reason
    assert not result.failures[4].retryable and not result.failures[5].retryable
    stored = await conn.fetch(f'SELECT battery FROM "{table}" ORDER BY battery')
    assert [r[0] for r in stored] == [0, 2, 3]


async def test_bad_credentials(db):
    # The local server trusts 127.0.0.1 (any password works), so use an unknown role.
    table, _ = db
    sink = PostgresqlSink(config(table, username="no_such_role", password="Wr0ngPassw0rd"))
    with pytest.raises(SinkError) as e:
        await sink.open()
    assert "Wr0ngPassw0rd" not in str(e.value) and "login refused" in str(e.value)
    result = await sink.write(records(2))
    assert len(result.failures) == 2 and not any(f.retryable for f in result.failures.values())
    await sink.close()


async def test_missing_table_and_column(db):
    table, _ = db
    with pytest.raises(SinkError, match="does not exist"):
        await PostgresqlSink(config(table + "_nope")).open()
    with pytest.raises(SinkError, match="'device'"):  # names are case-sensitive
        await PostgresqlSink(config(table, column_mappings=[
            {"column_name": "device", "json_key": "a"}])).open()


async def test_tls_required_but_server_has_none(db):
    table, _ = db
    with pytest.raises(SinkError, match="TLS"):
        await PostgresqlSink(config(table, enable_ssl=True)).open()


async def test_destination_down_is_retryable():
    sink = PostgresqlSink(config("t", address={"ip": HOST, "port": closed_port()}, timeout_s=2))
    await sink.open()  # does not raise: the server may come back
    result = await sink.write(records(3))
    await sink.close()
    assert len(result.failures) == 3 and all(f.retryable for f in result.failures.values())
