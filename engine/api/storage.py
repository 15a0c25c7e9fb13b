"""Where the API keeps each project's rules, actions and policies, and how
running workers hear about changes.

Two stores with one interface:

- `SqliteStore`: embedded, the default (stdlib sqlite3 on one thread of its
  own, WAL mode so readers in other processes do not block the writer);
  `":memory:"` when the configuration names no storage.
- `PostgresStore`: several API processes and workers sharing one
  configuration; every change is also sent with NOTIFY, so every listening
  process hears about it at once.

Objects are stored as their rule-file items (the dicts a rule file holds,
ids included), one row each, with a sequence number that orders them by
creation (the list APIs' marker). Every write goes through `change()`: it
locks the project, hands the project's current objects to a plan function
(which validates and returns what to write, or raises to refuse), writes
the plan and records one change event per object - all in one
transaction, so two writers can never both pass validation against the
same old state.

Change events reach subscribers (`subscribe(callback)` or `async for event
in store.changes()`) within a second, from this process or any other using
the same database: PostgreSQL pushes them (LISTEN/NOTIFY); SQLite has no
push across processes, so its store polls the change table every 0.2 s
(and at once after a change made through itself).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

log = logging.getLogger(__name__)

KINDS = ("rules", "actions", "flowcontrol_policies", "backlog_policies")
# Kinds of the Alibaba API (engine.api.aliyun.mapping): stored alongside, not rule-file sections.
ALIYUN_KINDS = ("aliyun_rules", "aliyun_actions", "aliyun_ids", "aliyun_routes")
# The device registry (engine.api.devices) and the outbox of the notifications
# its changes produce (engine.api.outbox): stored alongside, not rule-file sections.
REGISTRY_KINDS = PRODUCTS, DEVICES, EVENTS = ("products", "devices", "registry_events")
POLL_INTERVAL = 0.2
KEEP_CHANGES = 10_000  # change rows kept for late pollers; older ones are pruned


@dataclass(frozen=True)
class Stored:
    """One stored object: its kind (a rule-file section), id, creation
    sequence number and rule-file item."""

    kind: str
    id: str
    seq: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Put:
    kind: str
    id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Delete:
    kind: str
    id: str


Op = Put | Delete
Plan = Callable[[list[Stored]], Sequence[Op]]


@dataclass(frozen=True)
class ChangeEvent:
    """One object created, updated (`put`) or deleted. `revision` increases
    with every change of the store (all projects)."""

    revision: int
    project: str
    kind: str
    id: str
    op: Literal["put", "delete"]


Subscriber = Callable[[ChangeEvent], Awaitable[None] | None]


class Store(abc.ABC):
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def load(self, project: str) -> list[Stored]:
        """Every object of a project, oldest first."""

    @abc.abstractmethod
    async def projects(self) -> list[str]:
        """Projects that have at least one object."""

    @abc.abstractmethod
    async def change(self, project: str, plan: Plan) -> list[Stored]:
        """Run `plan` on the project's objects under the project's write lock
        and apply what it returns, atomically. Exceptions from `plan` abort
        the change and propagate. Returns the objects written (with seq)."""

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- change subscription -------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(event)` for every change (a coroutine function is
        scheduled as a task). Returns a function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    async def changes(self) -> AsyncIterator[ChangeEvent]:
        """Change events as an async iterator, from now on."""
        queue: asyncio.Queue[ChangeEvent] = asyncio.Queue()
        unsubscribe = self.subscribe(queue.put_nowait)
        try:
            while True:
                yield await queue.get()
        finally:
            unsubscribe()

    def _dispatch(self, event: ChangeEvent) -> None:
        for callback in list(self._subscribers):
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    asyncio.ensure_future(result)
            except Exception:  # one broken subscriber must not starve the others
                log.exception("change subscriber failed")


def open_store(url: str | None) -> Store:
    """The store a configuration's `api.storage` names (not yet opened):
    none or `:memory:` -> in-memory SQLite; `postgresql://...` (optionally
    `?schema=NAME`) -> PostgreSQL; `sqlite://PATH` or a plain path -> SQLite
    file (`sqlite:///var/lib/engine/config.db` is /var/lib/engine/config.db)."""
    if not url or url == ":memory:":
        return SqliteStore(":memory:")
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        schema = query.pop("schema", "public")
        return PostgresStore(urlunsplit(parts._replace(query=urlencode(query))), schema=schema)
    if url.startswith("sqlite://"):
        return SqliteStore(url[len("sqlite://"):])
    return SqliteStore(url)


def _event(row: Sequence[Any]) -> ChangeEvent:
    revision, project, kind, item_id, op = row
    return ChangeEvent(int(revision), project, kind, item_id, op)


# ------------------------------------------------------------------ SQLite

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_objects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: never reused, markers stay ordered
    project TEXT NOT NULL,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (project, kind, id)
);
CREATE TABLE IF NOT EXISTS api_changes (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    op TEXT NOT NULL
);
"""


class SqliteStore(Store):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        # One thread owns the connection: sqlite3 objects must stay on the
        # thread that made them, and one writer at a time is SQLite's model.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="api-sqlite")
        self._db: sqlite3.Connection | None = None
        self._seen = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._poller: asyncio.Task[None] | None = None

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def open(self) -> None:
        self._seen = await self._run(self._open)
        self._poller = asyncio.create_task(self._poll())

    def _open(self) -> int:
        db = sqlite3.connect(self.path, isolation_level=None)  # explicit BEGIN/COMMIT
        db.execute("PRAGMA busy_timeout = 10000")
        if self.path != ":memory:":
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe with WAL
        db.executescript(_SQLITE_SCHEMA)
        self._db = db
        return db.execute("SELECT COALESCE(MAX(revision), 0) FROM api_changes").fetchone()[0]

    async def close(self) -> None:
        if self._poller is not None:
            # A flag rather than cancel(): on Python 3.11 wait_for() can swallow
            # a cancellation that races with the event it waits for.
            self._closing = True
            self._wake.set()
            await self._poller
            self._poller = None
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._thread.shutdown(wait=True)

    def _rows(self, project: str) -> list[Stored]:
        assert self._db is not None, "store not opened"
        rows = self._db.execute(
            "SELECT kind, id, seq, body FROM api_objects WHERE project = ? ORDER BY seq", (project,)
        ).fetchall()
        return [Stored(kind, id_, seq, orjson.loads(body)) for kind, id_, seq, body in rows]

    async def load(self, project: str) -> list[Stored]:
        return await self._run(self._rows, project)

    async def projects(self) -> list[str]:
        def query() -> list[str]:
            assert self._db is not None
            rows = self._db.execute("SELECT DISTINCT project FROM api_objects ORDER BY project")
            return [row[0] for row in rows]

        return await self._run(query)

    async def change(self, project: str, plan: Plan) -> list[Stored]:
        written = await self._run(self._change, project, plan)
        self._wake.set()  # our own change: tell subscribers now, not at the next poll
        return written

    def _change(self, project: str, plan: Plan) -> list[Stored]:
        db = self._db
        assert db is not None, "store not opened"
        db.execute("BEGIN IMMEDIATE")  # take the write lock before reading: no lost updates
        try:
            ops = plan(self._rows(project))
            written = []
            for op in ops:
                if isinstance(op, Put):
                    seq = db.execute(
                        "INSERT INTO api_objects (project, kind, id, body) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (project, kind, id) DO UPDATE SET body = excluded.body "
                        "RETURNING seq",
                        (project, op.kind, op.id, orjson.dumps(op.body).decode()),
                    ).fetchone()[0]
                    written.append(Stored(op.kind, op.id, seq, op.body))
                else:
                    db.execute("DELETE FROM api_objects WHERE project = ? AND kind = ? AND id = ?",
                               (project, op.kind, op.id))
                revision = db.execute(
                    "INSERT INTO api_changes (project, kind, id, op) VALUES (?, ?, ?, ?) "
                    "RETURNING revision",
                    (project, op.kind, op.id, "put" if isinstance(op, Put) else "delete"),
                ).fetchone()[0]
                db.execute("DELETE FROM api_changes WHERE revision <= ?", (revision - KEEP_CHANGES,))
            db.execute("COMMIT")
            return written
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _changes_since(self, revision: int) -> list[ChangeEvent]:
        assert self._db is not None
        rows = self._db.execute(
            "SELECT revision, project, kind, id, op FROM api_changes WHERE revision > ? "
            "ORDER BY revision", (revision,)
        ).fetchall()
        return [_event(row) for row in rows]

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)
            self._wake.clear()
            if self._closing:
                return
            try:
                events = await self._run(self._changes_since, self._seen)
            except sqlite3.Error:
                log.exception("polling the change table failed")
                continue
            for event in events:
                self._seen = event.revision
                self._dispatch(event)


# ------------------------------------------------------------------ PostgreSQL

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class PostgresStore(Store):
    def __init__(self, dsn: str, schema: str = "public") -> None:
        super().__init__()
        if not _IDENTIFIER.fullmatch(schema):
            raise ValueError("schema must be a plain SQL identifier")
        self.dsn, self.schema = dsn, schema
        self.channel = f"engine_api_{schema}"  # NOTIFY channel: one per schema
        self._objects = f'"{schema}".api_objects'
        self._changes = f'"{schema}".api_changes'
        self._pool: Any = None
        self._listener: Any = None

    async def open(self) -> None:
        import asyncpg

        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        async with self._pool.acquire() as conn, conn.transaction():
            # Serialise schema creation: concurrent CREATE ... IF NOT EXISTS can collide.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.channel)
            await conn.execute(f"""
                CREATE SCHEMA IF NOT EXISTS "{self.schema}";
                CREATE TABLE IF NOT EXISTS {self._objects} (
                    seq BIGSERIAL PRIMARY KEY,
                    project TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    id TEXT NOT NULL,
                    body TEXT NOT NULL,
                    UNIQUE (project, kind, id));
                CREATE TABLE IF NOT EXISTS {self._changes} (
                    revision BIGSERIAL PRIMARY KEY,
                    project TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    id TEXT NOT NULL,
                    op TEXT NOT NULL);
            """)
        self._listener = await asyncpg.connect(self.dsn)
        await self._listener.add_listener(self.channel, self._notified)

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self._dispatch(ChangeEvent(**orjson.loads(payload)))

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def load(self, project: str) -> list[Stored]:
        rows = await self._pool.fetch(
            f"SELECT kind, id, seq, body FROM {self._objects} WHERE project = $1 ORDER BY seq",
            project,
        )
        return [Stored(r["kind"], r["id"], r["seq"], orjson.loads(r["body"])) for r in rows]

    async def projects(self) -> list[str]:
        rows = await self._pool.fetch(f"SELECT DISTINCT project FROM {self._objects} ORDER BY 1")
        return [row[0] for row in rows]

    async def change(self, project: str, plan: Plan) -> list[Stored]:
        async with self._pool.acquire() as conn, conn.transaction():
            # Per-project write lock held until commit; other projects proceed.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                               f"{self.channel}:{project}")
            rows = await conn.fetch(
                f"SELECT kind, id, seq, body FROM {self._objects} WHERE project = $1 ORDER BY seq",
                project,
            )
            ops = plan([Stored(r["kind"], r["id"], r["seq"], orjson.loads(r["body"])) for r in rows])
            written = []
            for op in ops:
                if isinstance(op, Put):
                    seq = await conn.fetchval(
                        f"INSERT INTO {self._objects} (project, kind, id, body) "
                        "VALUES ($1, $2, $3, $4) ON CONFLICT (project, kind, id) "
                        "DO UPDATE SET body = EXCLUDED.body RETURNING seq",
                        project, op.kind, op.id, orjson.dumps(op.body).decode(),
                    )
                    written.append(Stored(op.kind, op.id, seq, op.body))
                else:
                    await conn.execute(
                        f"DELETE FROM {self._objects} WHERE project = $1 AND kind = $2 AND id = $3",
                        project, op.kind, op.id,
                    )
                kind: Literal["put", "delete"] = "put" if isinstance(op, Put) else "delete"
                revision = await conn.fetchval(
                    f"INSERT INTO {self._changes} (project, kind, id, op) VALUES ($1, $2, $3, $4) "
                    "RETURNING revision", project, op.kind, op.id, kind,
                )
                await conn.execute(f"DELETE FROM {self._changes} WHERE revision <= $1",
                                   revision - KEEP_CHANGES)
                event = ChangeEvent(revision, project, op.kind, op.id, kind)
                # Delivered to every listener when (and only if) the transaction commits.
                await conn.execute("SELECT pg_notify($1, $2)", self.channel,
                                   orjson.dumps(asdict(event)).decode())
            return written
