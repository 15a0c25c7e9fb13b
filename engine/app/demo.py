"""`engine demo`: the whole engine on one machine, no external service.

The device simulator feeds a small sample rule set; matches go to a local
HTTP receiver the demo starts itself (a webhook that checks IoTDA push
signatures) and to a JSONL file. At the end a summary shows what arrived
where, and the demo checks that the receiver got exactly what the engine
reports as forwarded.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from engine.app.main import serve
from engine.config import validate_config_dict
from engine.destinations.http import verify_signature
from engine.runtime.status import StatusReporter
from engine.runtime.worker import Worker

TOKEN = "demoToken123"

RULES: list[dict[str, Any]] = [
    {"rule_id": "battery-low", "subject": {"resource": "device.property", "event": "report"},
     "select": "notify_data.header.device_id AS device_id, "
               "GET_SERVICE_PROPERTY('Battery', 'batteryLevel') AS level, event_time",
     "where": "GET_SERVICE_PROPERTY('Battery', 'batteryLevel') < 20"},
    {"rule_id": "overheating", "subject": {"resource": "device.property", "event": "report"},
     "select": "notify_data.header.device_id AS device_id, "
               "GET_SERVICE_PROPERTY('Temperature', 'temperature') AS temperature, event_time",
     "where": "GET_SERVICE_PROPERTY('Temperature', 'temperature') > 38"},
    {"rule_id": "status-changes", "subject": {"resource": "device.status", "event": "update"},
     "select": "notify_data.header.device_id AS device_id, notify_data.body.status AS status, "
               "notify_data.body.status_update_time AS at"},
    {"rule_id": "command-failures",
     "subject": {"resource": "device.command.status", "event": "update"},
     "select": "notify_data.header.device_id AS device_id, notify_data.body.command_id AS command,"
               " notify_data.body.status AS status",
     "where": "notify_data.body.status IN ('FAILED', 'TIMEOUT', 'EXPIRED')"},
    {"rule_id": "devices-removed", "subject": {"resource": "device", "event": "delete"},
     "select": "notify_data.header.device_id AS device_id, event_time"},
]

# rule -> channels its matches go to
ROUTES = {"battery-low": ["http"], "overheating": ["http", "file"],
          "status-changes": ["file"], "command-failures": ["file"], "devices-removed": ["file"]}


@dataclass
class Receiver:
    """The demo's webhook: counts the signed pushes it accepts."""

    received: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        h = request.headers
        if not verify_signature(TOKEN, h.get("timestamp", ""), h.get("nonce", ""),
                                h.get("signature", "")):
            self.bad_signatures += 1
            return web.Response(status=401)
        self.received.append(orjson.loads(await request.read()))
        return web.Response(status=200)


def demo_config(http_url: str, out: Path, *, rate: float, devices: int, seed: int,
                duration: float) -> dict[str, Any]:
    actions = []
    for rule, channels in ROUTES.items():
        for ch in channels:
            if ch == "http":
                actions.append({"action_id": f"{rule}-webhook", "rule_id": rule,
                                "channel": "HTTP_FORWARDING", "channel_detail": {
                                    "http_forwarding": {"url": http_url, "signature_enable": True,
                                                        "token": TOKEN}}})
            else:
                actions.append({"action_id": f"{rule}-file", "rule_id": rule,
                                "channel": "FILE_FORWARDING", "channel_detail": {
                                    "file_forwarding": {"path": str(out / "matches.jsonl"),
                                                        "include_metadata": True}}})
    return {"rules": RULES, "actions": actions,
            "sources": [{"simulator": {"rate": rate, "devices": devices, "seed": seed,
                                       "duration": duration}}],
            "dead_letter": {"file": str(out / "dead-letter.jsonl")},
            "worker": {"batch_size": 500, "shutdown_timeout": 10}}


async def run_demo(*, duration: float = 10.0, rate: float = 2000.0, devices: int = 200,
                   seed: int = 42, out: str | None = None, tty: bool | None = None) -> int:
    out_dir = Path(out) if out else Path(tempfile.mkdtemp(prefix="engine-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/alerts", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        config = validate_config_dict(demo_config(
            f"http://127.0.0.1:{port}/alerts", out_dir, rate=rate, devices=devices, seed=seed,
            duration=duration), "<demo>")
        worker = Worker.from_config(config)
        print(f"engine demo: {duration:g} s of simulated traffic ({rate:g} events/s, "
              f"{devices} devices, seed {seed}) through {len(RULES)} rules\n"
              f"  webhook  http://127.0.0.1:{port}/alerts\n  files    {out_dir}/")
        await serve(worker, StatusReporter(worker.metrics.totals, tty=tty, interval=2.0))
    finally:
        await runner.cleanup()
    return summary(worker, receiver, out_dir)


def summary(worker: Worker, receiver: Receiver, out_dir: Path) -> int:
    m, t = worker.metrics, worker.metrics.totals
    print(f"\n{t.received} notifications in, {t.malformed} malformed, {t.matched} rule matches, "
          f"{t.forwarded} records delivered, {t.dead_lettered} dead-lettered\n")
    print(f"  {'rule':<18} {'matched':>8}   actions")
    for rule in ROUTES:
        print(f"  {rule:<18} {m.matched_of(rule):>8}   " + ", ".join(
            f"{ch}" for ch in ROUTES[rule]))
    lines = (out_dir / "matches.jsonl").read_bytes().splitlines() \
        if (out_dir / "matches.jsonl").exists() else []
    expected_http = sum(m.matched_of(r) for r, chs in ROUTES.items() if "http" in chs)
    expected_file = sum(m.matched_of(r) for r, chs in ROUTES.items() if "file" in chs)
    print(f"\n  webhook received {len(receiver.received)} signed pushes (expected {expected_http})")
    print(f"  {out_dir / 'matches.jsonl'}: {len(lines)} lines (expected {expected_file})")
    for line in lines[:3]:
        print("    " + line.decode()[:160])
    ok = (len(receiver.received) == expected_http and len(lines) == expected_file
          and receiver.bad_signatures == 0 and t.inflight == 0 and not worker.timed_out)
    print("\ndemo OK" if ok else "\ndemo FAILED: deliveries do not add up")
    return 0 if ok else 2


def main(duration: float, rate: float, devices: int, seed: int, out: str | None) -> int:
    from engine.app.main import run_sync
    from engine.runtime.status import setup_logging

    setup_logging()
    return run_sync(run_demo(duration=duration, rate=rate, devices=devices, seed=seed, out=out))
