"""Destinations: items/s through each sink next to the plainest loop a user
would write with the same client library, in the same run.

    bash scripts/services.sh up
    .venv/bin/python -m pytest benchmarks/bench_destinations.py --benchmark-only \
        --benchmark-columns=min,median,mean,rounds -q

Each benchmark records in extra_info: `items_per_s` (items / median round
time), `bytes_per_s` (the same rate in bytes of the records' JSON payloads,
~293 B each: the notification-shaped payloads of the tests) and
`peak_alloc_mb` (peak Python memory allocated in this process during one more round, untimed,
measured with tracemalloc) and `cpu_us_per_item` (this process's CPU time, every thread,
over the timed and warm-up rounds, per item). Rounds are few (pedantic mode) so the whole file
stays quick.
"""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import textwrap
import tracemalloc
import uuid

import aio_pika
import aiohttp
import asyncmy
import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from engine.destinations.amqp import AmqpForwarding, AmqpSink
from engine.destinations.base import Record
from engine.destinations.http import HttpForwarding, HttpSink
from engine.destinations.influxdb import InfluxDBForwarding, InfluxDBSink
from engine.destinations.kafka import DmsKafkaForwarding, KafkaSink
from engine.destinations.mysql import MysqlForwarding, MysqlSink
from engine.destinations.postgresql import PostgresqlForwarding, PostgresqlSink
from tests import services as svc
from tests.destinations.support import closed_port, port_open, records

pytestmark = pytest.mark.services

ROUNDS = 5
N_BATCH = 10_000   # items per round through a sink or a batched bare call
N_LOOP = 1_000     # items per round for one-at-a-time bare loops (slow by nature)

MAPPINGS = [
    {"column_name": "device", "json_key": "notify_data.header.device_id"},
    {"column_name": "service_id", "json_key": "notify_data.body.services[0].service_id"},
    {"column_name": "battery", "json_key": "notify_data.body.services[0].properties.batteryLevel"},
    {"column_name": "ratio", "json_key": "notify_data.body.services[0].properties.ratio"},
]


@pytest.fixture(scope="module")
def loop():
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def measure(benchmark, loop, recs: list[Record], make_round):
    """Run `await make_round()` ROUNDS times; report items/s and bytes/s from
    the median, then the peak allocation of one more (untimed) round."""
    cpu0 = _cpu()
    benchmark.pedantic(lambda: loop.run_until_complete(make_round()), rounds=ROUNDS,
                       iterations=1, warmup_rounds=1)
    n = len(recs)
    # every thread of this process (client libraries with their own threads too)
    benchmark.extra_info["cpu_us_per_item"] = round((_cpu() - cpu0) / (n * (ROUNDS + 1)) * 1e6, 2)
    nbytes = sum(len(orjson.dumps(r.payload)) for r in recs)
    median = benchmark.stats.stats.median
    benchmark.extra_info["items"] = n
    benchmark.extra_info["items_per_s"] = round(n / median)
    benchmark.extra_info["bytes_per_s"] = round(nbytes / median)
    tracemalloc.start()
    try:
        loop.run_until_complete(make_round())
        benchmark.extra_info["peak_alloc_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    finally:
        tracemalloc.stop()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def need(port: int, what: str) -> None:
    if not port_open(port):
        pytest.skip(f"{what} not listening on 127.0.0.1:{port}; run `bash scripts/services.sh up`")


# ------------------------------------------------------------------ HTTP

RECEIVER = textwrap.dedent("""
    import sys
    from aiohttp import web
    async def ok(request):
        await request.read()
        return web.Response(status=200)
    app = web.Application()
    app.router.add_post("/push", ok)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
""")


@pytest.fixture(scope="module")
def http_url():
    """A receiver in its own process, so it does not share the client's loop."""
    port = closed_port()
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
    try:
        for _ in range(100):
            if port_open(port):
                break
            subprocess.run(["sleep", "0.05"])
        yield f"http://127.0.0.1:{port}/push"
    finally:
        proc.terminate()
        proc.wait(10)


def test_http_sink(benchmark, loop, http_url):
    sink = HttpSink(HttpForwarding(url=http_url, signature_enable=True, token="benchToken1"))
    recs = records(N_LOOP * 2)
    loop.run_until_complete(sink.open())

    async def one_round():
        assert (await sink.write(recs)).ok

    measure(benchmark, loop, recs, one_round)
    loop.run_until_complete(sink.close())


def test_http_bare_post_loop(benchmark, loop, http_url):
    recs = records(N_LOOP)
    session = loop.run_until_complete(_session())

    async def one_round():
        for r in recs:
            async with session.post(http_url, data=orjson.dumps(r.payload),
                                    headers={"Content-Type": "application/json"}) as resp:
                await resp.read()
                assert resp.status == 200

    measure(benchmark, loop, recs, one_round)
    loop.run_until_complete(session.close())


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


# ------------------------------------------------------------------ AMQP


@pytest.fixture(scope="module")
def amqp_queue(loop):
    need(5672, "RabbitMQ")
    name = f"engine_bench_{uuid.uuid4().hex[:8]}"

    async def declare(delete: bool):
        conn = await aio_pika.connect(svc.AMQP_URL)
        ch = await conn.channel()
        if delete:
            await ch.queue_delete(name)
        else:
            await ch.declare_queue(name, durable=True)
        await conn.close()

    loop.run_until_complete(declare(False))
    yield name
    loop.run_until_complete(declare(True))


def test_amqp_sink(benchmark, loop, amqp_queue):
    sink = AmqpSink(AmqpForwarding(queue_name=amqp_queue, url=svc.AMQP_URL))
    recs = records(N_BATCH // 2)
    loop.run_until_complete(sink.open())

    async def one_round():
        assert (await sink.write(recs)).ok

    measure(benchmark, loop, recs, one_round)
    loop.run_until_complete(sink.close())


def test_amqp_bare_publish_confirm_each(benchmark, loop, amqp_queue):
    recs = records(N_LOOP)

    async def connect():
        conn = await aio_pika.connect_robust(svc.AMQP_URL)
        return conn, await conn.channel(publisher_confirms=True)

    conn, ch = loop.run_until_complete(connect())

    async def one_round():
        for r in recs:
            await ch.default_exchange.publish(
                aio_pika.Message(orjson.dumps(r.payload),
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=amqp_queue)

    measure(benchmark, loop, recs, one_round)
    loop.run_until_complete(conn.close())


# ------------------------------------------------------------------ Kafka


@pytest.fixture(scope="module")
def kafka_topic(loop):
    need(svc.KAFKA_PORT, "Kafka (tansu)")
    name = f"engine_bench_{uuid.uuid4().hex[:8]}"

    async def admin(create: bool):
        a = AIOKafkaAdminClient(bootstrap_servers=svc.KAFKA_BOOTSTRAP)
        await a.start()
        if create:
            await a.create_topics([NewTopic(name, 3, 1)])
        else:
            await a.delete_topics([name])
        await a.close()

    loop.run_until_complete(admin(True))
    yield name
    loop.run_until_complete(admin(False))


def _kafka_workload(shape: str) -> tuple[list[Record], int]:
    """(records, records per write): `notification`: the ~293-byte payloads
    of the other tests, one 10,000-record write; `broad`: the broad rule's
    output (device id and time, ~60 bytes) in writes of 2,000, as the
    engine's worker makes them at its maximum rate (bench_e2e_kafka.py);
    `body`: the same in writes of 65, what one HTTP body of 100 events
    makes when bodies come one at a time (bench_http_latency.py); `one`:
    2,000 writes of one record (the cost of a write itself)."""
    if shape == "notification":
        return [r for d in range(10) for r in records(N_BATCH // 10, device=f"dev-{d}")], N_BATCH
    n, per_write = {"broad": (N_BATCH, 2000), "body": (N_BATCH, 65), "one": (2000, 1)}[shape]
    return [Record({"device_id": f"dev-{i % 1000}", "event_time": "20231114T221320Z"},
                   f"dev-{i % 1000}", "20231114T221320Z", "r", "a") for i in range(n)], per_write


KAFKA_SHAPES = ["notification", "broad", "body", "one"]


@pytest.mark.parametrize("shape", KAFKA_SHAPES)
def test_kafka_sink(benchmark, loop, kafka_topic, shape):
    sink = KafkaSink(DmsKafkaForwarding(
        region_name="local", project_id="local", topic=kafka_topic,
        addresses=[{"ip": svc.HOST, "port": svc.KAFKA_PORT}]))
    recs, per_write = _kafka_workload(shape)
    loop.run_until_complete(sink.open())

    async def one_round():
        for i in range(0, len(recs), per_write):
            assert (await sink.write(recs[i:i + per_write])).ok

    measure(benchmark, loop, recs, one_round)
    loop.run_until_complete(sink.close())


def test_kafka_bare_send_and_wait_loop(benchmark, loop, kafka_topic):
    recs = records(N_LOOP)

    async def start():
        p = AIOKafkaProducer(bootstrap_servers=svc.KAFKA_BOOTSTRAP, acks="all",
                             enable_idempotence=False)
        await p.start()
        return p

    producer = loop.run_until_complete(start())

    async def one_round():
        for r in recs:
            await producer.send_and_wait(kafka_topic, orjson.dumps(r.payload), key=r.key.encode())

    measure(benchmark, loop, recs, one_round)
    loop.run_until_complete(producer.stop())


@pytest.mark.parametrize("shape", KAFKA_SHAPES)
def test_kafka_librdkafka_produce_with_delivery_callbacks(benchmark, loop, kafka_topic, shape):
    """What the Kafka sink would do on confluent-kafka's producer (issue 16
    asked): produce() each record with the delivery callback at-least-once
    needs, then wait for all of them."""
    from confluent_kafka import Producer

    recs, per_write = _kafka_workload(shape)
    producer = Producer({"bootstrap.servers": svc.KAFKA_BOOTSTRAP, "acks": "all",
                         "enable.idempotence": False, "linger.ms": 5,
                         "partitioner": "murmur2_random"})

    async def one_round():
        failed: list = []
        left = [0]

        def delivered(err, _msg) -> None:
            if err is not None:
                failed.append(err)
            left[0] -= 1

        dumps = orjson.dumps
        for i in range(0, len(recs), per_write):   # each write waits for its acks
            left[0] = min(per_write, len(recs) - i)
            for r in recs[i:i + per_write]:
                producer.produce(kafka_topic, dumps(r.payload), r.key.encode(),
                                 on_delivery=delivered)
            while left[0]:
                producer.poll(0.001)   # runs the callbacks
                await asyncio.sleep(0)
        assert not failed

    measure(benchmark, loop, recs, one_round)
    producer.flush(10)


# ------------------------------------------------------------------ MySQL


def _row(r: Record) -> tuple:
    s = r.payload["notify_data"]["body"]["services"][0]
    return (r.key, s["service_id"], s["properties"]["batteryLevel"], s["properties"]["ratio"])


@pytest.fixture(scope="module")
def mysql_table(loop):
    need(svc.MYSQL_PORT, "MariaDB")
    table = f"bench_{uuid.uuid4().hex[:8]}"

    async def ddl(sql: str):
        conn = await asyncmy.connect(host=svc.MYSQL_HOST, port=svc.MYSQL_PORT, user=svc.MYSQL_USER,
                                     password=svc.MYSQL_PASSWORD, database=svc.MYSQL_DB,
                                     autocommit=True)
        async with conn.cursor() as cur:
            await cur.execute(sql)
        await conn.ensure_closed()

    loop.run_until_complete(ddl(
        f"CREATE TABLE `{table}` (device VARCHAR(64), service_id VARCHAR(32), battery INT, ratio DOUBLE)"))
    yield table
    loop.run_until_complete(ddl(f"DROP TABLE `{table}`"))


def test_mysql_sink(benchmark, loop, mysql_table):
    sink = MysqlSink(MysqlForwarding(
        address={"ip": svc.MYSQL_HOST, "port": svc.MYSQL_PORT}, db_name=svc.MYSQL_DB,
        username=svc.MYSQL_USER, password=svc.MYSQL_PASSWORD, enable_ssl=False,
        table_name=mysql_table, column_mappings=MAPPINGS))
    recs = records(N_BATCH)
    loop.run_until_complete(sink.open())

    async def one_round():
        assert (await sink.write(recs)).ok

    measure(benchmark, loop, recs, one_round)
    loop.run_until_complete(sink.close())


@pytest.mark.parametrize("stmt_cache_size", [0, 32], ids=["text", "prepared"])
def test_mysql_bare_executemany(benchmark, loop, mysql_table, stmt_cache_size):
    """asyncmy's defaults (text: client-side escaping into multi-row
    INSERTs), and with its prepared-statement cache turned on as the sink
    does (on MariaDB, executemany then sends one binary bulk command)."""
    recs = records(N_BATCH)

    async def connect():
        return await asyncmy.connect(host=svc.MYSQL_HOST, port=svc.MYSQL_PORT, user=svc.MYSQL_USER,
                                     password=svc.MYSQL_PASSWORD, database=svc.MYSQL_DB,
                                     stmt_cache_size=stmt_cache_size)

    conn = loop.run_until_complete(connect())

    async def one_round():
        rows = [_row(r) for r in recs]  # the user's own mapping, done by hand
        async with conn.cursor() as cur:
            await cur.executemany(
                f"INSERT INTO `{mysql_table}` (device, service_id, battery, ratio)"
                " VALUES (%s, %s, %s, %s)", rows)
        await conn.commit()

    measure(benchmark, loop, recs, one_round)
    loop.run_until_complete(conn.ensure_closed())


# ------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="module")
def pg_table(loop):
    need(svc.PG_PORT, "PostgreSQL")
    table = f"bench_{uuid.uuid4().hex[:8]}"

    async def ddl(sql: str):
        conn = await asyncpg.connect(svc.PG_URL)
        await conn.execute(sql)
        await conn.close()

    loop.run_until_complete(ddl(
        f'CREATE TABLE "{table}" (device TEXT, service_id TEXT, battery INT, ratio DOUBLE PRECISION)'))
    yield table
    loop.run_until_complete(ddl(f'DROP TABLE "{table}"'))


def test_postgresql_sink(benchmark, loop, pg_table):
    sink = PostgresqlSink(PostgresqlForwarding(
        address={"ip": svc.PG_HOST, "port": svc.PG_PORT}, db_name=svc.PG_DB,
        username=svc.PG_USER, password=svc.PG_PASSWORD, enable_ssl=False,
        table_name=pg_table, column_mappings=MAPPINGS))
    recs = records(N_BATCH)
    loop.run_until_complete(sink.open())

    async def one_round():
        assert (await sink.write(recs)).ok

    measure(benchmark, loop, recs, one_round)
    loop.run_until_complete(sink.close())


def test_postgresql_bare_executemany(benchmark, loop, pg_table):
    recs = records(N_BATCH)
    conn = loop.run_until_complete(asyncpg.connect(svc.PG_URL))

    async def one_round():
        rows = [_row(r) for r in recs]
        await conn.executemany(
            f'INSERT INTO "{pg_table}" (device, service_id, battery, ratio) VALUES ($1, $2, $3, $4)',
            rows)

    measure(benchmark, loop, recs, one_round)
    loop.run_until_complete(conn.close())


# ------------------------------------------------------------------ InfluxDB 1.x


@pytest.fixture(scope="module")
def influx_db(loop):
    need(svc.INFLUX_PORT, "InfluxDB")
    name = f"engine_bench_{uuid.uuid4().hex[:8]}"
    yield name

    async def drop():
        async with aiohttp.ClientSession() as s, \
                s.post(f"{svc.INFLUX_URL}/query", data={"q": f'DROP DATABASE "{name}"'}):
            pass

    loop.run_until_complete(drop())


def _timed(n: int) -> list[Record]:
    # Distinct times, so no point overwrites another.
    return [Record(r.payload, key=r.key, event_time=f"2020-01-01T00:{i // 60000:02d}:"
                   f"{i // 1000 % 60:02d}.{i % 1000:03d}Z") for i, r in enumerate(records(n))]


def _influx_sink(db: str) -> InfluxDBSink:
    return InfluxDBSink(InfluxDBForwarding(
        address={"ip": svc.HOST, "port": svc.INFLUX_PORT}, db_name=db, username="engine",
        password="engine-pass", measurement="bench", column_mappings=MAPPINGS,
        tags=["device", "service_id"]))


def test_influxdb_sink(benchmark, loop, influx_db):
    sink = _influx_sink(influx_db)
    recs = _timed(N_BATCH)
    loop.run_until_complete(sink.open())

    async def one_round():
        assert (await sink.write(recs)).ok

    measure(benchmark, loop, recs, one_round)
    loop.run_until_complete(sink.close())


def _bare_line(r: Record, i: int) -> str:
    s = r.payload["notify_data"]["body"]["services"][0]
    return (f"bench,device={r.key},service_id={s['service_id']} "
            f"battery={s['properties']['batteryLevel']}i,ratio={s['properties']['ratio']} "
            f"{1577836800000 + i}")


async def _create_db(db: str) -> None:
    sink = _influx_sink(db)
    await sink.open()  # creates the database
    await sink.close()


def test_influxdb_bare_post_per_point(benchmark, loop, influx_db):
    loop.run_until_complete(_create_db(influx_db))
    recs = records(N_LOOP)
    session = loop.run_until_complete(_session())
    url = f"{svc.INFLUX_URL}/write?db={influx_db}&precision=ms"

    async def one_round():
        for i, r in enumerate(recs):
            async with session.post(url, data=_bare_line(r, i)) as resp:
                assert resp.status == 204

    measure(benchmark, loop, recs, one_round)
    loop.run_until_complete(session.close())


def test_influxdb_bare_single_write(benchmark, loop, influx_db):
    loop.run_until_complete(_create_db(influx_db))
    recs = records(N_BATCH)
    session = loop.run_until_complete(_session())
    url = f"{svc.INFLUX_URL}/write?db={influx_db}&precision=ms"

    async def one_round():
        body = "\n".join(_bare_line(r, i) for i, r in enumerate(recs))
        async with session.post(url, data=body) as resp:
            assert resp.status == 204

    measure(benchmark, loop, recs, one_round)
    loop.run_until_complete(session.close())
