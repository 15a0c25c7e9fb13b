"""`engine run --workers N` (issue 16, goal 4): HTTP ingest events/s with 1
and with 2 worker processes on this 2-core machine.

Each round starts `engine run --workers N` with an HTTP source (the workers
share its port through SO_REUSEPORT) and the selective rule of
`bench_http_ingest.py` (a file action), waits until every worker's /readyz
answers, then a separate load process posts JSON arrays of `BENCH_EVENTS`
simulated notifications (default 3,000, ~2 MB: few requests, so the load
process needs little of the 2 cores) from `BENCH_CONNECTIONS` (16)
connections for
`BENCH_SECONDS` (new connections per request, so the kernel spreads them
over the workers; each a pre-built request written to a plain asyncio
stream, no HTTP client). events/s = events answered 200 per
second; the CPU seconds the workers (and the load process) used in that
time are read from /proc. The load process shares the 2 cores with the
workers, which caps the 2-worker figure: its share is reported too.

    .venv/bin/python -m pytest benchmarks/bench_workers.py --benchmark-only -s \
        --benchmark-columns=min,median,rounds

`test_file_with_workers`: the same rule with no load process at all: a
file of `BENCH_FILE_EVENTS` notifications (default 3,000,000, ~2 GB,
written once per run to the benchmark's temporary directory, read from the
page cache) replayed by `engine run --workers N`, which divides it into N
byte ranges; events/s and CPU seconds from the first input received to the
last, from each worker's own metrics endpoint polled every 0.1 s.

`test_kafka_with_workers`: the same with a Kafka source instead (`bash
scripts/services.sh up` first): a 4-partition topic pre-filled with
`BENCH_KAFKA_EVENTS` notifications (default 1,000,000), the broad rule
(device id and time of every property report, ~70 %) to a file, each
round a new consumer group; events/s from the first input received to the last (the
group joins are left out), and the CPU seconds of the workers and of the
broker (tansu, on the same 2 cores) in that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http_ingest import _cpu_s, _free_port, _raw_stream, _wait_ready  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "3000"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
RESULTS: dict[int, dict[str, float]] = {}


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _metrics_port(workers: int, avoid: int) -> int:
    """A free port p whose next `workers` ports (the workers' own) are free
    and not `avoid`."""
    while True:
        p = _free_port()
        own = range(p + 1, p + 1 + workers)
        if avoid in own:
            continue
        try:
            for q in own:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", q))
        except OSError:
            continue
        return p


@contextlib.contextmanager
def _engine(tmp: Path, workers: int, config: str, avoid: int = 0) -> Iterator[tuple[int, list[int]]]:
    """`engine run --workers N` on `config` (its metrics on the command
    line), ready: (metrics port, the workers' pids); stopped at the end."""
    metrics = _metrics_port(workers, avoid)
    (tmp / "engine.yaml").write_text(config)
    with open(tmp / f"engine-{workers}.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(tmp / "engine.yaml"),
                                 "--workers", str(workers), "--status", "log",
                                 "--metrics-listen", f"127.0.0.1:{metrics}"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    try:
        # with --workers the supervisor's /readyz: every worker is ready
        _wait_ready(proc, f"http://127.0.0.1:{metrics}/readyz", 60)
        yield metrics, _children(proc.pid) if workers > 1 else [proc.pid]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _record(benchmark, results: dict[int, dict[str, float]], workers: int,
            found: dict[str, float]) -> str:
    """Keep a round's figures; with 2 workers after 1, the scaling factor
    (text to print)."""
    benchmark.extra_info.update(found)
    results[workers] = found
    if workers == 2 and 1 in results:
        return f"; 2 ÷ 1 workers: {found['events_per_s'] / results[1]['events_per_s']:.2f}×"
    return ""


SELECTIVE = """
rules:
  - rule_id: low
    subject: {resource: device.property, event: report}
    select: "notify_data.header.device_id AS d"
    where: "GET_SERVICE_PROPERTY('Battery', 'batteryLevel') < 10"
"""


def _round(tmp: Path, workers: int) -> dict[str, float]:
    ingest = _free_port()
    config = f"""
sources: [{{http: {{listen: "127.0.0.1:{ingest}", path: /in, auth: none, max_body_bytes: 8388608}}}}]
worker: {{state_dir: {tmp}/state}}
{SELECTIVE}
actions:
  - action_id: out
    rule_id: low
    channel: FILE_FORWARDING
    channel_detail: {{file_forwarding: {{path: {tmp}/out.jsonl}}}}
"""
    with _engine(tmp, workers, config, avoid=ingest) as (_, pids):
        cpu0 = sum(_cpu_s(p) for p in pids)
        load = subprocess.Popen([sys.executable, __file__, f"http://127.0.0.1:{ingest}/in",
                                 str(SECONDS)], stdout=subprocess.PIPE)
        out, _ = load.communicate(timeout=SECONDS + 60)
        load_cpu = float(out.split()[1])
        cpu = sum(_cpu_s(p) for p in pids) - cpu0
        rate = float(out.split()[0])
    return {"events_per_s": round(rate), "worker_cpu_s": round(cpu, 2),
            "events_per_worker_cpu_s": round(rate * SECONDS / cpu) if cpu else 0,
            "load_process_cpu_s": round(load_cpu, 2)}


FILE_EVENTS = int(os.environ.get("BENCH_FILE_EVENTS", "3000000"))
FILE_RESULTS: dict[int, dict[str, float]] = {}


@pytest.fixture(scope="module")
def replay_file(tmp_path_factory):
    from engine.sources.simulator import SimulatorSource

    path = tmp_path_factory.mktemp("replay") / "in.ndjson"
    chunk = b"\n".join(SimulatorSource(rate=10_000, devices=1000, seed=4,
                                       start=1.7e9).make(100_000)) + b"\n"
    with open(path, "wb") as f:
        for _ in range(FILE_EVENTS // 100_000):
            f.write(chunk)
    yield path
    path.unlink()


async def _scrape(session: aiohttp.ClientSession, port: int) -> tuple[float, float]:
    """A worker's received count and its process's CPU seconds."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    received = cpu = 0.0
    for line in text.splitlines():
        if line.startswith("engine_source_received_total{"):
            received += float(line.rsplit(" ", 1)[1])
        elif line.startswith("process_cpu_seconds_total "):
            cpu = float(line.rsplit(" ", 1)[1])
    return received, cpu


async def _watch_file(ports: list[int]) -> dict[str, float]:
    """Each worker's received count (its own endpoint) until every worker
    has finished and gone: the rate and the workers' CPU seconds from the
    first input seen to the last (what a worker read after its last sample
    counts in neither)."""
    first: dict[int, tuple[float, float, float]] = {}  # port -> (time, received, cpu)
    last: dict[int, tuple[float, float, float]] = {}
    gone: set[int] = set()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(gone) < len(ports):
            for port in ports:
                if port in gone:
                    continue
                try:
                    sample = (time.monotonic(), *await _scrape(s, port))
                except (TimeoutError, aiohttp.ClientError, OSError):
                    gone.add(port)  # finished its part and exited
                    continue
                if sample[1] and port not in first:
                    first[port] = sample
                if sample[1] > last.get(port, (0, 0, 0))[1]:
                    last[port] = sample
            await asyncio.sleep(0.1)
    assert len(gone) == len(ports), "the workers did not finish in 300 s"
    t0, t1 = min(v[0] for v in first.values()), max(v[0] for v in last.values())
    n = sum(v[1] for v in last.values()) - sum(v[1] for v in first.values())
    cpu = sum(last[p][2] - first[p][2] for p in last)
    return {"events_per_s": round(n / (t1 - t0)), "worker_cpu_s": round(cpu, 2),
            "events_per_worker_cpu_s": round(n / cpu), "seconds": round(t1 - t0, 2)}


@pytest.mark.parametrize("workers", [1, 2])
def test_file_with_workers(benchmark, tmp_path, replay_file, workers):
    benchmark.group = "engine run --workers N: file replay events/s"
    config = f"""
sources: [{{file: {{path: "{replay_file}"}}}}]
worker: {{state_dir: {tmp_path}/state}}
{SELECTIVE}
actions:
  - action_id: out
    rule_id: low
    channel: FILE_FORWARDING
    channel_detail: {{file_forwarding: {{path: {tmp_path}/out.jsonl}}}}
"""
    found: dict[str, float] = {}

    def one_round() -> None:
        with _engine(tmp_path, workers, config) as (metrics, _):
            ports = [metrics] if workers == 1 else [metrics + 1 + i for i in range(workers)]
            found.update(asyncio.run(_watch_file(ports)))
        # Every worker's exit summary: together they read the whole file.
        summaries = [line for line in (tmp_path / f"engine-{workers}.log").read_text().splitlines()
                     if line.startswith("engine run: ") and " in, " in line]
        assert len(summaries) == workers, summaries
        assert sum(int(line.split()[2]) for line in summaries) == FILE_EVENTS, summaries

    benchmark.pedantic(one_round, rounds=1, iterations=1)
    scaling = _record(benchmark, FILE_RESULTS, workers, found)
    print(f"\n{workers} worker(s), file replay: {found['events_per_s']:,} events/s over "
          f"{found['seconds']} s, workers used {found['worker_cpu_s']} CPU-s "
          f"({found['events_per_worker_cpu_s']:,} events per worker CPU-s){scaling}")


KAFKA_EVENTS = int(os.environ.get("BENCH_KAFKA_EVENTS", "1000000"))
KAFKA_RESULTS: dict[int, dict[str, float]] = {}


def _broker_pid() -> int:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if b"tansu" in (d / "cmdline").read_bytes().split(b"\0")[0]:
                    return int(d.name)
            except OSError:
                continue
    raise RuntimeError("no tansu broker running (bash scripts/services.sh up)")


@pytest.fixture(scope="module")
def kafka_topic():
    from bench_e2e_kafka import BOOTSTRAP, _admin, _produce

    from engine.sources.simulator import SimulatorSource

    name = f"bench-workers-{uuid.uuid4().hex[:8]}"
    items = SimulatorSource(rate=10_000, devices=1000, seed=2, start=1.7e9).make(KAFKA_EVENTS)
    asyncio.run(_admin(create=[name]))
    asyncio.run(_produce(name, items))
    yield name, BOOTSTRAP
    asyncio.run(_admin(delete=[name]))


async def _received(session: aiohttp.ClientSession, metrics: int) -> float:
    async with session.get(f"http://127.0.0.1:{metrics}/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("engine_source_received_total{"))


async def _watch_kafka(metrics: int, pids: list[int], broker: int) -> dict[str, float]:
    """Poll the received count until it reaches KAFKA_EVENTS and stays:
    the rate and CPU seconds from the first input to the last."""
    first: tuple[float, float, float, float] | None = None
    last = (0.0, 0.0, 0.0, 0.0)
    async with aiohttp.ClientSession() as s:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            n = await _received(s, metrics)
            now = (time.monotonic(), n, sum(_cpu_s(p) for p in pids), _cpu_s(broker))
            if n and first is None:
                first = now
            if n > last[1]:
                last = now
            elif n >= KAFKA_EVENTS and now[0] - last[0] > 2:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"only {last[1]} of {KAFKA_EVENTS} consumed")
    assert first is not None
    seconds = last[0] - first[0]
    return {"events_per_s": round((last[1] - first[1]) / seconds),
            "worker_cpu_s": round(last[2] - first[2], 2),
            "broker_cpu_s": round(last[3] - first[3], 2), "seconds": round(seconds, 2),
            "received": last[1]}


@pytest.mark.parametrize("workers", [1, 2])
def test_kafka_with_workers(benchmark, tmp_path, kafka_topic, workers):
    topic, bootstrap = kafka_topic
    benchmark.group = "engine run --workers N: Kafka events/s"
    config = f"""
sources: [{{kafka: {{bootstrap_servers: "{bootstrap}", topics: [{topic}],
            group_id: g-{uuid.uuid4().hex[:8]}, auto_offset_reset: earliest}}}}]
worker: {{state_dir: {tmp_path}/state}}
rules:
  - rule_id: broad
    subject: {{resource: device.property, event: report}}
    select: "notify_data.header.device_id AS device_id, event_time"
actions:
  - action_id: out
    rule_id: broad
    channel: FILE_FORWARDING
    channel_detail: {{file_forwarding: {{path: {tmp_path}/out-{workers}.jsonl}}}}
"""
    found: dict[str, float] = {}

    def one_round() -> None:
        with _engine(tmp_path, workers, config) as (metrics, pids):
            found.update(asyncio.run(_watch_kafka(metrics, pids, _broker_pid())))

    benchmark.pedantic(one_round, rounds=1, iterations=1)
    scaling = _record(benchmark, KAFKA_RESULTS, workers, found)
    print(f"\n{workers} worker(s), Kafka: {found['events_per_s']:,} events/s over "
          f"{found['seconds']} s ({found['received']:,.0f} received), workers used "
          f"{found['worker_cpu_s']} CPU-s, the broker {found['broker_cpu_s']} CPU-s{scaling}")


@pytest.mark.parametrize("workers", [1, 2])
def test_http_ingest_with_workers(benchmark, tmp_path, workers):
    benchmark.group = "engine run --workers N: HTTP ingest events/s"
    found: dict[str, float] = {}
    benchmark.pedantic(lambda: found.update(_round(tmp_path, workers)), rounds=1, iterations=1)
    scaling = _record(benchmark, RESULTS, workers, found)
    print(f"\n{workers} worker(s): {found['events_per_s']:,} events/s, workers used "
          f"{found['worker_cpu_s']} CPU-s ({found['events_per_worker_cpu_s']:,} events per "
          f"worker CPU-s), the load process {found['load_process_cpu_s']} CPU-s in "
          f"{SECONDS:g} s{scaling}")


if __name__ == "__main__":  # the load process: prints events/s and its own CPU seconds
    from engine.sources.simulator import SimulatorSource

    items = SimulatorSource(rate=1e6, devices=300, seed=3, start=1.7e9).make(EVENTS)
    rate = asyncio.run(_raw_stream(sys.argv[1], float(sys.argv[2]), CONNECTIONS,
                                   b"[" + b",".join(items) + b"]", EVENTS, keep_alive=False))
    usage = os.times()
    print(rate, usage.user + usage.system)
