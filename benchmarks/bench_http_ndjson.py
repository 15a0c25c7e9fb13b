"""HTTP ingest of NDJSON (issue 16, goal 5): events/s and events per
server CPU-second of `engine run` with an HTTP source against a bare
aiohttp application whose handler only reads the body, splits its lines
and parses each as JSON (what any Python receiver must do at least).

Both run as a process of their own and are fed by the same separate load
process: NDJSON bodies of 100 simulated notifications (~64 KB,
`Content-Type: application/x-ndjson`) from 8 keep-alive connections for
`BENCH_SECONDS` (default 8). The engine runs the selective rule of
`bench_http_ingest.py` (battery below 10, a file action) and answers each
body after the pipeline has settled it (at-least-once); its pre-filter
skips decoding what cannot match. Server CPU seconds are read from /proc.
The two alternate, `BENCH_ROUNDS` (default 2) rounds each.

    .venv/bin/python -m pytest benchmarks/bench_http_ndjson.py --benchmark-only -s \\
        --benchmark-columns=min,median,rounds
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http_ingest import ITEMS, _engine, _free_port, _good_stream, _serve_load, _wait_ready  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
BODY = b"\n".join(ITEMS) + b"\n"

BARE = """
import sys
import orjson
from aiohttp import web

async def ingest(request):
    body = await request.read()
    n = 0
    for line in body.split(b"\\n"):
        if line.strip():
            orjson.loads(line)
            n += 1
    return web.json_response({"accepted": n})

async def ready(request):
    return web.Response(text="ok")

app = web.Application(client_max_size=8 << 20)
app.router.add_post("/in", ingest)
app.router.add_get("/readyz", ready)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


async def _load(url: str, seconds: float) -> float:
    """Events/s of NDJSON bodies answered 200, from 8 connections."""
    return await _good_stream(url, seconds, 8, body=BODY, content_type="application/x-ndjson")


def _bare() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE, str(port)])
    _wait_ready(proc, f"http://127.0.0.1:{port}/readyz")
    return proc, f"http://127.0.0.1:{port}/in"


def _round(which: str, tmp: Path) -> dict[str, float]:
    proc, url = _engine(tmp) if which == "engine" else _bare()
    rate, cpu = _serve_load(proc, [sys.executable, __file__, url, str(SECONDS)], SECONDS)
    return {"events_per_s": round(rate), "server_cpu_s": round(cpu, 2),
            "events_per_server_cpu_s": round(rate * SECONDS / cpu) if cpu else 0}


def test_ndjson_engine_vs_bare_aiohttp(benchmark, tmp_path):
    benchmark.group = "http ingest: NDJSON, engine vs a bare aiohttp handler"
    results: dict[str, list[dict[str, float]]] = {"engine": [], "bare aiohttp": []}

    def one_round() -> None:
        for which, rs in results.items():   # alternate: engine, then bare
            rs.append(_round(which, tmp_path))

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    best = {w: max(rs, key=lambda r: r["events_per_server_cpu_s"]) for w, rs in results.items()}
    for which, rs in results.items():
        benchmark.extra_info[which] = rs
        print(f"\n{which}: " + "; ".join(
            f"{r['events_per_s']:,} events/s, {r['events_per_server_cpu_s']:,} per server "
            f"CPU-s ({r['server_cpu_s']} CPU-s)" for r in rs))
    per_cpu = best["engine"]["events_per_server_cpu_s"] / \
        best["bare aiohttp"]["events_per_server_cpu_s"]
    rate = max(r["events_per_s"] for r in results["engine"]) / \
        max(r["events_per_s"] for r in results["bare aiohttp"])
    benchmark.extra_info["engine_over_bare_per_cpu_s"] = round(per_cpu, 2)
    benchmark.extra_info["engine_over_bare_events_per_s"] = round(rate, 2)
    print(f"engine / bare aiohttp: {per_cpu:.2f}x per server CPU-second, {rate:.2f}x events/s "
          f"(best rounds); load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":  # the load process: prints events/s
    print(asyncio.run(_load(sys.argv[1], float(sys.argv[2]))))
