"""Footprint of `engine run` (issue 16, goal 6): the resident memory of an
idle worker, and the time from starting the process to the first event
processed with 10,000 rules (and that process's memory).

Each is one `engine run` process, as a user starts it: an idle worker has
an HTTP source, one rule and a file action, and is measured once /readyz
answers; the 10,000-rule worker reads one notification from a file, which
only the last rule matches, and the time is taken when its output line is
in the action's file. Goals: idle < 80 MB, 10,000 rules start < 2 s.

    .venv/bin/python -m pytest benchmarks/bench_footprint.py --benchmark-only -s \
        --benchmark-columns=min,median,rounds
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EVENT = {"resource": "device.property", "event": "report", "event_time": "20261203T000000Z",
         "notify_data": {"header": {"device_id": "d1", "product_id": "p9999"},
                         "body": {"services": []}}}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _start(config: Path, tmp: Path, metrics: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine", "run", str(config), "--workers", "1",
                             "--status", "log",
                             "--metrics-listen", f"127.0.0.1:{metrics}",
                             "--state-dir", str(tmp / "state")],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _ready(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "engine run exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("not ready")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_idle_worker_rss(benchmark, tmp_path):
    config = tmp_path / "idle.json"
    config.write_text(json.dumps({
        "sources": [{"http": {"listen": f"127.0.0.1:{_port()}", "auth": "none"}}],
        "rules": [{"rule_id": "r", "subject": {"resource": "device.property", "event": "report"},
                   "where": "notify_data.header.product_id = 'p1'"}],
        "actions": [{"action_id": "a", "rule_id": "r", "channel": "FILE_FORWARDING",
                     "channel_detail": {"file_forwarding": {"path": str(tmp_path / "out")}}}]}))
    found: dict[str, float] = {}

    def measure() -> None:
        metrics = _port()
        proc = _start(config, tmp_path, metrics)
        try:
            _ready(metrics, proc)
            time.sleep(2.0)   # settled: nothing arrives
            found["rss_mb"] = round(_rss_mb(proc.pid), 1)
        finally:
            _stop(proc)

    benchmark.pedantic(measure, rounds=3, iterations=1)
    benchmark.extra_info.update(found)
    print(f"\nidle worker: {found['rss_mb']} MB RSS (goal < 80 MB)")


@pytest.mark.parametrize("rules", [1, 10_000])
def test_start_to_first_event(benchmark, tmp_path, rules):
    out = tmp_path / "out.jsonl"
    events = tmp_path / "events.ndjson"
    events.write_text(json.dumps(EVENT) + "\n")
    config = tmp_path / "rules.json"
    first = 10_000 - rules
    config.write_text(json.dumps({
        "sources": [{"file": {"path": str(events)}}],
        "rules": [{"rule_id": f"r{i}", "subject": {"resource": "device.property",
                                                   "event": "report"},
                   "where": f"notify_data.header.product_id = 'p{i}'"}
                  for i in range(first, 10_000)],
        "actions": [{"action_id": "a", "rule_id": "r9999", "channel": "FILE_FORWARDING",
                     "channel_detail": {"file_forwarding": {"path": str(out)}}}]}))
    found: dict[str, float] = {}

    def measure() -> None:
        out.unlink(missing_ok=True)
        t0 = time.monotonic()
        proc = _start(config, tmp_path, _port())
        try:
            while not (out.exists() and out.read_bytes().endswith(b"\n")):
                assert proc.poll() in (None, 0), "engine run failed"
                assert time.monotonic() - t0 < 60, "no output"
                time.sleep(0.005)
            found["start_s"] = round(time.monotonic() - t0, 3)
            if proc.poll() is None:
                found["rss_mb"] = round(_rss_mb(proc.pid), 1)
        finally:
            _stop(proc)

    benchmark.pedantic(measure, rounds=3, iterations=1)
    benchmark.extra_info.update(found)
    print(f"\n{rules:,} rule(s): first event processed {found['start_s']} s after the start "
          f"(goal < 2 s with 10,000), RSS {found.get('rss_mb', '?')} MB")
