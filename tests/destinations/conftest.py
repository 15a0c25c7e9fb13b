"""Shared helpers for the destination tests.

Integration tests (marked `services`) talk to the real local servers started by
`bash scripts/services.sh up`; addresses and credentials can be overridden
with the environment variables below.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.destinations.base import Record

HOST = "127.0.0.1"
MYSQL = dict(
    port=int(os.environ.get("ENGINE_TEST_MYSQL_PORT", "3306")),
    user=os.environ.get("ENGINE_TEST_MYSQL_USER", "engine"),
    password=os.environ.get("ENGINE_TEST_MYSQL_PASSWORD", "engine-pass"),
    db=os.environ.get("ENGINE_TEST_MYSQL_DB", "engine_test"),
)
PG = dict(
    port=int(os.environ.get("ENGINE_TEST_PG_PORT", "5432")),
    user=os.environ.get("ENGINE_TEST_PG_USER", "engine"),
    password=os.environ.get("ENGINE_TEST_PG_PASSWORD", "engine-pass"),
    db=os.environ.get("ENGINE_TEST_PG_DB", "engine_test"),
)
AMQP_URL = os.environ.get("ENGINE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
INFLUX_PORT = int(os.environ.get("ENGINE_TEST_INFLUX_PORT", "8086"))
VM_PORT = int(os.environ.get("ENGINE_TEST_VM_PORT", "8428"))
KAFKA_PORT = int(os.environ.get("ENGINE_TEST_KAFKA_PORT", "9092"))

# Per-test ceiling so a hung server cannot hang the suite.
TEST_TIMEOUT_S = 60


@pytest.fixture(autouse=True)
def _bounded_time():
    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded {TEST_TIMEOUT_S} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def require(port: int, what: str) -> None:
    if not port_open(port):
        pytest.skip(f"{what} is not listening on {HOST}:{port}; start it with `bash scripts/services.sh up`")


def closed_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def notification(i: int, device: str = "dev-1") -> dict:
    """A device.property report shaped like the spec's example, made unique by i."""
    return {
        "resource": "device.property",
        "event": "report",
        "event_time": "20151212T121212Z",
        "notify_data": {
            "header": {"device_id": device, "product_id": "ABC123456789"},
            "body": {
                "services": [
                    {
                        "service_id": "Battery",
                        "properties": {"batteryLevel": i, "ratio": i / 4, "ok": i % 2 == 0},
                        "event_time": "20151212T121212Z",
                    }
                ]
            },
        },
    }


def records(n: int, device: str = "dev-1", event_time: str | None = "20151212T121212Z") -> list[Record]:
    return [Record(notification(i, device), key=device, event_time=event_time,
                   rule_id="r1", action_id="a1") for i in range(n)]


@dataclass
class Pki:
    ca: Path           # CA certificate (PEM) the client trusts
    cert: Path         # server certificate for localhost / 127.0.0.1 / iot.example.test
    key: Path
    other_ca: Path     # an unrelated CA: verification against it must fail


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    """A throwaway CA and a server certificate it signed (openssl CLI)."""
    d = tmp_path_factory.mktemp("pki")
    for name in ("ca", "other"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", f"/CN=engine test {name} CA", "-keyout", f"{name}.key",
                 "-out", f"{name}.pem", cwd=d)
    (d / "san.ext").write_text(
        "subjectAltName=DNS:localhost,DNS:iot.example.test,IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=d)
    return Pki(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key", other_ca=d / "other.pem")
