"""Destinations refuse what they cannot use before `engine run` starts, and
respect what the receiving server asks for (issue 11, items 7 and 8)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from email.utils import formatdate

import orjson
import pytest
import yaml

from engine.config import validate_config_dict
from engine.runtime.worker import Worker
from tests.runtime.support import ListSource

PYTHON = sys.executable


def _check(tmp_path, url: str) -> subprocess.CompletedProcess:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "rules": [{"rule_id": "r", "subject": {"resource": "device", "event": "create"}}],
        "actions": [{"action_id": "a", "rule_id": "r", "channel": "AMQP_FORWARDING",
                     "channel_detail": {"amqp_forwarding": {"queue_name": "q-12345678",
                                                            "url": url}}}]}))
    return subprocess.run([PYTHON, "-m", "engine", "check", str(path)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("url, reason", [
    ("amqpx://guest:s3cret@127.0.0.1:5672/", "must be an amqp:// or amqps:// URL"),
    ("http://guest:s3cret@127.0.0.1:5672/", "must be an amqp:// or amqps:// URL"),
    ("amqp://guest:s3cret@127.0.0.1:notaport/", "port of the URL must be a number"),
    ("amqp://guest:s3cret@127.0.0.1:70000/", "port of the URL must be a number"),
    ("amqp:///vhost", "needs a host"),
])
def test_amqp_destination_url_is_checked(tmp_path, url, reason):
    res = _check(tmp_path, url)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "actions[0].channel_detail.amqp_forwarding.url" in out and reason in out
    assert "s3cret" not in out and "Traceback" not in out


def test_good_amqp_destination_url_passes(tmp_path):
    res = _check(tmp_path, "amqps://guest:s3cret@broker.example:5671/vh")
    assert res.returncode == 0, res.stdout + res.stderr


class ThrottlingReceiver:
    """A real HTTP receiver answering `status` + Retry-After for the first
    `seconds`, then 200; it counts every attempt and keeps what it accepted."""

    def __init__(self, status: int, retry_after: str, seconds: float) -> None:
        self.status, self.retry_after, self.seconds = status, retry_after, seconds
        self.attempts = 0
        self.refused_at: list[float] = []
        self.accepted: list[int] = []

    async def __aenter__(self) -> ThrottlingReceiver:
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            self.attempts += 1
            body = await request.json()
            if time.monotonic() - self.t0 < self.seconds:
                self.refused_at.append(time.monotonic())
                after = (formatdate(time.time() + 2, usegmt=True) if self.retry_after == "HTTP-DATE"
                         else self.retry_after)  # the date form: 1-2 s from now
                return web.Response(status=self.status, headers={"Retry-After": after})
            self.accepted.append(body["seq"])
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/in", handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/in"
        self.t0 = time.monotonic()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


class _Held(ListSource):
    """Stays open after its batches until stop(), like a stream."""

    async def batches(self):
        async for b in super().batches():
            yield b
        while not self._stopped:
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("status, header", [(429, "1"), (503, "HTTP-DATE")])
async def test_http_destination_honours_retry_after(tmp_path, status, header):
    n = 300
    items = [orjson.dumps({"seq": i, "resource": "device", "event": "create"}) for i in range(n)]
    async with ThrottlingReceiver(status, header, seconds=3.0) as rx:
        config = validate_config_dict({
            "rules": [{"rule_id": "r", "subject": {"resource": "device", "event": "create"},
                       "select": "seq"}],
            "actions": [{"action_id": "push", "rule_id": "r", "channel": "HTTP_FORWARDING",
                         "channel_detail": {"http_forwarding": {"url": rx.url}}}],
            "worker": {"state_dir": str(tmp_path / "state")}})
        source = _Held([items[i:i + 100] for i in range(0, n, 100)])
        worker = Worker.from_config(config, sources=[source], serve_metrics=False)
        run = asyncio.create_task(worker.run())
        try:
            deadline = time.monotonic() + 60
            while len(set(rx.accepted)) < n:
                assert time.monotonic() < deadline, f"{len(rx.accepted)} of {n} delivered"
                await asyncio.sleep(0.05)
        finally:
            worker.stop()
            await asyncio.wait_for(run, 30)
    refused = len(rx.refused_at)
    print(f"\nFIGURES Retry-After ({status}, {header}): {rx.attempts} attempts for {n} records, "
          f"{refused} refused in the 3 s window")
    assert sorted(set(rx.accepted)) == list(range(n))
    # Without Retry-After handling: ~1,300 attempts. With it: the first wave
    # (at most max_concurrency requests already on their way) plus about one
    # probe per Retry-After second while refused.
    assert refused <= 64 + 10, refused
    assert rx.attempts <= n + 64 + 10
