"""`engine api` as a process, driven by Alibaba's official Python SDK
(aliyun-python-sdk-core + aliyun-python-sdk-iot) pointed at it with
`set_endpoint` and `set_protocol_type('http')`, as a migrating script would."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import AK_A, AK_B, SK_A, SK_B, free_port, running_api

REPO = Path(__file__).resolve().parents[2]
# A database password the tests put in a Configuration: `running_api` fails
# the test if the server's output shows it (the access log, an error message).
DB_PASSWORD = "db-pw-7c1e5a9b"
ENV = {"PROJ_A_SK": SK_A, "PROJ_B_SK": SK_B, "UNUSED_DB_PASSWORD": DB_PASSWORD}


def write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "engine.yaml"
    path.write_text(f"""\
api:
  listen: "127.0.0.1:{free_port()}"
  storage: "sqlite://{tmp_path / 'config.db'}"
  projects:
    proj-a:
      access_keys: [{{ak: "{AK_A}", sk: "${{PROJ_A_SK}}"}}]
    proj-b:
      access_keys: [{{ak: "{AK_B}", sk: "${{PROJ_B_SK}}"}}]
{extra}""")
    return path


@pytest.fixture
def server(tmp_path) -> Any:
    """`engine api CONFIG` running; yields (host:port, path of its SQLite store)."""
    config = write_config(tmp_path)
    with running_api(config, ENV) as (url, _):
        yield url.removeprefix("http://"), tmp_path / "config.db"


class Sdk:
    """The official AcsClient for one endpoint; `call` builds a request
    class of aliyunsdkiot by name and sets its parameters with its setters."""

    def __init__(self, endpoint: str, ak: str = AK_A, sk: str = SK_A) -> None:
        from aliyunsdkcore.client import AcsClient

        self.endpoint = endpoint
        self.client = AcsClient(ak, sk, "cn-shanghai", timeout=10, connect_timeout=5,
                                max_retry_time=0, auto_retry=False)

    def request(self, action: str, **params: Any) -> Any:
        import importlib

        module = importlib.import_module(f"aliyunsdkiot.request.v20180120.{action}Request")
        request = getattr(module, f"{action}Request")()
        request.set_endpoint(self.endpoint)
        request.set_protocol_type("http")
        request.set_accept_format("json")
        for name, value in params.items():
            getattr(request, f"set_{name}")(value)
        return request

    def call(self, action: str, **params: Any) -> dict[str, Any]:
        return json.loads(self.client.do_action_with_exception(self.request(action, **params)))

    def ok(self, action: str, **params: Any) -> dict[str, Any]:
        body = self.call(action, **params)
        assert body.get("Success") is True, body
        assert body["RequestId"]
        return body

    def fails(self, action: str, code: str, **params: Any) -> dict[str, Any]:
        body = self.call(action, **params)
        assert body["Success"] is False and body["Code"] == code, body
        assert body["ErrorMessage"] and body["RequestId"]
        return body


def stored(db: Path) -> list[tuple[str, str, str, str]]:
    """Every stored object (project, kind, id, body) of the API's SQLite file."""
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute("SELECT project, kind, id, body FROM api_objects"))
