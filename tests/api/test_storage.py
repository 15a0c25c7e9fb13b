"""The stores: the same behaviour from SQLite and PostgreSQL (objects,
atomic plans, change events reaching every subscriber, also in another
store instance on the same database) and `project_config`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from engine.api import service
from engine.api.errors import ApiError
from engine.api.storage import (
    ChangeEvent,
    Delete,
    PostgresStore,
    Put,
    SqliteStore,
    Store,
    open_store,
)
from engine.config import ConfigError, EngineConfig
from engine.config.limits import ApiLimits
from tests import services as svc
from tests.destinations.support import port_open

RULE = {"rule_id": "r1", "subject": {"resource": "device.status", "event": "update"},
        "where": "notify_data.body.status = 'ONLINE'", "active": True}
ACTION = {"action_id": "a1", "rule_id": "r1", "channel": "HTTP_FORWARDING",
          "channel_detail": {"http_forwarding": {"url": "http://127.0.0.1:9/x"}}}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
async def backend(request, tmp_path) -> AsyncIterator[tuple[Store, callable]]:
    """(store, make_another) - make_another() opens a second store on the
    same database, as a second process would."""
    if request.param == "sqlite":
        path = str(tmp_path / "api.db")

        def make() -> Store:
            return SqliteStore(path)

        async with make() as store:
            yield store, make
        return
    if not port_open(svc.PG_PORT):
        pytest.skip("PostgreSQL is not running (bash scripts/services.sh up)")
    schema = f"api_test_{uuid.uuid4().hex[:10]}"

    def make() -> Store:
        return PostgresStore(svc.PG_URL, schema=schema)

    async with make() as store:
        yield store, make
    conn = await asyncpg.connect(svc.PG_URL)
    await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await conn.close()


async def next_event(queue: asyncio.Queue, timeout: float = 1.0) -> ChangeEvent:
    # "Changes apply to running workers within a second."
    return await asyncio.wait_for(queue.get(), timeout)


async def test_objects_round_trip_in_creation_order(backend):
    store, _ = backend
    written = await store.change("p1", lambda records: [Put("rules", "r1", RULE),
                                                        Put("actions", "a1", ACTION)])
    assert [(w.kind, w.id) for w in written] == [("rules", "r1"), ("actions", "a1")]
    assert written[0].seq < written[1].seq
    loaded = await store.load("p1")
    assert [(r.kind, r.id, r.body) for r in loaded] == [("rules", "r1", RULE),
                                                       ("actions", "a1", ACTION)]
    assert await store.load("p2") == []
    assert await store.projects() == ["p1"]

    # An update keeps the creation position; a delete removes.
    (updated,) = await store.change("p1", lambda _: [Put("rules", "r1", {**RULE, "active": False})])
    assert updated.seq == written[0].seq
    await store.change("p1", lambda _: [Delete("actions", "a1")])
    assert [r.id for r in await store.load("p1")] == ["r1"]


async def test_a_refused_plan_writes_nothing(backend):
    store, _ = backend

    def plan(records):
        raise ApiError(400, "X", "refused")

    with pytest.raises(ApiError):
        await store.change("p1", plan)
    assert await store.load("p1") == []


async def test_concurrent_plans_see_each_others_writes(backend):
    # Each plan counts the rules it sees and adds one: with a per-project lock
    # around read-validate-write, 10 concurrent changes leave 10 rules named 0..9.
    store, make = backend
    async with make() as other:
        def plan(records):
            n = len(records)
            return [Put("rules", f"r{n}", {**RULE, "rule_id": f"r{n}"})]

        await asyncio.gather(*(s.change("p1", plan) for s in [store, other] * 5))
    assert sorted(r.id for r in await store.load("p1")) == sorted(f"r{i}" for i in range(10))


async def test_every_subscriber_hears_every_change_also_from_another_instance(backend):
    store, make = backend
    async with make() as second:
        mine, theirs = asyncio.Queue(), asyncio.Queue()
        store.subscribe(mine.put_nowait)
        second.subscribe(theirs.put_nowait)

        await store.change("p1", lambda _: [Put("rules", "r1", RULE)])
        first = await next_event(mine)
        assert (first.project, first.kind, first.id, first.op) == ("p1", "rules", "r1", "put")
        assert await next_event(theirs) == first

        await second.change("p1", lambda _: [Delete("rules", "r1")])
        for queue in (mine, theirs):
            event = await next_event(queue)
            assert (event.id, event.op) == ("r1", "delete") and event.revision > first.revision


async def test_changes_async_iterator_and_unsubscribe(backend):
    store, _ = backend
    seen: list[ChangeEvent] = []

    async def consume():
        async for event in store.changes():
            seen.append(event)
            if len(seen) == 2:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)  # let it subscribe
    calls = []
    unsubscribe = store.subscribe(calls.append)
    unsubscribe()
    await store.change("p1", lambda _: [Put("rules", "r1", RULE), Put("actions", "a1", ACTION)])
    await asyncio.wait_for(task, 2)
    assert [e.id for e in seen] == ["r1", "a1"] and calls == []
    assert store._subscribers == []  # the iterator unsubscribed when it ended


async def test_async_callbacks_are_scheduled(backend):
    store, _ = backend
    done = asyncio.Event()

    async def callback(event):
        done.set()

    store.subscribe(callback)
    await store.change("p1", lambda _: [Put("rules", "r1", RULE)])
    await asyncio.wait_for(done.wait(), 1)


async def test_project_config_is_what_a_rule_file_gives(backend):
    store, _ = backend
    limits = ApiLimits()
    await store.change("p1", service.plan_create(service.RULES, RULE, limits))
    await store.change("p1", service.plan_create(service.ACTIONS, ACTION, limits))
    config = await service.load_project_config(store, "p1")
    assert isinstance(config, EngineConfig)
    assert [r.rule_id for r in config.rules] == ["r1"] and config.rules[0].active is True
    assert config.actions_of("r1")[0].detail.url == "http://127.0.0.1:9/x"


def test_project_config_reports_an_invalid_store_like_a_file():
    from engine.api.storage import Stored

    records = [Stored("actions", "a1", 1, ACTION)]  # its rule is missing
    with pytest.raises(ConfigError, match="no rule has rule_id 'r1'"):
        service.project_config(records, "p1")


def test_open_store_urls():
    assert isinstance(open_store(None), SqliteStore)
    assert open_store(None).path == ":memory:"
    assert open_store("sqlite:///var/lib/engine/config.db").path == "/var/lib/engine/config.db"
    assert open_store("state/api.db").path == "state/api.db"
    pg = open_store("postgresql://engine@127.0.0.1/engine?schema=cfg&sslmode=disable")
    assert isinstance(pg, PostgresStore)
    assert (pg.schema, pg.dsn) == ("cfg", "postgresql://engine@127.0.0.1/engine?sslmode=disable")
    with pytest.raises(ValueError):
        PostgresStore("postgresql://x/y", schema="bad; drop")


async def test_in_memory_store_works(tmp_path):
    async with open_store(None) as store:
        events = asyncio.Queue()
        store.subscribe(events.put_nowait)
        await store.change("p", lambda _: [Put("rules", "r1", RULE)])
        assert (await next_event(events)).id == "r1"


async def test_import_that_conflicts_with_stored_objects_is_refused_whole():
    async with open_store(None) as store:
        await store.change("p", service.plan_import(
            {"flowcontrol_policies": [{"policy_id": "f1", "scope": "USER"}]}, replace=False))
        incoming = {"rules": [RULE], "flowcontrol_policies": [{"policy_id": "f2", "scope": "USER"}]}
        with pytest.raises(ApiError, match="already applies to scope USER"):
            await store.change("p", service.plan_import(incoming, replace=False))
        assert [r.id for r in await store.load("p")] == ["f1"]
        # With --replace the stored policy goes, so the same file fits.
        await store.change("p", service.plan_import(incoming, replace=True))
        assert sorted(r.id for r in await store.load("p")) == ["f2", "r1"]
