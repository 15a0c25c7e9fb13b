"""Fixtures for the policies tests: loopback servers only, everything bounded,
temporary files under tmp_path."""

from __future__ import annotations

import socket

import pytest

from tests import services
from tests.policies.support import Clock, MemoryDeadLetters


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dead() -> MemoryDeadLetters:
    return MemoryDeadLetters()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def rabbitmq() -> str:
    if not _port_open(services.HOST, 5672):
        pytest.fail("RabbitMQ is not running on 127.0.0.1:5672 (run `bash scripts/services.sh up`)")
    return services.AMQP_URL


@pytest.fixture
def kafka() -> str:
    host, _, port = services.KAFKA_BOOTSTRAP.rpartition(":")
    if not _port_open(host, int(port)):
        pytest.fail(f"no Kafka broker on {services.KAFKA_BOOTSTRAP} "
                    "(run `bash scripts/services.sh up`)")
    return services.KAFKA_BOOTSTRAP
