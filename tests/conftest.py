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
# bound. Only topics that did not exist when the session started, and only
# when the broker answers (best effort: cleanup never fails a run).
_TOPICS_BEFORE = pytest.StashKey[set[str] | None]()


def pytest_sessionstart(session: pytest.Session) -> None:
    try:
        from tests.services import kafka_topics
    except ImportError:  # this file copied elsewhere (tests/test_strict_skips.py)
        return
    session.config.stash[_TOPICS_BEFORE] = kafka_topics()


def pytest_sessionfinish(session: pytest.Session) -> None:
    before = session.config.stash.get(_TOPICS_BEFORE, None)
    if before is None:
        return
    from tests.services import delete_kafka_topics, kafka_topics

    new = sorted(t for t in (kafka_topics() or set()) - before if not t.startswith("__"))
    if new:
        delete_kafka_topics(new)
