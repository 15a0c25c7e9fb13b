"""Fixtures for the runtime tests: loopback only, everything bounded."""

from __future__ import annotations

import socket

import pytest

RABBIT = ("127.0.0.1", 5672)
KAFKA = ("127.0.0.1", 9092)
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def port_open(addr: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(addr, timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def rabbitmq() -> str:
    if not port_open(RABBIT):
        pytest.fail("RabbitMQ is not running on 127.0.0.1:5672 (run `bash scripts/services.sh up`)")
    return AMQP_URL


@pytest.fixture
def kafka() -> str:
    if not port_open(KAFKA):
        pytest.fail("no Kafka broker on 127.0.0.1:9092 (run `bash scripts/services.sh up`)")
    return "127.0.0.1:9092"
