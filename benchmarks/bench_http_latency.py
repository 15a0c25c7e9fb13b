"""Receipt-to-acknowledgement latency at half the maximum rate (issue 16,
goal 3), with HTTP ingest: `engine run` (one worker) with an `http` source,
the selective or the broad rule of bench_e2e_kafka.py and a Kafka action
(acks=all). A body is answered only once Kafka acknowledged its outputs,
so the time from sending a request to its answer is the time from receipt
to the destination's acknowledgement, plus the loopback.

Each rule, one engine process:

1. the maximum: NDJSON bodies of 100 simulated notifications from
   `BENCH_CONNECTIONS` (8) keep-alive connections, each sending its next
   body when the last one is answered (bench_http_kafka.py's load), for
   `BENCH_SECONDS` (6);
2. half of that rate, paced: a body falls due every 100 / rate seconds and
   goes out on a free connection of 64 (opened first); each latency counts
   from the moment the body fell due, so a body that waited for a free
   connection counts its wait too (no coordinated omission).

p50/p90/p99/max are per body (100 events each). The output topic is read
back: it holds exactly the matches of every answered body.

Why HTTP and not bench_pipeline.py's Kafka source: at half the Kafka
source's maximum the broker ingesting the paced load takes most of a core
of the two, and the worker falls behind for want of CPU, not because of how
it batches (benchmarks/README.md has both).

    bash scripts/services.sh up
    .venv/bin/python -m pytest benchmarks/bench_http_latency.py --benchmark-only -s
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e_kafka import PYTHON, _admin, _count  # noqa: E402
from bench_http_ingest import _read_answer, _request  # noqa: E402
from bench_http_kafka import BODY, ITEMS, _engine  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", "6"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "8"))
PACED_CONNECTIONS = 64
KINDS = ["selective", "broad"]


def _matches(kind: str) -> int:
    keep, _ = PYTHON[kind]
    return sum(bool(keep(orjson.loads(i))) for i in ITEMS)


async def _paced(url: str, seconds: float, rate: float) -> dict[str, float]:
    """Bodies of ITEMS at `rate` events/s for `seconds`: latencies (ms)."""
    u = urllib.parse.urlsplit(url)
    request = _request(url, BODY, "application/x-ndjson")
    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(PACED_CONNECTIONS):
        free.put_nowait(await asyncio.open_connection(u.hostname, u.port))
    latencies: list[float] = []

    async def one(due: float, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        reader, writer = conn
        writer.write(request)
        await writer.drain()
        await _read_answer(reader)
        latencies.append(time.monotonic() - due)
        free.put_nowait(conn)

    interval = len(ITEMS) / rate
    bodies = int(seconds / interval)
    tasks = []
    t0 = time.monotonic()
    for i in range(bodies):
        due = t0 + i * interval
        if (wait := due - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(due, await free.get())))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - t0
    while not free.empty():
        free.get_nowait()[1].close()
    latencies.sort()
    return {"asked": round(rate), "answered_per_s": round(bodies * len(ITEMS) / elapsed),
            "bodies": bodies,
            **{f"p{p}_ms": round(latencies[min(len(latencies) - 1, len(latencies) * p // 100)]
                                 * 1000, 2) for p in (50, 90, 99)},
            "max_ms": round(latencies[-1] * 1000, 2)}


def _load(args: list[str]) -> str:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                         timeout=SECONDS + 120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.services
@pytest.mark.parametrize("kind", KINDS)
def test_latency_at_half_the_maximum_rate(benchmark, tmp_path, kind):
    benchmark.group = "http ingest -> kafka: latency at half the maximum rate"
    topic = f"bench-http-latency-{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(create=[topic]))
    result: dict[str, float] = {}
    try:
        proc, url = _engine(tmp_path, topic, kind)
        try:
            def run() -> None:
                best = float(_load([str(Path(__file__).with_name("bench_http_kafka.py")),
                                    url, str(SECONDS)]).split()[0])
                paced = orjson.loads(_load([__file__, url, str(SECONDS), str(best / 2)]))
                result.update(maximum_per_s=round(best), **paced)

            benchmark.pedantic(run, rounds=1, iterations=1)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        bodies = round(result["maximum_per_s"] * SECONDS / len(ITEMS)) + result["bodies"]
        expected = bodies * _matches(kind)
        assert asyncio.run(_count(topic, expected)) == expected
    finally:
        asyncio.run(_admin(delete=[topic]))
    benchmark.extra_info.update(result)
    print(f"\n{kind}: maximum {result['maximum_per_s']:,} events/s; at {result['asked']:,}/s "
          f"(answered {result['answered_per_s']:,}/s) receipt -> Kafka ack p50 "
          f"{result['p50_ms']} ms, p90 {result['p90_ms']} ms, p99 {result['p99_ms']} ms, "
          f"max {result['max_ms']} ms ({result['bodies']:,} bodies); load average "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":  # the paced load process: prints its figures as JSON
    print(orjson.dumps(asyncio.run(_paced(sys.argv[1], float(sys.argv[2]),
                                          float(sys.argv[3])))).decode())
