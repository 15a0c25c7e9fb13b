"""MYSQL_FORWARDING against the local MariaDB, read back with a separate connection."""

from __future__ import annotations

import asyncmy
import orjson
import pytest
from pydantic import ValidationError

from engine.destinations.base import Record, SinkError
from engine.destinations.mysql import MysqlForwarding, MysqlSink
from tests.destinations.support import HOST, MYSQL, closed_port, records, require, uid

pytestmark = pytest.mark.services

MAPPINGS = [
    {"column_name": "service_id", "json_key": "notify_data.body.services[0].service_id"},
    {"column_name": "battery", "json_key": "notify_data.body.services[0].properties.batteryLevel"},
    {"column_name": "ratio", "json_key": "notify_data.body.services[0].properties.ratio"},
    {"column_name": "props", "json_key": "notify_data.body.services[0].properties"},
    {"column_name": "device", "json_key": "notify_data.header.device_id"},
    {"column_name": "missing", "json_key": "notify_data.body.services[3].service_id"},
]


def config(table: str, **kw) -> MysqlForwarding:
    base = dict(address={"ip": HOST, "port": MYSQL["port"]}, db_name=MYSQL["db"],
                username=MYSQL["user"], password=MYSQL["password"], enable_ssl=False,
                table_name=table, column_mappings=MAPPINGS)
    base.update(kw)
    return MysqlForwarding(**base)


@pytest.fixture
async def db():
    """An independent connection and a unique table, dropped afterwards."""
    require(MYSQL["port"], "MariaDB")
    conn = await asyncmy.connect(host=HOST, port=MYSQL["port"], user=MYSQL["user"],
                                 password=MYSQL["password"], database=MYSQL["db"], autocommit=True)
    table = uid("t_engine")
    async with conn.cursor() as cur:
        await cur.execute(
            f"CREATE TABLE `{table}` (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
            " service_id VARCHAR(16), battery INT, ratio DOUBLE, props TEXT,"
            " device VARCHAR(64) NOT NULL, missing VARCHAR(16))")

    async def query(sql: str):
        async with conn.cursor() as cur:
            await cur.execute(sql)
            return await cur.fetchall()

    yield table, query
    await query(f"DROP TABLE IF EXISTS `{table}`")
    await conn.ensure_closed()


async def run(cfg: MysqlForwarding, recs):
    sink = MysqlSink(cfg)
    await sink.open()
    try:
        return await sink.write(recs)
    finally:
        await sink.close()


def test_config_identifiers_and_limits():
    with pytest.raises(ValidationError, match="plain identifier"):
        config("t`; DROP TABLE x; --")
    with pytest.raises(ValidationError, match="plain identifier"):
        config("t", column_mappings=[{"column_name": "a b", "json_key": "x"}])
    with pytest.raises(ValidationError, match="at most 32"):
        config("t", column_mappings=[{"column_name": f"c{i}", "json_key": "x"} for i in range(33)])
    with pytest.raises(ValidationError, match="json_key"):
        config("t", column_mappings=[{"column_name": "c", "json_key": "a..b"}])
    assert MysqlForwarding(address={"ip": HOST}, db_name="d", username="u", password="p",
                           table_name="t", column_mappings=MAPPINGS[:1]).enable_ssl is True


async def test_happy_path_exact_rows(db):
    table, query = db
    recs = records(3, device="dev-7")
    # A rule that selected the path without an alias emits it as a literal key.
    recs.append(Record({"notify_data.body.services[0].service_id": "Flat",
                        "notify_data.header.device_id": "dev-8"}))
    result = await run(config(table), recs)
    assert result.ok
    rows = await query(f"SELECT service_id, battery, ratio, props, device, missing FROM `{table}` ORDER BY id")
    assert [r[:3] for r in rows] == [("Battery", 0, 0.0), ("Battery", 1, 0.25), ("Battery", 2, 0.5),
                                     ("Flat", None, None)]
    assert [orjson.loads(r[3]) if r[3] else None for r in rows] == [
        {"batteryLevel": i, "ratio": i / 4, "ok": i % 2 == 0} for i in range(3)] + [None]
    assert [r[4] for r in rows] == ["dev-7"] * 3 + ["dev-8"]
    assert all(r[5] is None for r in rows)


async def test_batch_of_10000(db):
    table, query = db
    result = await run(config(table), records(10_000))
    assert result.ok
    assert await query(f"SELECT COUNT(*), SUM(battery), COUNT(DISTINCT battery) FROM `{table}`") == (
        (10_000, sum(range(10_000)), 10_000),)


async def test_value_too_long_fails_only_that_row(db):
    table, query = db
    strict = (await query("SELECT @@SESSION.sql_mode"))[0][0]
    assert "STRICT" in strict, "the test server must run in strict mode"
    recs = records(6)
    for i in (2, 4):
        recs[i].payload["notify_data"]["body"]["services"][0]["service_id"] = "X" * 40
    result = await run(config(table), recs)
    assert sorted(result.failures) == [2, 4]
    assert all(not f.retryable and "too long" in f.reason for f in result.failures.values())
    stored = await query(f"SELECT battery FROM `{table}` ORDER BY battery")
    assert [r[0] for r in stored] == [0, 1, 3, 5]


async def test_statements_bounded_and_oversized_row_fails_alone(db):
    table, query = db
    sink = MysqlSink(config(table))
    await sink.open()
    assert sink._max_packet >= 1 << 20  # read from the server at open
    sink._budget = 4000  # as if max_allowed_packet were tiny: many statements, one transaction
    recs = records(200)
    recs[5].payload["notify_data"]["body"]["services"][0]["properties"]["blob"] = "x" * 5000
    try:
        result = await sink.write(recs)
    finally:
        await sink.close()
    assert list(result.failures) == [5]
    assert not result.failures[5].retryable and "max_allowed_packet" in result.failures[5].reason
    assert await query(f"SELECT COUNT(*), SUM(battery) FROM `{table}`") == (
        (199, sum(range(200)) - 5),)


async def test_mixed_value_types_in_a_column(db):
    # Ints and floats in one column, and a column NULL in every row: the
    # statement forms differ (text or bulk), the stored values must not.
    table, query = db
    recs = records(4)
    recs[1].payload["notify_data"]["body"]["services"][0]["properties"]["ratio"] = 3
    recs[2].payload["notify_data"]["body"]["services"][0]["properties"]["batteryLevel"] = "42"
    result = await run(config(table), recs)
    assert result.ok
    rows = await query(f"SELECT battery, ratio, missing FROM `{table}` ORDER BY id")
    assert rows == ((0, 0.0, None), (1, 3.0, None), (42, 0.5, None), (3, 0.75, None))


async def test_null_in_not_null_column_is_permanent(db):
    table, _ = db
    result = await run(config(table), [Record({"other": 1})])
    assert not result.failures[0].retryable


async def test_bad_credentials(db):
    table, _ = db
    sink = MysqlSink(config(table, password="Wr0ngPassw0rd"))
    with pytest.raises(SinkError) as e:
        await sink.open()
    assert "Wr0ngPassw0rd" not in str(e.value) and "login refused" in str(e.value)
    result = await sink.write(records(2))
    assert len(result.failures) == 2 and not any(f.retryable for f in result.failures.values())
    await sink.close()


async def test_missing_table_and_column(db):
    table, _ = db
    with pytest.raises(SinkError, match="does not exist"):
        await MysqlSink(config(table + "_nope")).open()
    cols = [*MAPPINGS, {"column_name": "nope_col", "json_key": "a"}]
    with pytest.raises(SinkError, match="nope_col"):
        await MysqlSink(config(table, column_mappings=cols)).open()


async def test_tls_required_but_server_has_none(db):
    table, _ = db
    with pytest.raises(SinkError, match="TLS"):
        await MysqlSink(config(table, enable_ssl=True)).open()


async def test_destination_down_is_retryable():
    require(MYSQL["port"], "MariaDB")
    cfg = config("t", address={"ip": HOST, "port": closed_port()}, timeout_s=2)
    sink = MysqlSink(cfg)
    await sink.open()  # does not raise: the server may come back
    result = await sink.write(records(3))
    await sink.close()
    assert len(result.failures) == 3 and all(f.retryable for f in result.failures.values())
