"""INFLUXDB_FORWARDING: line protocol (unit), InfluxDB 1.x v1 API and the v2 write API
(VictoriaMetrics), read back with independent HTTP queries."""

from __future__ import annotations

import asyncio
import math
import random
import shutil
import subprocess
import time
from datetime import UTC, datetime

import aiohttp
import orjson
import pytest
from pydantic import ValidationError

from engine.destinations.base import Record, SinkError
from engine.destinations.common import JsonKey, event_time_ms
from engine.destinations.influxdb import (
    InfluxDBForwarding,
    InfluxDBSink,
    escape_key,
    escape_measurement,
    escape_string_field,
    field_value,
    tag_value,
    unrepresentable,
)
from tests.destinations.support import (
    HOST,
    INFLUX_PORT,
    VM_PORT,
    closed_port,
    port_open,
    records,
    require,
    uid,
)

MAPPINGS = [
    {"column_name": "device", "json_key": "notify_data.header.device_id"},
    {"column_name": "service", "json_key": "notify_data.body.services[0].service_id"},
    {"column_name": "battery", "json_key": "notify_data.body.services[0].properties.batteryLevel"},
    {"column_name": "ratio", "json_key": "notify_data.body.services[0].properties.ratio"},
    {"column_name": "ok", "json_key": "notify_data.body.services[0].properties.ok"},
    {"column_name": "props", "json_key": "notify_data.body.services[0].properties"},
    {"column_name": "missing", "json_key": "notify_data.body.nothing"},
]


def cfg(db: str = "engine_test", port: int = INFLUX_PORT, **kw) -> InfluxDBForwarding:
    base = dict(address={"ip": HOST, "port": port}, db_name=db, username="engine",
                password="engine-pass", measurement="battery_status", column_mappings=MAPPINGS,
                tags=["device", "service"])
    base.update(kw)
    return InfluxDBForwarding(**base)


# ------------------------------------------------------------------ line protocol


def test_escaping():
    assert escape_measurement("a b,c=d") == r"a\ b\,c=d"
    assert escape_key('k e,y="x"') == r'k\ e\,y\="x"'
    assert escape_key("a\\b") == "a\\b"  # backslashes are kept literally
    assert escape_string_field('say "hi"\\now') == r'"say \"hi\"\\now"'


def test_field_values():
    assert field_value(5) == "5i"
    assert field_value(-3) == "-3i"
    assert field_value(True) == "true" and field_value(False) == "false"
    assert field_value(1.5) == "1.5" and field_value(2.0) == "2.0"
    assert field_value(float("nan")) is None and field_value(None) is None
    assert field_value(1 << 70) == repr(float(1 << 70))
    assert field_value({"a": [1, "x"]}) == r'"{\"a\":[1,\"x\"]}"'


def test_line_shape():
    sink = InfluxDBSink(cfg())
    rec = records(3, device="dev 1,x")[2]
    line = sink.line(rec, now_ms=7)
    assert line == (
        r"battery_status,device=dev\ 1\,x,service=Battery "
        r'battery=2i,ratio=0.5,ok=true,props="{\"batteryLevel\":2,\"ratio\":0.5,\"ok\":true}"'
        " 1449922332000")
    assert sink.line(Record(rec.payload, event_time="2015-12-12T12:12:12.345Z"), 7).endswith(
        " 1449922332345")
    assert sink.line(Record(rec.payload), now_ms=7).endswith(" 7")
    assert not sink.line(Record({"x": 1}), 7).retryable  # no field value at all
    assert "backslash" in sink.line(Record(records(1, device="d\\")[0].payload), 7).reason


def reference_line(sink: InfluxDBSink, config: InfluxDBForwarding, rec: Record, now_ms: int):
    """The documented mapping, one record at a time and straight from the
    definitions: what the batch formatter must reproduce."""
    maps = {m.column_name: JsonKey(m.json_key) for m in config.column_mappings}
    fields = []
    for m in config.column_mappings:
        if m.column_name not in config.tags:
            text = field_value(maps[m.column_name].resolve(rec.payload))
            if text is not None:
                fields.append(f"{escape_key(m.column_name)}={text}")
    if not fields:
        return "no field"
    parts = [escape_measurement(config.measurement)]
    for name in sorted(config.tags, key=escape_key):
        v = tag_value(maps[name].resolve(rec.payload))
        if v is not None:
            if unrepresentable(v) is not None:
                return "tag"
            parts.append(f"{escape_key(name)}={escape_key(v)}")
    ts = event_time_ms(rec.event_time)
    return f"{','.join(parts)} {','.join(fields)} {ts if ts is not None else now_ms}"


# Values by family: a batch draws each column from one family (so the
# formatter's per-column fast paths run) or from all of them (mixed columns).
FAMILIES = {
    "int": [0, -5, 7, 1 << 62, -(1 << 63), (1 << 63) - 1],
    "bigint": [1 << 63, -(1 << 64), 3],
    "float": [0.0, 1.5, -2.25e-7, 1e22, 0.1],
    "nonfinite": [math.nan, math.inf, -math.inf, 2.5],
    "str": ["plain", "dev-1", "ünï", "a_b"],
    "escaped": ["a b", "x,y", "k=v", 'q"uote', "back\\slash", "{braces}"],
    "bad": ["", "end\\", "new\nline", "cr\r", "ok"],
    "bool": [True, False],
    "json": [{"a": [1, "x"]}, [1, 2], {}],
}
TIMES = [None, "20151212T121212Z", "2015-12-12T12:12:12.345Z", "2015-12-12T12:12:12.1+08:00",
         "2015-12-12T12:12:12", "garbage", "2016-02-29T00:00:00.999Z"]


@pytest.mark.parametrize("seed", range(40))
def test_batch_lines_match_record_by_record_definition(seed):
    rnd = random.Random(seed)
    names = ["t{b}", "a b", "f,x", "f=y", "ok", "n"][: rnd.randint(3, 6)]
    tags = rnd.sample(names, rnd.randint(0, len(names) - 1))
    config = InfluxDBForwarding(
        address={"ip": HOST}, db_name="d", username="u", password="p", measurement="m {x},y",
        column_mappings=[{"column_name": n, "json_key": f"p.{i}"} for i, n in enumerate(names)],
        tags=tags)
    sink = InfluxDBSink(config)
    family = {n: rnd.choice([*FAMILIES, "any", "absent"]) for n in names}
    pool = [v for vs in FAMILIES.values() for v in vs]
    missing = rnd.choice([0.0, 0.0, 0.1, 0.5])
    times = rnd.choice([TIMES, TIMES[1:3], ["2015-12-12T12:12:12.345Z"]])
    recs = []
    for _ in range(rnd.randint(1, 60)):
        p = {}
        for i, n in enumerate(names):
            if family[n] == "absent" or rnd.random() < missing:
                continue
            p[str(i)] = rnd.choice(pool if family[n] == "any" else FAMILIES[family[n]])
        recs.append(Record({"p": p}, event_time=rnd.choice(times)))
    lines, idx, failures = sink.lines(recs, 7)
    got = dict(zip(idx, lines, strict=True)) | {
        i: "no field" if "no field" in f.reason else "tag" for i, f in failures.items()}
    assert all(not f.retryable for f in failures.values())
    assert [got[i] for i in range(len(recs))] == [reference_line(sink, config, r, 7) for r in recs]


def test_config_rules():
    with pytest.raises(ValidationError, match="not column_names"):
        cfg(tags=["nope"])
    with pytest.raises(ValidationError, match="must be a field"):
        cfg(column_mappings=MAPPINGS[:1], tags=["device"])
    with pytest.raises(ValidationError, match="needs token"):
        cfg(org="o")
    with pytest.raises(ValidationError, match="needs org"):
        cfg(token="t")
    with pytest.raises(ValidationError, match="backslash"):
        cfg(measurement="m\\")
    assert "engine-pass" not in repr(cfg())


# ------------------------------------------------------------------ InfluxDB 1.x


async def influx_query(q: str, db: str | None = None, port: int = INFLUX_PORT, auth=None) -> dict:
    params = {"q": q, "epoch": "ms"} | ({"db": db} if db else {})
    async with aiohttp.ClientSession(auth=auth) as s, \
            s.post(f"http://{HOST}:{port}/query", params=params) as r:
        return await r.json()


def series_values(doc: dict) -> list[dict]:
    out = []
    for res in doc["results"]:
        for ser in res.get("series", []):
            out += [dict(zip(ser["columns"], v, strict=True)) for v in ser["values"]]
    return out


@pytest.fixture
async def influx_db():
    """A unique database name (the sink creates it), dropped afterwards."""
    require(INFLUX_PORT, "InfluxDB 1.x")
    name = uid("engine_test")
    yield name
    await influx_query(f'DROP DATABASE "{name}"')


async def run(config: InfluxDBForwarding, recs):
    sink = InfluxDBSink(config)
    await sink.open()
    try:
        return await sink.write(recs)
    finally:
        await sink.close()


@pytest.mark.services
async def test_v1_creates_database_and_writes_exact_points(influx_db):
    recs = [Record(r.payload, key=r.key, event_time=f"2015-12-12T12:12:12.{i:03d}Z")
            for i, r in enumerate(records(3, device="dev a,1"))]
    result = await run(cfg(influx_db, measurement="battery status"), recs)
    assert result.ok
    dbs = series_values(await influx_query("SHOW DATABASES"))
    assert {"name": influx_db} in dbs
    rows = series_values(await influx_query('SELECT * FROM "battery status"', influx_db))
    assert rows == [
        {"time": 1449922332000 + i, "device": "dev a,1", "service": "Battery", "battery": i,
         "ratio": i / 4, "ok": i % 2 == 0,
         "props": orjson.dumps(recs[i].payload["notify_data"]["body"]["services"][0]["properties"]).decode()}
        for i in range(3)]
    tags = series_values(await influx_query('SHOW TAG KEYS FROM "battery status"', influx_db))
    assert sorted(t["tagKey"] for t in tags) == ["device", "service"]


@pytest.mark.services
async def test_v1_batch_of_10000(influx_db):
    recs = [Record(r.payload, event_time=f"2015-12-12T12:12:{i // 1000:02d}.{i % 1000:03d}Z")
            for i, r in enumerate(records(10_000))]
    result = await run(cfg(influx_db, max_points_per_request=4000), recs)
    assert result.ok
    (row,) = series_values(await influx_query(
        "SELECT COUNT(battery), SUM(battery) FROM battery_status", influx_db))
    assert (row["count"], row["sum"]) == (10_000, sum(range(10_000)))


@pytest.mark.services
async def test_v1_type_conflict_fails_only_that_point(influx_db):
    assert (await run(cfg(influx_db), records(1))).ok  # battery is now an integer field
    recs = [Record(r.payload, event_time=f"2016-01-01T00:00:00.{i:03d}Z")
            for i, r in enumerate(records(5))]
    recs[3].payload["notify_data"]["body"]["services"][0]["properties"]["batteryLevel"] = "high"
    result = await run(cfg(influx_db), recs)
    assert list(result.failures) == [3]
    assert not result.failures[3].retryable and "400" in result.failures[3].reason
    rows = series_values(await influx_query(
        "SELECT battery FROM battery_status WHERE time >= '2016-01-01T00:00:00Z'", influx_db))
    assert [r["battery"] for r in rows] == [0, 1, 2, 4]


@pytest.mark.services
async def test_v1_failures_keep_their_positions_across_requests(influx_db):
    # 2 points per request: the failures are in the second and third request.
    recs = [Record(r.payload, event_time=f"2016-01-01T00:00:00.{i:03d}Z")
            for i, r in enumerate(records(5))]
    recs[3] = Record({"other": 1})  # no field value: fails before sending
    recs[4].payload["notify_data"]["body"]["services"][0]["properties"]["batteryLevel"] = "high"
    result = await run(cfg(influx_db, max_points_per_request=2), recs)
    assert sorted(result.failures) == [3, 4]
    assert "no field" in result.failures[3].reason and "400" in result.failures[4].reason
    rows = series_values(await influx_query("SELECT battery FROM battery_status", influx_db))
    assert [r["battery"] for r in rows] == [0, 1, 2]


@pytest.mark.services
async def test_v1_database_dropped_under_the_sink_is_recreated_by_the_retry(influx_db):
    recs = [Record(r.payload, event_time=f"2016-01-01T00:00:00.{i:03d}Z")
            for i, r in enumerate(records(2))]
    sink = InfluxDBSink(cfg(influx_db))
    await sink.open()
    try:
        assert (await sink.write(recs[:1])).ok
        await influx_query(f'DROP DATABASE "{influx_db}"')
        result = await sink.write(recs)  # 404 database not found: not for the dead letters
        assert len(result.failures) == 2
        assert all(f.retryable and "database not found" in f.reason
                   for f in result.failures.values())
        assert (await sink.write(recs)).ok  # the retry
    finally:
        await sink.close()
    rows = series_values(await influx_query("SELECT battery FROM battery_status", influx_db))
    assert [r["battery"] for r in rows] == [0, 1]


async def test_v1_destination_down_is_retryable():
    sink = InfluxDBSink(cfg(port=closed_port(), timeout_s=2))
    await sink.open()  # does not raise: the server may come back
    result = await sink.write(records(3))
    await sink.close()
    assert len(result.failures) == 3 and all(f.retryable for f in result.failures.values())


@pytest.fixture(scope="module")
def auth_influx(tmp_path_factory):
    """A private InfluxDB 1.x with auth enabled (the shared one runs without
    auth), on free loopback ports; admin user `admin` / `admin-pass`."""
    if shutil.which("influxd") is None:
        pytest.skip("influxd is not installed (bash scripts/services.sh up installs it)")
    d = tmp_path_factory.mktemp("influx_auth")
    http_port, rpc_port = closed_port(), closed_port()
    (d / "influxdb.conf").write_text(f"""
reporting-disabled = true
bind-address = "{HOST}:{rpc_port}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "{HOST}:{http_port}"
  auth-enabled = true
  log-enabled = false
[ifql]
  enabled = false
""")
    log = open(d / "influxd.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["influxd", "-config", str(d / "influxdb.conf")],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):  # up to 10 s
            if port_open(http_port):
                break
            if proc.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"])
        if not port_open(http_port):
            pytest.fail(f"private influxd did not start: {(d / 'influxd.log').read_text()[-500:]}")
        asyncio.run(influx_query("CREATE USER admin WITH PASSWORD 'admin-pass' WITH ALL PRIVILEGES",
                                 port=http_port))
        yield http_port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def test_v1_bad_credentials(auth_influx):
    bad = InfluxDBSink(cfg(port=auth_influx, username="admin", password="Wr0ngPassw0rd"))
    with pytest.raises(SinkError) as e:
        await bad.open()
    assert "login" in str(e.value) and "Wr0ngPassw0rd" not in str(e.value)
    result = await bad.write(records(2))
    await bad.close()
    assert len(result.failures) == 2 and not any(f.retryable for f in result.failures.values())
    # The right password works against the same server.
    good = cfg(port=auth_influx, db="authdb", username="admin", password="admin-pass")
    assert (await run(good, records(2, event_time=None))).ok


# ------------------------------------------------------------------ v2 write API (VictoriaMetrics)


async def vm_export(metric_prefix: str, expect: int) -> list[dict]:
    """Series exported by VictoriaMetrics' own API (it has no Flux)."""
    url = f"http://{HOST}:{VM_PORT}"
    async with aiohttp.ClientSession() as s:
        async with asyncio.timeout(20):
            while True:
                async with s.get(f"{url}/internal/force_flush"):
                    pass
                async with s.get(f"{url}/api/v1/export",
                                 params={"match[]": f'{{__name__=~"{metric_prefix}_.*"}}'}) as r:
                    series = [orjson.loads(line) for line in (await r.text()).splitlines() if line]
                if sum(len(x["values"]) for x in series) >= expect:
                    return series
                await asyncio.sleep(0.2)


@pytest.mark.services
async def test_v2_write_api_against_victoriametrics():
    require(VM_PORT, "VictoriaMetrics")
    measurement = uid("engine_test_m")
    # Recent times: VictoriaMetrics drops samples older than its retention.
    t0 = (int(time.time()) - 60) * 1000
    stamp = datetime.fromtimestamp(t0 / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    recs = [Record(r.payload, event_time=f"{stamp}.{i:03d}Z")
            for i, r in enumerate(records(3, device="dev-v2"))]
    config = cfg("engine_test", port=VM_PORT, measurement=measurement, token="any-token",
                 org="engine", bucket="engine_test")
    result = await run(config, recs)
    assert result.ok
    series = await vm_export(measurement, expect=6)
    got = {x["metric"]["__name__"]: (x["metric"]["device"], x["metric"]["service"],
                                      x["values"], x["timestamps"]) for x in series}
    # VictoriaMetrics keeps numeric fields only (strings are dropped, bools become 0/1).
    assert got[f"{measurement}_battery"] == ("dev-v2", "Battery", [0, 1, 2], [t0, t0 + 1, t0 + 2])
    assert got[f"{measurement}_ratio"] == ("dev-v2", "Battery", [0, 0.25, 0.5], [t0, t0 + 1, t0 + 2])


async def test_v2_destination_down_is_retryable():
    config = cfg(port=closed_port(), token="t", org="o", timeout_s=2)
    result = await run(config, records(2))
    assert len(result.failures) == 2 and all(f.retryable for f in result.failures.values())
