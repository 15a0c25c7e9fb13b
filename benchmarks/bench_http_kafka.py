"""HTTP ingest -> Kafka (issue 16, goal 2): whole-notification forwarding
from NDJSON bodies to a Kafka topic, `engine run` against an aiohttp
application producing with quixstreams' producer.

Both run as a process of their own and are fed by the same separate load
process: NDJSON bodies of 100 simulated notifications (all kinds, ~65 KB)
from `BENCH_CONNECTIONS` (8) keep-alive connections for `BENCH_SECONDS`
(default 8), each request pre-built and written to a plain asyncio stream
(`_raw_stream`: no HTTP client, so the load process leaves the servers
more of the 2 cores). Both answer
a body only after Kafka acknowledged every output of it (acks=all), so
both are at-least-once:

* the engine: an `http` source, the `whole` rule of bench_e2e_kafka.py (no
  SELECT; property reports whose product is not one given product, ~47 %)
  and a DMS_KAFKA_FORWARDING action;
* the alternative: an aiohttp handler that splits the body's lines, parses
  each (orjson), applies the same filter in Python and produces the
  matching lines as they arrived (no re-encoding: the cheapest way for it)
  with quixstreams' `Producer` (librdkafka), keyed by device id; the
  delivery callbacks, served by a thread calling `poll()`, resolve the
  request.

Each writes to a fresh 4-partition topic, read back afterwards: it must
hold exactly the matches of the bodies that were answered 200. Server CPU
seconds are read from /proc (the broker's are not counted). The two
alternate, `BENCH_ROUNDS` (default 2) rounds each.

    bash scripts/services.sh up
    .venv/bin/python -m pytest benchmarks/bench_http_kafka.py --benchmark-only -s \\
        --benchmark-columns=min,median,rounds
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e_kafka import BOOTSTRAP, RULES, _admin, _count, _whole_filter  # noqa: E402
from bench_http_ingest import _free_port, _raw_stream, _serve_load, _wait_ready  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "8"))


def _items() -> list[bytes]:
    from engine.sources.simulator import SimulatorSource

    return SimulatorSource(rate=10_000, devices=1000, seed=1, start=1.7e9).make(100)


ITEMS = _items()
BODY = b"\n".join(ITEMS) + b"\n"
MATCHES = sum(_whole_filter(orjson.loads(i)) for i in ITEMS)  # per body

ALTERNATIVE = """
import asyncio, sys, threading
import orjson
from aiohttp import web
from quixstreams.kafka import Producer

sys.path.insert(0, sys.argv[3])
from bench_e2e_kafka import _whole_filter

TOPIC = sys.argv[2]
producer = Producer(broker_address=sys.argv[4], extra_config={"acks": "all", "linger.ms": 5})
stop = threading.Event()

def serve_callbacks():
    while not stop.is_set():
        producer.poll(0.05)

async def ingest(request):
    body = await request.read()
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    state = {"left": 1, "failed": None}  # 1: the producing below

    def settle(n=1, error=None):
        state["left"] -= n
        if error is not None:
            state["failed"] = error
        if state["left"] == 0 and not done.done():
            done.set_result(None)

    def delivered(error, _message):  # on the poll thread
        loop.call_soon_threadsafe(settle, 1, error)

    for line in body.split(b"\\n"):
        if not line.strip():
            continue
        e = orjson.loads(line)
        if _whole_filter(e):
            state["left"] += 1
            producer.produce(TOPIC, line, key=e["notify_data"]["header"]["device_id"],
                             on_delivery=delivered)
    settle()
    await done
    if state["failed"] is not None:
        return web.Response(status=503, text=str(state["failed"]))
    return web.Response(text="ok")

async def ready(request):
    return web.Response(text="ok")

threading.Thread(target=serve_callbacks, daemon=True).start()
app = web.Application(client_max_size=8 << 20)
app.router.add_post("/in", ingest)
app.router.add_get("/readyz", ready)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def _engine(tmp: Path, topic: str, kind: str = "whole") -> tuple[subprocess.Popen, str]:
    """`engine run` (one worker): an HTTP source, rule `kind` of
    bench_e2e_kafka.py and a Kafka action to `topic`."""
    ingest, metrics = _free_port(), _free_port()
    rule = RULES[kind]
    clauses = "".join(f"\n    {c}: {orjson.dumps(rule[c]).decode()}"
                      for c in ("select", "where") if c in rule)
    (tmp / "engine.yaml").write_text(f"""
sources: [{{http: {{listen: "127.0.0.1:{ingest}", path: /in, auth: none}}}}]
metrics: {{listen: "127.0.0.1:{metrics}"}}
worker: {{state_dir: {tmp}/state-{topic}}}
rules:
  - rule_id: {kind}
    subject: {{resource: {rule["subject"]["resource"]}, event: {rule["subject"]["event"]}}}{clauses}
actions:
  - action_id: out
    rule_id: {kind}
    channel: DMS_KAFKA_FORWARDING
    channel_detail:
      dms_kafka_forwarding:
        region_name: local
        project_id: bench
        topic: {topic}
        addresses: [{{ip: 127.0.0.1, port: {BOOTSTRAP.rsplit(":", 1)[1]}}}]
""")
    with open(tmp / "engine.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "engine", "run", "--workers", "1",
                                 str(tmp / "engine.yaml")],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    _wait_ready(proc, f"http://127.0.0.1:{metrics}/readyz")
    return proc, f"http://127.0.0.1:{ingest}/in"


def _alternative(topic: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", ALTERNATIVE, str(port), topic,
                             str(Path(__file__).resolve().parent), BOOTSTRAP])
    _wait_ready(proc, f"http://127.0.0.1:{port}/readyz")
    return proc, f"http://127.0.0.1:{port}/in"


def _round(which: str, tmp: Path) -> dict[str, float]:
    topic = f"bench-http-kafka-{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(create=[topic]))
    try:
        proc, url = _engine(tmp, topic) if which == "engine" else _alternative(topic)
        rate, cpu = _serve_load(proc, [sys.executable, __file__, url, str(SECONDS)], SECONDS)
        bodies = round(rate * SECONDS / len(ITEMS))
        outputs = asyncio.run(_count(topic, bodies * MATCHES))
    finally:
        asyncio.run(_admin(delete=[topic]))
    return {"events_per_s": round(rate), "server_cpu_s": round(cpu, 2),
            "events_per_server_cpu_s": round(rate * SECONDS / cpu) if cpu else 0,
            "bodies": bodies, "outputs": outputs}


@pytest.mark.services
def test_http_to_kafka_engine_vs_quixstreams_producer(benchmark, tmp_path):
    benchmark.group = "http ingest -> kafka: whole notifications, engine vs aiohttp + quixstreams"
    results: dict[str, list[dict[str, float]]] = {"engine": [], "aiohttp + quixstreams": []}

    def one_round() -> None:
        for which, rs in results.items():   # alternate
            rs.append(_round(which, tmp_path))

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    for which, rs in results.items():
        for r in rs:  # every answered body's matches are in the topic, nothing more
            assert r["outputs"] == r["bodies"] * MATCHES, (which, r)
        benchmark.extra_info[which] = rs
        print(f"\n{which}: " + "; ".join(
            f"{r['events_per_s']:,} events/s, {r['events_per_server_cpu_s']:,} per server "
            f"CPU-s ({r['server_cpu_s']} CPU-s, {r['outputs']:,} outputs)" for r in rs))
    alt = "aiohttp + quixstreams"
    rate = max(r["events_per_s"] for r in results["engine"]) / \
        max(r["events_per_s"] for r in results[alt])
    per_cpu = max(r["events_per_server_cpu_s"] for r in results["engine"]) / \
        max(r["events_per_server_cpu_s"] for r in results[alt])
    benchmark.extra_info["engine_over_alternative_events_per_s"] = round(rate, 2)
    benchmark.extra_info["engine_over_alternative_per_cpu_s"] = round(per_cpu, 2)
    print(f"engine / aiohttp + quixstreams: {rate:.2f}x events/s, {per_cpu:.2f}x per server "
          f"CPU-second (best rounds; {MATCHES} of {len(ITEMS)} events per body match); "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":  # the load process: prints events/s
    print(asyncio.run(_raw_stream(sys.argv[1], float(sys.argv[2]), CONNECTIONS, BODY,
                                  len(ITEMS), "application/x-ndjson")))
