"""`engine run --workers N` (issue 16, goal 4): HTTP ingest events/s with 1
and with 2 worker processes on this 2-core machine.

Each round starts `engine run --workers N` with an HTTP source (the workers
share its port through SO_REUSEPORT) and the selective rule of
`bench_http_ingest.py` (a file action), waits until every worker's /readyz
answers, then a separate load process posts JSON arrays of `BENCH_EVENTS`
simulated notifications (default 3,000, ~2 MB: few requests, so the load
process needs little of the 2 cores) from 8 connections for
`BENCH_SECONDS` (new connections per request, so the kernel spreads them
over the workers). events/s = events answered 200 per
second; the CPU seconds the workers (and the load process) used in that
time are read from /proc. The load process shares the 2 cores with the
workers, which caps the 2-worker figure: its share is reported too.

    .venv/bin/python -m pytest benchmarks/bench_workers.py --benchmark-only -s \
        --benchmark-columns=min,median,rounds
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http_ingest import _cpu_s, _free_port, _good_stream, _wait_ready  # noqa: E402 - the same load

SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "3000"))
RESULTS: dict[int, dict[str, float]] = {}


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _round(tmp: Path, workers: int) -> dict[str, float]:
    ingest, metrics = _free_port(), _free_port()
    while ingest in (metrics + 1, metrics + 2):  # the workers' own ports
        metrics = _free_port()
    (tmp / "engine.yaml").write_text(f"""
sources: [{{http: {{listen: "127.0.0.1:{ingest}", path: /in, auth: none, max_body_bytes: 8388608}}}}]
worker: {{state_dir: {tmp}/state}}
rules:
  - rule_id: low
    subject: {{resource: device.property, event: report}}
    select: "notify_data.header.device_id AS d"
    where: "GET_SERVICE_PROPERTY('Battery', 'batteryLevel') < 10"
actions:
  - action_id: out
    rule_id: low
    channel: FILE_FORWARDING
    channel_detail: {{file_forwarding: {{path: {tmp}/out.jsonl}}}}
""")
    with open(tmp / f"engine-{workers}.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(tmp / "engine.yaml"),
                                 "--workers", str(workers), "--status", "log",
                                 "--metrics-listen", f"127.0.0.1:{metrics}"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    try:
        # with --workers the supervisor's /readyz: every worker is ready
        _wait_ready(proc, f"http://127.0.0.1:{metrics}/readyz", 60)
        pids = _children(proc.pid) if workers > 1 else [proc.pid]
        cpu0 = sum(_cpu_s(p) for p in pids)
        load = subprocess.Popen([sys.executable, __file__, f"http://127.0.0.1:{ingest}/in",
                                 str(SECONDS)], stdout=subprocess.PIPE)
        out, _ = load.communicate(timeout=SECONDS + 60)
        load_cpu = float(out.split()[1])
        cpu = sum(_cpu_s(p) for p in pids) - cpu0
        rate = float(out.split()[0])
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"events_per_s": round(rate), "worker_cpu_s": round(cpu, 2),
            "events_per_worker_cpu_s": round(rate * SECONDS / cpu) if cpu else 0,
            "load_process_cpu_s": round(load_cpu, 2)}


@pytest.mark.parametrize("workers", [1, 2])
def test_http_ingest_with_workers(benchmark, tmp_path, workers):
    benchmark.group = "engine run --workers N: HTTP ingest events/s"
    found: dict[str, float] = {}
    benchmark.pedantic(lambda: found.update(_round(tmp_path, workers)), rounds=1, iterations=1)
    benchmark.extra_info.update(found)
    RESULTS[workers] = found
    scaling = ""
    if workers == 2 and 1 in RESULTS:
        scaling = f"; 2 ÷ 1 workers: {found['events_per_s'] / RESULTS[1]['events_per_s']:.2f}×"
    print(f"\n{workers} worker(s): {found['events_per_s']:,} events/s, workers used "
          f"{found['worker_cpu_s']} CPU-s ({found['events_per_worker_cpu_s']:,} events per "
          f"worker CPU-s), the load process {found['load_process_cpu_s']} CPU-s in "
          f"{SECONDS:g} s{scaling}")


if __name__ == "__main__":  # the load process: prints events/s and its own CPU seconds
    from engine.sources.simulator import SimulatorSource

    items = SimulatorSource(rate=1e6, devices=300, seed=3, start=1.7e9).make(EVENTS)
    rate = asyncio.run(_good_stream(sys.argv[1], float(sys.argv[2]), 8, force_close=True,
                                    body=b"[" + b",".join(items) + b"]", events=EVENTS))
    usage = os.times()
    print(rate, usage.user + usage.system)
