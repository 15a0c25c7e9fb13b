"""Where the local test servers are: the ones `bash scripts/services.sh up` starts.

All bound to 127.0.0.1. Each value can be overridden with the environment
variable named next to it (the same names the destination tests read).
"""

from __future__ import annotations

import os


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


HOST = "127.0.0.1"

# MariaDB: database and user created by services.sh.
MYSQL_HOST = _env("ENGINE_TEST_MYSQL_HOST", HOST)
MYSQL_PORT = int(_env("ENGINE_TEST_MYSQL_PORT", "3306"))
MYSQL_USER = _env("ENGINE_TEST_MYSQL_USER", "engine")
MYSQL_PASSWORD = _env("ENGINE_TEST_MYSQL_PASSWORD", "engine-pass")
MYSQL_DB = _env("ENGINE_TEST_MYSQL_DB", "engine_test")
MYSQL_URL = f"mysql://{MYSQL_USER}:{MYSQL_PASSWORD}@{MYSQL_HOST}:{MYSQL_PORT}/{MYSQL_DB}"

# PostgreSQL: role `engine` owns database `engine_test`.
PG_HOST = _env("ENGINE_TEST_PG_HOST", HOST)
PG_PORT = int(_env("ENGINE_TEST_PG_PORT", "5432"))
PG_USER = _env("ENGINE_TEST_PG_USER", "engine")
PG_PASSWORD = _env("ENGINE_TEST_PG_PASSWORD", "engine-pass")
PG_DB = _env("ENGINE_TEST_PG_DB", "engine_test")
PG_URL = f"postgresql://{PG_USER}:{PG_PASSWORD}@{PG_HOST}:{PG_PORT}/{PG_DB}"

# RabbitMQ: the default guest user (allowed from loopback only).
AMQP_URL = _env("ENGINE_TEST_AMQP_URL", f"amqp://guest:guest@{HOST}:5672/")

# InfluxDB 1.6 (v1 API: /ping, /query, /write); no authentication.
INFLUX_PORT = int(_env("ENGINE_TEST_INFLUX_PORT", "8086"))
INFLUX_URL = _env("ENGINE_TEST_INFLUX_URL", f"http://{HOST}:{INFLUX_PORT}")

# VictoriaMetrics: accepts InfluxDB v2 writes on /api/v2/write; read back via its own API.
VM_PORT = int(_env("ENGINE_TEST_VM_PORT", "8428"))
VM_URL = _env("ENGINE_TEST_VM_URL", f"http://{HOST}:{VM_PORT}")

# Kafka wire protocol (tansu, memory storage: topics vanish when it restarts).
KAFKA_PORT = int(_env("ENGINE_TEST_KAFKA_PORT", "9092"))
KAFKA_BOOTSTRAP = _env("ENGINE_TEST_KAFKA_BOOTSTRAP", f"{HOST}:{KAFKA_PORT}")


def _kafka_admin(use, timeout_ms: int):
    """`await use(admin)` with an admin client of the local broker."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def run():
        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP,
                                    request_timeout_ms=timeout_ms)
        await admin.start()
        try:
            return await use(admin)
        finally:
            await admin.close()

    return asyncio.run(run())


def kafka_topics() -> set[str] | None:
    """The local broker's topics, or None when it does not answer."""
    import socket

    try:
        socket.create_connection((HOST, KAFKA_PORT), timeout=0.5).close()
        return set(_kafka_admin(lambda admin: admin.list_topics(), 10_000))
    except Exception:
        return None


def delete_kafka_topics(names: list[str]) -> None:
    """Delete `names` from the local broker (best effort: reports, never raises)."""

    async def delete(admin) -> None:
        for i in range(0, len(names), 50):
            await admin.delete_topics(names[i:i + 50])

    try:
        _kafka_admin(delete, 30_000)
    except Exception as e:
        print(f"\nKafka topics left by the suite not deleted: {type(e).__name__}: {e}")
