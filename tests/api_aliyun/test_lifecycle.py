"""StartRule/StopRule on a running `engine run` with the API: an Alibaba
rule with an HTTP action forwards once started and stops once stopped
(within a second of the call on an idle machine; bounded generously here).

The events come from the HTTP source as the `device.message/report`
notifications an MQTT message on `/a1pk/dev1/user/update` becomes
(engine.sources.alink); the rules are in Alibaba's dialect, their paths
relative to the payload (docs/language-alibaba.md). The device path through
a real broker is tests/api_aliyun/test_devices_live.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.api.conftest import AK_A, SK_A, free_port
from tests.api_aliyun.conftest import Sdk

REPO = Path(__file__).resolve().parents[2]


class Receiver:
    """An HTTP server on a free port recording (path, JSON body) of each POST."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [path for path, _ in self.received]


def notification(temp: int) -> bytes:
    return json.dumps({
        "resource": "device.message", "event": "report", "event_time": "20240101T000000Z",
        "notify_data": {"header": {"device_id": "dev1", "product_id": "a1pk", "app_id": "app",
                                   "gateway_id": "dev1", "node_id": "dev1"},
                        "body": {"topic": "/a1pk/dev1/user/update", "content": {"temp": temp}}},
    }).encode()


def post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:
        assert response.status == 200  # answered once processed and delivered


def until(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


@pytest.mark.timeout(120)
def test_start_and_stop_take_effect_on_a_running_worker(tmp_path):
    receiver = Receiver()
    source, api = free_port(), free_port()
    config = tmp_path / "engine.yaml"
    config.write_text(f"""\
sources:
  - http: {{listen: "127.0.0.1:{source}", path: "/in", auth: none}}
api:
  listen: "127.0.0.1:{api}"
  storage: "sqlite://{tmp_path / 'config.db'}"
  projects:
    proj-a:
      access_keys: [{{ak: "{AK_A}", sk: "${{PROJ_A_SK}}"}}]
""")
    with open(tmp_path / "engine.log", "w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(config)],
                                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PROJ_A_SK": SK_A, "PYTHONPATH": str(REPO)})
    try:
        sdk = Sdk(f"127.0.0.1:{api}")
        until(lambda: _answers(sdk), 30)
        ingest = f"http://127.0.0.1:{source}/in"
        # The API may answer before the worker has started its sources.
        until(lambda: _listening(source), 30)

        rule = sdk.ok("CreateRule", Name="hot_devices", ProductKey="a1pk",
                      ShortTopic="+/user/update",
                      Select="deviceName() AS device, temp",
                      Where="temp > 30")["RuleId"]
        sdk.ok("CreateRuleAction", RuleId=rule, Type="HTTP",
               Configuration=json.dumps({"url": f"{receiver.url}/hot"}))
        # A second rule that always runs marks when a later change has been applied.
        marker = sdk.ok("CreateRule", Name="marker_rule", Select="temp")["RuleId"]
        sdk.ok("CreateRuleAction", RuleId=marker, Type="HTTP",
               Configuration=json.dumps({"url": f"{receiver.url}/marker"}))

        post(ingest, notification(35))  # both rules created STOP: nothing is forwarded
        sdk.ok("StartRule", RuleId=marker)
        until(lambda: (post(ingest, notification(1)), "/marker" in receiver.paths())[1])
        assert "/hot" not in receiver.paths()

        sdk.ok("StartRule", RuleId=rule)
        until(lambda: (post(ingest, notification(40)), "/hot" in receiver.paths())[1])
        hot = [body for path, body in receiver.received if path == "/hot"]
        assert hot[0] == {"device": "dev1", "temp": 40}
        assert sdk.ok("GetRule", RuleId=rule)["RuleInfo"]["Status"] == "RUNNING"

        sdk.ok("StopRule", RuleId=rule)
        sdk.ok("StopRule", RuleId=marker)
        # Once the marker stopped forwarding, the earlier StopRule is applied too.
        until(lambda: _stopped(receiver, ingest))
        count = receiver.paths().count("/hot")
        post(ingest, notification(50))
        assert receiver.paths().count("/hot") == count
        assert sdk.ok("GetRule", RuleId=rule)["RuleInfo"]["Status"] == "STOP"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        receiver.server.shutdown()
    assert proc.returncode == 0, (tmp_path / "engine.log").read_text()[-3000:]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _answers(sdk: Sdk) -> bool:
    try:
        sdk.ok("ListRule")
        return True
    except Exception:
        return False


def _stopped(receiver: Receiver, ingest: str) -> bool:
    before = receiver.paths().count("/marker")
    post(ingest, notification(2))
    return receiver.paths().count("/marker") == before
