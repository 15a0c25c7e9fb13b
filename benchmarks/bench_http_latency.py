"""Receipt-to-acknowledgement latency at half the maximum rate (issue 16,
goal 3), with HTTP ingest: `engine run` (one worker) with an `http` source,
the selective or the broad rule of bench_e2e_kafka.py and a Kafka action
(acks=all). A body is answered only once Kafka acknowledged its outputs,
so the time from sending a request to its answer is the time from receipt
to the destination's acknowledgement, plus the loopback.

Each rule, one engine process, fed by a separate load process (plain
asyncio streams, requests built first) with 20 different NDJSON bodies of
100 simulated notifications, in turn:

1. the maximum: `BENCH_CONNECTIONS` (16) keep-alive connections, each
   sending its next body when the last one is answered, for `BENCH_SECONDS`
   (6). Each body waits for Kafka, so too few connections measure the
   round trip rather than the engine (8 gave 150-245k events/s, 16 gave
   190-350k; the engine's CPU is the limit from about 16 on);
2. half of that rate, paced: a body falls due every 100 / rate seconds and
   goes out on a free connection of 64 (opened first); each latency counts
   from the moment the body fell due, so a body that waited for a free
   connection counts its wait too (no coordinated omission).

p50/p90/p99/max are per body. The output topic is read back: it holds
exactly the outputs of every answered body.

Why HTTP and not bench_pipeline.py's Kafka source: at half the Kafka
source's maximum the broker ingesting the paced load takes most of a core
of the two, and the worker falls behind for want of CPU, not because of how
it batches (benchmarks/README.md has both).

    bash scripts/services.sh up
    .venv/bin/python -m pytest benchmarks/bench_http_latency.py --benchmark-only -s
"""

from __future__ import annotations

import asyncio
import gc
import itertools
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
from bench_http_kafka import _engine  # noqa: E402

from engine.sources.simulator import SimulatorSource  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", "6"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
PACED_CONNECTIONS = 64
KINDS = ["selective", "broad"]
EVENTS = 100  # per body
# 20 different bodies, sent in turn, from 10 s into the simulated fleet's
# stream: by then batteries have drained, so the selective rule has outputs
# (~1.5 % of these events; the broad rule ~65 %).
_ITEMS = SimulatorSource(rate=10_000, devices=1000, seed=1, start=1.7e9).make(
    100_000)[-20 * EVENTS:]
BODIES = [b"\n".join(_ITEMS[i:i + EVENTS]) + b"\n" for i in range(0, len(_ITEMS), EVENTS)]


def _matches(kind: str) -> list[int]:
    """The outputs of each body."""
    keep, _ = PYTHON[kind]
    return [sum(bool(keep(orjson.loads(line))) for line in body.splitlines()) for body in BODIES]


async def _load(url: str, seconds: float, rate: float) -> dict:
    """BODIES in turn for `seconds`: `rate` 0, as fast as CONNECTIONS
    connections are answered (each sends its next body on its answer); else
    paced at `rate` events/s on PACED_CONNECTIONS. Events/s, the bodies
    answered (by index) and, paced, latencies in ms."""
    u = urllib.parse.urlsplit(url)
    requests = [_request(url, body, "application/x-ndjson") for body in BODIES]
    answered = [0] * len(BODIES)
    latencies: list[float] = []
    conns = [await asyncio.open_connection(u.hostname, u.port)
             for _ in range(PACED_CONNECTIONS if rate else CONNECTIONS)]

    async def send(i: int, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        reader, writer = conn
        writer.write(requests[i % len(requests)])
        await writer.drain()
        await _read_answer(reader)
        answered[i % len(requests)] += 1

    # The collector is off, and a paced run keeps only the tasks under way:
    # with every finished task kept, full collections late in a run held
    # this process for tens of milliseconds, which counted as latency.
    gc.disable()
    t0 = time.monotonic()
    if not rate:
        turn = itertools.count()

        async def client(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
            while time.monotonic() < t0 + seconds:
                await send(next(turn), conn)

        await asyncio.gather(*(client(c) for c in conns))
    else:
        free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        for c in conns:
            free.put_nowait(c)

        async def timed(i: int, due: float,
                        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
            await send(i, conn)
            latencies.append(time.monotonic() - due)
            free.put_nowait(conn)

        interval = EVENTS / rate
        running: set[asyncio.Task] = set()
        for i in range(int(seconds / interval)):
            due = t0 + i * interval
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            task = asyncio.create_task(timed(i, due, await free.get()))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)
    elapsed = time.monotonic() - t0
    for _, writer in conns:
        writer.close()
    out: dict = {"events_per_s": round(sum(answered) * EVENTS / elapsed), "answered": answered}
    if latencies:
        latencies.sort()
        out.update({f"p{p}_ms": round(latencies[len(latencies) * p // 100] * 1000, 2)
                    for p in (50, 90, 99)}, max_ms=round(latencies[-1] * 1000, 2))
    return out


def _run_load(url: str, rate: float) -> dict:
    out = subprocess.run([sys.executable, __file__, url, str(SECONDS), str(rate)],
                         capture_output=True, text=True, timeout=SECONDS + 120)
    assert out.returncode == 0, out.stderr[-2000:]
    return orjson.loads(out.stdout)


@pytest.mark.services
@pytest.mark.parametrize("kind", KINDS)
def test_latency_at_half_the_maximum_rate(benchmark, tmp_path, kind):
    benchmark.group = "http ingest -> kafka: latency at half the maximum rate"
    topic = f"bench-http-latency-{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(create=[topic]))
    runs: dict[str, dict] = {}
    try:
        proc, url = _engine(tmp_path, topic, kind)
        try:
            def run() -> None:
                runs["maximum"] = _run_load(url, 0)
                runs["paced"] = _run_load(url, runs["maximum"]["events_per_s"] / 2)

            benchmark.pedantic(run, rounds=1, iterations=1)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        # Every answered body's outputs are in the topic, nothing more.
        outputs = _matches(kind)
        expected = sum(n * m for r in runs.values()
                       for n, m in zip(r["answered"], outputs, strict=True))
        assert asyncio.run(_count(topic, expected)) == expected
    finally:
        asyncio.run(_admin(delete=[topic]))
    best, paced = runs["maximum"]["events_per_s"], runs["paced"]
    result = {"maximum_per_s": best, "asked_per_s": round(best / 2), "outputs": expected,
              **{k: v for k, v in paced.items() if k != "answered"}}
    benchmark.extra_info.update(result)
    print(f"\n{kind}: maximum {best:,} events/s; at {best // 2:,}/s (answered "
          f"{paced['events_per_s']:,}/s) receipt -> Kafka ack p50 {paced['p50_ms']} ms, p90 "
          f"{paced['p90_ms']} ms, p99 {paced['p99_ms']} ms, max {paced['max_ms']} ms "
          f"({sum(paced['answered']):,} bodies, {expected:,} outputs in all); load average "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":  # the load process: prints its figures as JSON
    print(orjson.dumps(asyncio.run(_load(sys.argv[1], float(sys.argv[2]),
                                         float(sys.argv[3])))).decode())
