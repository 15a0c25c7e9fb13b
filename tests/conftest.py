"""Suite-wide test setup. Keep this minimal: fixtures live in each folder's conftest.py.

Endpoints of the local servers are in `tests/services.py`; start the servers with
`bash scripts/services.sh up`. Tests that need them are marked `services`.
The repository root is on sys.path (pyproject's `pythonpath`), so `tests.*` imports work.
"""

import os

import pytest

# `make test` sets ENGINE_TEST_STRICT=1: there a test that skips itself at run
# time (a server it needs is not listening, see tests/destinations/support.py
# `require`) FAILS instead, so a missing server cannot pass for green. Skips
# declared with @pytest.mark.skip/skipif (known limitations) stay skips.
STRICT = os.environ.get("ENGINE_TEST_STRICT") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (STRICT and report.skipped and not hasattr(report, "wasxfail")
            and call.excinfo is not None and call.excinfo.errisinstance(pytest.skip.Exception)
            and item.get_closest_marker("skip") is None
            and item.get_closest_marker("skipif") is None):
        report.outcome = "failed"
        report.longrepr = (f"skipped, which ENGINE_TEST_STRICT=1 (make test) does not allow: "
                           f"{call.excinfo.value.msg}")


# Kafka topics the suite creates (uuid-named, one or more per test) are
# deleted when it ends: the local broker keeps topics in memory, so a
# machine that runs the suite again and again would otherwise grow without
# bound. Only topics that did not exist when the session started are
# deleted, and only when the broker answers (best effort: cleanup never
# fails a run).
def _kafka_topics() -> set[str] | None:
    import asyncio
    import socket

    from tests.services import HOST, KAFKA_BOOTSTRAP, KAFKA_PORT

    try:
        socket.create_connection((HOST, KAFKA_PORT), timeout=0.5).close()
    except OSError:
        return None

    async def topics() -> set[str]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP, request_timeout_ms=10_000)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    try:
        return asyncio.run(topics())
    except Exception:
        return None


def _delete_kafka_topics(names: list[str]) -> None:
    import asyncio

    from tests.services import KAFKA_BOOTSTRAP

    async def delete() -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA_BOOTSTRAP, request_timeout_ms=30_000)
        await admin.start()
        try:
            for i in range(0, len(names), 50):
                await admin.delete_topics(names[i:i + 50])
        finally:
            await admin.close()

    try:
        asyncio.run(delete())
    except Exception as e:
        print(f"\nKafka topics left by the suite not deleted: {type(e).__name__}: {e}")


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_TOPICS_BEFORE] = _kafka_topics()


def pytest_sessionfinish(session: pytest.Session) -> None:
    before = session.config.stash.get(_TOPICS_BEFORE, None)
    if before is None:
        return
    after = _kafka_topics() or set()
    new = sorted(t for t in after - before if not t.startswith("__"))
    if new:
        _delete_kafka_topics(new)


_TOPICS_BEFORE = pytest.StashKey[set[str] | None]()
