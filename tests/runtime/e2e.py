"""End-to-end helpers: a real HTTP receiver, and `engine run` as a process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import yaml
from aiohttp import web

ENGINE = [sys.executable, "-m", "engine"]


class Receiver:
    """An HTTP endpoint that stores every JSON body POSTed to it (after
    `delay` seconds, to simulate a slow destination)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.bodies: list[dict] = []
        self.port = 0
        self.delay = delay
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/in", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/in"

    async def _handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if self.delay:
            await asyncio.sleep(self.delay)
        self.bodies.append(body)
        return web.Response(text="ok")

    async def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class EngineProcess:
    """`engine run CONFIG` in a subprocess; always terminated at the end."""

    def __init__(self, config: Path, *extra: str, env: dict[str, str] | None = None,
                 stderr_file: Path | None = None, cwd: Path | None = None,
                 default_workers: bool = False) -> None:
        """One process unless `extra` has --workers or `default_workers`
        (the command's default: one per usable core)."""
        one = () if "--workers" in extra or default_workers else ("--workers", "1")
        self.args = [*ENGINE, "run", str(config), "--status", "log", "--status-interval", "1",
                     *one, *extra]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        # stderr to a file lets a test read the log while the engine runs.
        self.stderr_file = stderr_file
        # Each engine runs in its config's (temporary) directory, so its default
        # state_dir (backlog, dead letters) is never shared with another test.
        self.cwd = cwd if cwd is not None else Path(config).parent
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> EngineProcess:
        err = open(self.stderr_file, "wb") if self.stderr_file else subprocess.PIPE  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=err,
                                         env=self.env, cwd=self.cwd)
        finally:
            if self.stderr_file:
                err.close()
        return self

    def log(self) -> str:
        """What the engine logged so far (needs `stderr_file`)."""
        assert self.stderr_file is not None
        return self.stderr_file.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> tuple[int, str]:
        """SIGTERM, wait; returns (exit code, stderr)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, self.log() if self.stderr_file else err.decode()

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


async def wait_ready(port: int, engine: EngineProcess | None = None,
                     timeout: float = 15.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if engine is not None and engine.proc.poll() is not None:
                code, err = engine.stop()
                raise AssertionError(f"engine exited with {code} before it was ready:\n{err}")
            try:
                async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("engine did not become ready")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
