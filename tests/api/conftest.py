"""Fixtures for the management API tests: two projects with tokens and
AK/SK pairs, a store per test (SQLite file in tmp_path), and an API server
on a free 127.0.0.1 port driven through aiohttp's test client."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.api.app import create_app
from engine.api.storage import SqliteStore, Store
from engine.config import ApiConfig
from engine.config.limits import ApiLimits

REPO = Path(__file__).resolve().parents[2]

TOKEN_A, TOKEN_B = "token-project-a-0123456789", "token-project-b-9876543210"
AK_A, SK_A = "AKPROJECTA0001", "sk-project-a-secret-0001"
AK_B, SK_B = "AKPROJECTB0002", "sk-project-b-secret-0002"

API = ApiConfig.model_validate({
    "listen": "127.0.0.1:0",
    "projects": {
        "proj-a": {"tokens": [TOKEN_A], "access_keys": [{"ak": AK_A, "sk": SK_A}]},
        "proj-b": {"tokens": [TOKEN_B], "access_keys": [{"ak": AK_B, "sk": SK_B}]},
    },
})

A = "/v5/iot/proj-a/routing-rule"
B = "/v5/iot/proj-b/routing-rule"

RULE = {"rule_name": "status", "subject": {"resource": "device.status", "event": "update"},
        "app_type": "GLOBAL", "description": "device status changes",
        "where": "notify_data.body.status = 'ONLINE'"}
HTTP_DETAIL = {"http_forwarding": {"url": "http://127.0.0.1:9/hook"}}



@pytest.fixture
async def store(tmp_path) -> AsyncIterator[Store]:
    async with SqliteStore(str(tmp_path / "api.db")) as s:
        yield s


@pytest.fixture
def limits() -> ApiLimits:
    return ApiLimits(rate=1000, burst=1000)


@pytest.fixture
async def client(store, limits) -> AsyncIterator[Api]:
    server = TestServer(create_app(API, store, limits), host="127.0.0.1")
    async with TestClient(server) as http:
        yield Api(http, TOKEN_A)


class Api:
    """A test client that sends project A's token unless told otherwise."""

    def __init__(self, http: TestClient, token: str | None) -> None:
        self.http, self.token = http, token

    def as_token(self, token: str | None) -> Api:
        return Api(self.http, token)

    async def call(self, method: str, path: str, json: Any = None, **kw: Any
                   ) -> tuple[int, Any]:
        headers = kw.pop("headers", {})
        if self.token is not None:
            headers.setdefault("X-Auth-Token", self.token)
        async with self.http.request(method, path, json=json, headers=headers, **kw) as resp:
            body = await resp.json() if resp.content_type == "application/json" else None
            return resp.status, body

    async def ok(self, method: str, path: str, json: Any = None, status: int = 200, **kw) -> Any:
        got, body = await self.call(method, path, json, **kw)
        assert got == status, (got, body)
        return body

    async def rule(self, base: str = A, **fields: Any) -> dict:
        return await self.ok("POST", f"{base}/rules", {**RULE, **fields}, 201)

    async def action(self, rule_id: str, base: str = A, **fields: Any) -> dict:
        body = {"rule_id": rule_id, "channel": "HTTP_FORWARDING", "channel_detail": HTTP_DETAIL}
        return await self.ok("POST", f"{base}/actions", {**body, **fields}, 201)


def sdk_client(url: str, ak: str = AK_A, sk: str = SK_A, project: str = "proj-a"):
    """The official Huawei Cloud IoTDA client (AK/SK signing) for `url`."""
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.http.http_config import HttpConfig
    from huaweicloudsdkiotda.v5 import IoTDAClient

    config = HttpConfig.get_default_config()
    config.ignore_ssl_verification = True
    config.timeout = (5, 10)
    credentials = BasicCredentials(ak, sk, project)
    return (IoTDAClient.new_builder().with_credentials(credentials).with_endpoints([url])
            .with_http_config(config).build())


def api_section(tmp_path: Path, port: int) -> str:
    """The `api:` section of a worker's rule file: project proj-a, key AK_A
    (its secret from $PROJ_A_SK), a SQLite store in `tmp_path`."""
    return f"""\
api:
  listen: "127.0.0.1:{port}"
  storage: "sqlite://{tmp_path / 'config.db'}"
  projects:
    proj-a:
      access_keys: [{{ak: "{AK_A}", sk: "${{PROJ_A_SK}}"}}]
"""


def start_worker(tmp_path: Path, config_text: str) -> subprocess.Popen:
    """`engine run` on `config_text` in `tmp_path`, output in engine.log."""
    config = tmp_path / "engine.yaml"
    config.write_text(config_text)
    log = open(tmp_path / "engine.log", "w")  # noqa: SIM115 - the child keeps its descriptor
    return subprocess.Popen([sys.executable, "-m", "engine", "run", str(config)],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PROJ_A_SK": SK_A, "PYTHONPATH": str(REPO)})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_api(config_file: Path, env: dict[str, str], *args: str
                ) -> Iterator[tuple[str, list[str]]]:
    """`engine api CONFIG ARGS` as a process; yields its URL and, after it
    stopped, its output lines in the list. Fails if it does not stop cleanly
    on SIGTERM or if its output contains one of the `env` values (secrets)."""
    import yaml

    listen = yaml.safe_load(config_file.read_text())["api"]["listen"]
    host, port = listen.rsplit(":", 1)
    # Output to a file, not a pipe: nobody reads a pipe while the test runs,
    # and a full pipe would block the server on its next log line.
    log_path = config_file.with_suffix(".log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "engine", "api", str(config_file), *args],
                                cwd=REPO, env={**os.environ, **env}, stdout=log,
                                stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as s:
                if s.connect_ex((host, int(port))) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"engine api did not start: {log_path.read_text()}")
            time.sleep(0.05)
        yield f"http://{listen}", output
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        text = log_path.read_text()
        output += text.splitlines()
    assert proc.returncode == 0, text
    for secret in env.values():
        assert secret not in text
