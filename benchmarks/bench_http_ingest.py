"""HTTP ingest under a malformed-body flood (issue 11, item 10).

`test_read_body`: what the source spends on one body before the pipeline,
for a good 100-event array (~64 KB) and for bad bodies of the same size
(cut off, 100 broken NDJSON lines, trailing garbage): a bad body must cost
no more than a good one.

`test_good_stream_under_flood`: `engine run` with an HTTP source and a
selective rule; a client posts 100-event arrays (4 in flight) for
`SECONDS`, alone and then while a second process floods the same source
(4 in flight) with, in turn: malformed bodies (400), valid bodies of the
same size that match nothing (the control: what any request costs), and
valid arrays of 100 non-objects (each dead-lettered). Good events/s and
the ratio to the clean run go into extra_info and are printed.

    .venv/bin/python -m pytest benchmarks/bench_http_ingest.py --benchmark-only \\
        --benchmark-columns=min,median,rounds -s
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from engine.sources.http import BodyError, split_body
from engine.sources.simulator import SimulatorSource

SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
ITEMS = SimulatorSource(rate=1e6, devices=300, seed=3, start=1.7e9).make(100)
GOOD = b"[" + b",".join(ITEMS) + b"]"
BAD = {
    "cut off": GOOD[:-200],
    "100 broken lines": b"\n".join(i[:-1] for i in ITEMS),
    "trailing garbage": GOOD + b" x",
}
FLOODS = {
    "malformed (400)": b'{"resource": "device.property", "event": "report", "notify_data": {' * 8,
    "valid, no match (control)": b'{"resource": "device", "event": "delete", "notify_data": '
                                 b'{"x": "' + b"a" * 480 + b'"}}',
    "100 non-objects (dead-lettered)": b"[" + b",".join([b"1"] * 100) + b"]",
}


def _read(body: bytes) -> None:
    try:
        split_body(body)
    except BodyError:
        pass


@pytest.mark.parametrize("kind", ["good", *BAD])
def test_read_body(benchmark, kind):
    benchmark.group = "http ingest: reading one ~64 KB body"
    benchmark(_read, GOOD if kind == "good" else BAD[kind])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _good_stream(url: str, seconds: float, concurrency: int = 4,
                       force_close: bool = False, body: bytes = GOOD,
                       content_type: str = "application/json",
                       events: int = len(ITEMS)) -> float:
    """Events/s of GOOD arrays (or `body`, of `events` events) answered 200.
    `force_close`: a new connection per request (for SO_REUSEPORT to spread
    them over workers)."""
    sent = 0
    end = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(force_close=force_close)
    async with aiohttp.ClientSession(connector=connector) as s:
        async def client() -> None:
            nonlocal sent
            while time.monotonic() < end:
                async with s.post(url, data=body, headers={"Content-Type": content_type}) as r:
                    await r.read()
                    assert r.status == 200, r.status
                sent += events

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return sent / seconds


def _request(url: str, body: bytes, content_type: str = "application/json",
             keep_alive: bool = True) -> bytes:
    """A whole HTTP/1.1 POST of `body` to `url`, ready to write to a socket."""
    u = urllib.parse.urlsplit(url)
    return (f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            + ("" if keep_alive else "Connection: close\r\n") + "\r\n").encode() + body


async def _read_answer(reader: asyncio.StreamReader, keep_alive: bool = True) -> None:
    """Read one answer, which must be 200 (to the end of the stream
    without keep-alive: the server closes)."""
    status = await reader.readline()
    assert status.split()[1] == b"200", status
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if keep_alive:
        await reader.readexactly(length)
    else:
        await reader.read()


async def _raw_stream(url: str, seconds: float, concurrency: int, body: bytes, events: int,
                      content_type: str = "application/json", keep_alive: bool = True) -> float:
    """Events/s of `body` (`events` events) answered 200, like `_good_stream`
    but each request pre-built and written to a plain asyncio stream (no
    HTTP client): the load process spends little more than the sends.
    `keep_alive` False: a new connection per request (for SO_REUSEPORT to
    spread them over workers)."""
    u = urllib.parse.urlsplit(url)
    request = _request(url, body, content_type, keep_alive)
    sent = 0
    end = time.monotonic() + seconds

    async def client() -> None:
        nonlocal sent
        writer = None
        try:
            while time.monotonic() < end:
                if writer is None:
                    reader, writer = await asyncio.open_connection(u.hostname, u.port)
                writer.write(request)
                await writer.drain()
                await _read_answer(reader, keep_alive)
                if not keep_alive:
                    writer.close()
                    writer = None
                sent += events
        finally:
            if writer is not None:
                writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return sent / seconds


async def _flood(url: str, body: bytes, seconds: float, concurrency: int = 4) -> float:
    """Requests/s the flood got answered."""
    sent = 0
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession() as s:
        async def client() -> None:
            nonlocal sent
            while time.monotonic() < end:
                async with s.post(url, data=body) as r:
                    await r.read()
                sent += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return sent / seconds


def _engine(tmp: Path) -> tuple[subprocess.Popen, str]:
    ingest, metrics = _free_port(), _free_port()
    (tmp / "engine.yaml").write_text(f"""
sources: [{{http: {{listen: "127.0.0.1:{ingest}", path: /in, auth: none}}}}]
metrics: {{listen: "127.0.0.1:{metrics}"}}
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
    with open(tmp / "engine.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "engine", "run", "--workers", "1",
                                 str(tmp / "engine.yaml")],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    _wait_ready(proc, f"http://127.0.0.1:{metrics}/readyz")
    return proc, f"http://127.0.0.1:{ingest}/in"


def _wait_ready(proc: subprocess.Popen, url: str, timeout: float = 30) -> None:
    """Until `url` answers 200 (the server process must keep running)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, f"{url} not ready"
            time.sleep(0.1)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _serve_load(proc: subprocess.Popen, load: list[str], seconds: float) -> tuple[float, float]:
    """Run the load process `load` (it prints events/s first) against the
    server `proc`, then stop the server: (events/s, server CPU seconds)."""
    try:
        cpu0 = _cpu_s(proc.pid)
        out = subprocess.run(load, capture_output=True, text=True, timeout=seconds + 60)
        assert out.returncode == 0, out.stderr[-2000:]
        return float(out.stdout.split()[0]), _cpu_s(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_good_stream_under_flood(benchmark, tmp_path):
    benchmark.group = "http ingest: good events/s under a flood"
    proc, url = _engine(tmp_path)
    figures: dict[str, float] = {}

    def run() -> None:
        figures["clean"] = asyncio.run(_good_stream(url, SECONDS))
        for name in FLOODS:
            flooder = subprocess.Popen([sys.executable, __file__, url, name, str(SECONDS + 1)],
                                       stdout=subprocess.PIPE)
            time.sleep(0.5)  # the flood is running before the good stream starts
            figures[name] = asyncio.run(_good_stream(url, SECONDS))
            out, _ = flooder.communicate(timeout=60)
            figures[name + " req/s"] = float(out)

    try:
        benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    clean = figures["clean"]
    benchmark.extra_info.update({k: round(v) for k, v in figures.items()})
    print(f"\ngood events/s: clean {clean:,.0f}; " + "; ".join(
        f"+ flood of {k} at {figures[k + ' req/s']:,.0f} req/s: {figures[k]:,.0f} "
        f"({figures[k] / clean:.2f}x)" for k in FLOODS))


if __name__ == "__main__":  # the flooding process
    print(asyncio.run(_flood(sys.argv[1], FLOODS[sys.argv[2]], float(sys.argv[3]))))
