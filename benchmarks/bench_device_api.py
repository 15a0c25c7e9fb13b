"""HTTPS device API (plain HTTP here): property reports/s through the
engine's `device_api` source, side by side with a bare aiohttp handler that
only parses the body, at 1 and 64 concurrent clients.

The engine side: `DeviceApiSource` (token check, topic adapter, registry
header, answered once the batch is acked) with a consumer that acks every
batch at once (no rules: this measures the API, not the pipeline). Each
server runs in a process of its own; the clients (aiohttp, keep-alive, one
token per device) run in this process for `SECONDS` per case.

    .venv/bin/python -m pytest benchmarks/bench_device_api.py -s -p no:cacheprovider
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import time

import aiohttp
import orjson
import pytest

from engine.sources.device_api import password_for

SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
DEVICES = 64
REPORT = orjson.dumps({"services": [
    {"service_id": "Battery", "properties": {"level": 42}, "event_time": "20240101T000000Z"},
    {"service_id": "Temperature", "properties": {"value": 21.5}}]})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_engine(port: int) -> None:
    from engine.sources.device_api import DeviceApiSource
    from engine.sources.device_registry import Registry, RegistryConfig

    registry = Registry(RegistryConfig.model_validate({
        "products": [{"product_id": "p"}],
        "devices": [{"device_id": f"d{i}", "product_id": "p", "secret": f"s{i}"}
                    for i in range(DEVICES)]}))

    async def main() -> None:
        src = DeviceApiSource(registry=registry, listen=f"127.0.0.1:{port}")
        await src.start()
        async for batch in src.batches():
            await batch.ack()

    asyncio.run(main())


def _serve_bare(port: int) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        orjson.loads(await request.read())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v5/devices/{device_id}/sys/properties/report", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def _tokens(s: aiohttp.ClientSession, base: str, engine: bool) -> list[str]:
    if not engine:
        return ["-"] * DEVICES
    ts = time.strftime("%Y%m%d%H", time.gmtime())
    out = []
    for i in range(DEVICES):
        async with s.post(base + "/v5/device-auth", json={
                "device_id": f"d{i}", "sign_type": 0, "timestamp": ts,
                "password": password_for(f"s{i}", ts)}) as r:
            out.append((await r.json())["access_token"])
    return out


async def _load(port: int, clients: int, engine: bool) -> float:
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as s:
        tokens = await _tokens(s, base, engine)
        count = 0
        deadline = time.perf_counter() + SECONDS

        async def client(i: int) -> None:
            nonlocal count
            url = f"{base}/v5/devices/d{i}/sys/properties/report"
            headers = {"access_token": tokens[i], "Content-Type": "application/json"}
            while time.perf_counter() < deadline:
                async with s.post(url, data=REPORT, headers=headers) as r:
                    assert r.status == 200, await r.text()
                    await r.read()
                count += 1

        start = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        return count / (time.perf_counter() - start)


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("server did not start")


@pytest.mark.timeout(600)
def test_device_api_vs_bare_aiohttp():
    results = {}
    ctx = multiprocessing.get_context("spawn")
    for name, target in (("engine", _serve_engine), ("bare", _serve_bare)):
        port = _free_port()
        proc = ctx.Process(target=target, args=(port,), daemon=True)
        proc.start()
        try:
            _wait_port(port)
            for clients in (1, 64):
                results[name, clients] = asyncio.run(_load(port, clients, name == "engine"))
        finally:
            proc.terminate()
            proc.join(10)
    print(f"\nproperty reports/s over {SECONDS:g}s:")
    for clients in (1, 64):
        e, b = results["engine", clients], results["bare", clients]
        print(f"  {clients:2d} client(s): engine {e:,.0f}  bare aiohttp {b:,.0f}  "
              f"ratio {e / b:.2f}")
