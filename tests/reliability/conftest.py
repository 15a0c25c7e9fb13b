"""Fixtures for the fault-injection tests: second server instances started
(and stopped, by their own process group) by these tests only, never the
machine's; every test bounded in time."""

from __future__ import annotations

import pytest

from tests.reliability.support import DurableTansu, MariaNode, RabbitNode, port_open

KAFKA_PORT = 9092     # the source stream: scripts/services.sh's tansu



@pytest.fixture
def kafka() -> str:
    if not port_open(KAFKA_PORT):
        pytest.fail("no Kafka broker on 127.0.0.1:9092 (run `bash scripts/services.sh up`)")
    return f"127.0.0.1:{KAFKA_PORT}"


@pytest.fixture(scope="session")
def rabbit_node():
    node = RabbitNode()
    try:
        node.start()
        yield node
    finally:
        node.close()


@pytest.fixture(scope="session")
def maria_node():
    node = MariaNode()
    try:
        node.start()
        node.sql("CREATE DATABASE rel; "
                 "CREATE USER 'rel'@'127.0.0.1' IDENTIFIED BY 'Rel-pw-4f9c2e71'; "
                 "GRANT ALL ON rel.* TO 'rel'@'127.0.0.1';")
        yield node
    finally:
        node.close()


@pytest.fixture(scope="session")
def durable_tansu():
    broker = DurableTansu()
    try:
        broker.start_storage()
        broker.start()
        yield broker
    finally:
        broker.close()
