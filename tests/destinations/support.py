"""Helpers shared by the destination tests (endpoints come from tests/services.py)."""

from __future__ import annotations

import socket
import uuid

import pytest

from engine.destinations.base import Record
from tests import services as svc

HOST = svc.HOST
MYSQL = dict(port=svc.MYSQL_PORT, user=svc.MYSQL_USER, password=svc.MYSQL_PASSWORD, db=svc.MYSQL_DB)
PG = dict(port=svc.PG_PORT, user=svc.PG_USER, password=svc.PG_PASSWORD, db=svc.PG_DB)
AMQP_URL = svc.AMQP_URL
INFLUX_PORT = svc.INFLUX_PORT
VM_PORT = svc.VM_PORT
KAFKA_PORT = svc.KAFKA_PORT


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
