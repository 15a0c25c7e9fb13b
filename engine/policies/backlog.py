"""The durable backlog: records an action could not deliver yet, kept on disk.

What goes in: records whose destination failed retryably, or that flow
control held back, once the runner wants to acknowledge the source batch
without waiting for the destination. What comes out: the same records,
oldest first, to be delivered (then `ack`ed), or - when a backlog policy's
bound is reached - handed to the dead-letter store with the reason
("expired"). Nothing leaves silently.

Storage: one SQLite database per engine in WAL mode, one table keyed by
(action_id, seq). `seq` is one counter for the whole database, so it orders
entries by arrival across actions: "oldest" is "smallest seq", and per
action (hence per device, `Record.key`) `peek` returns entries in the order
they were appended. Every call is one transaction (executemany for the
rows), run in one dedicated thread so the event loop never waits on disk.

Durability: `append` returns only once its transaction is committed with
`synchronous=FULL`, i.e. the WAL is fsync'd. NORMAL would survive a
`kill -9` of the engine too (the WAL is in the OS page cache) but not a
power loss or kernel crash, and the caller acknowledges the source right
after `append` returns - after that the backlog holds the only copy. The
cost is one fsync per append call, which is why callers append whole
batches. Expiry writes the dead letters first (durably, see
`engine.policies.deadletters`) and deletes the rows after: a crash between
the two leaves an entry in both places, never in neither.

Bounds (IoTDA 1.4.21 backlog policies, `engine.config.BacklogPolicy`):
every policy whose scope covers an action bounds it - USER all actions
together (IoTDA's backlog policy is tenant-wide), CHANNEL the actions of one
channel together, RULE the actions of one rule, ACTION one action.
`backlog_size` bounds the bytes stored for the whole scope (the oldest
entries of the scope expire first), `backlog_time` the age of each entry;
whichever is reached first applies. A 0 in any applicable policy disables
stacking for the action: `append` then dead-letters the records at once
(IoTDA would discard them). When no USER policy is configured, IoTDA's
defaults (1 GiB, 86399 s) bound the whole engine.

Interface (what the action runner calls):

    backlog = Backlog(path, dead_letters, config.backlog_policies)
    backlog.add_action(action_id, rule_id, channel)     # for every action
    await backlog.open()
    backlog.pending_actions()           # actions with entries: drain these first
    backlog.stacking(action_id)         # False: a 0-policy applies (append dead-letters)
    r = await backlog.append(action_id, records, reason)  # committed when it returns
    r = await backlog.store(...); await backlog.trim(action_id)  # the same in two steps
    entries = await backlog.peek(action_id, limit)  # [(seq, Record)], oldest first
    await backlog.ack(action_id, [seq for seq, _ in delivered])
    await backlog.settle_unconfigured() # dead-letter entries of removed actions
    await backlog.expire()              # every second or so: time bounds
    backlog.size(action_id)             # (count, bytes), from memory
    backlog.stats(action_id)            # ActionStats: count, bytes, expired, refused
    await backlog.close()

While an action's backlog is not empty, new records for it must be appended
behind the backlog rather than written directly, or a device's newer
records would overtake its older ones.

`append` raises (sqlite3.Error / OSError) only when the database cannot be
written; nothing was stored then and the caller must keep the records.

Changing the number of workers (`engine run --workers`, one state
directory each) leaves backlogs no worker opens: `Backlog(..., adopt=paths)`
moves their entries into its own at `open` (see `stranded_backlogs` in
engine.app.supervisor for who takes which), so they are delivered, not
stranded.

`Backlog.in_memory(dead_letters)` is the same backlog in an in-memory
database (no file, no lock, gone with the process): what an action runner
built without a backlog uses (tests, embedded use), so there is one
delivery path whatever the durability.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.config.models import BacklogPolicy
from engine.destinations.base import Record
from engine.policies.deadletters import DeadLetterWriter, entries

SCHEMA = """
CREATE TABLE IF NOT EXISTS backlog (
    action_id TEXT    NOT NULL,
    seq       INTEGER NOT NULL,  -- one counter per database: arrival order
    stored    REAL    NOT NULL,  -- wall clock (unix seconds): ages survive restarts
    size      INTEGER NOT NULL,  -- len(record): what backlog_size counts
    record    BLOB    NOT NULL,  -- orjson {payload, key, event_time, rule_id, action_id}
    PRIMARY KEY (action_id, seq)
) WITHOUT ROWID;
-- oldest-first across the actions of a shared size bound
CREATE INDEX IF NOT EXISTS backlog_by_seq ON backlog (seq);
"""

EXPIRE_CHUNK = 2000   # rows dead-lettered per store write while expiring
IN_CHUNK = 500        # seqs per DELETE ... IN (...) statement

DEFAULT_POLICY = BacklogPolicy(policy_id="default")

log = logging.getLogger(__name__)


class BacklogInUse(OSError):
    """Another process holds the backlog database."""


@dataclass(slots=True)
class ActionStats:
    count: int = 0      # entries stored now
    bytes: int = 0      # their size
    expired: int = 0    # entries dead-lettered because a bound was reached
    refused: int = 0    # records dead-lettered by append because stacking is disabled


@dataclass(slots=True)
class Appended:
    stored: int         # records now in the backlog
    refused: int        # records dead-lettered instead (stacking disabled)


@dataclass(slots=True)
class _Group:
    """Actions sharing one size bound (one backlog policy)."""

    policy_id: str
    limit: int
    members: set[str] = field(default_factory=set)
    bytes: int = 0


@dataclass(slots=True)
class _Action:
    stats: ActionStats = field(default_factory=ActionStats)
    groups: list[_Group] = field(default_factory=list)
    max_age: float | None = None       # seconds; the smallest applicable backlog_time
    age_policy: str | None = None
    disabled_by: str | None = None     # "policy p (backlog_size 0)" when stacking is off
    configured: bool = False


def applicable(policies: Sequence[BacklogPolicy], rule_id: str, action_id: str,
               channel: str) -> list[BacklogPolicy]:
    """The backlog policies bounding one action (IoTDA defaults as USER if none is)."""
    target = {"USER": None, "CHANNEL": channel, "RULE": rule_id, "ACTION": action_id}
    found = [p for p in policies if p.scope == "USER" or p.scope_value == target[p.scope]]
    if not any(p.scope == "USER" for p in policies):
        found.append(DEFAULT_POLICY)
    return found


def _encode(r: Record) -> bytes:
    meta = {"key": r.key, "event_time": r.event_time, "rule_id": r.rule_id,
            "action_id": r.action_id}
    if r.raw is not None:
        # The exact input bytes after the metadata (orjson never writes a raw
        # newline): the replayed record sends what a first try would have sent.
        return orjson.dumps(meta) + b"\n" + r.raw
    return orjson.dumps({"payload": r.payload, **meta})


def _decode(blob: bytes) -> Record:
    cut = blob.find(b"\n")
    if cut < 0:
        d = orjson.loads(blob)
        return Record(d["payload"], d["key"], d["event_time"], d["rule_id"], d["action_id"])
    d = orjson.loads(blob[:cut])
    raw = blob[cut + 1:]
    # payload None: decoded from raw if a sink reads it (most send raw as is)
    return Record(None, d["key"], d["event_time"], d["rule_id"], d["action_id"], raw)


class Backlog:
    def __init__(self, path: str, dead_letters: DeadLetterWriter,
                 policies: Iterable[BacklogPolicy] = (), *,
                 clock: Callable[[], float] = time.time, adopt: Sequence[str] = ()) -> None:
        """`adopt`: backlog databases no process opens any more (left by a
        different number of workers); `open` moves their entries into this
        one and deletes them."""
        self.path = path
        self.adopt = list(adopt)
        self.dead_letters = dead_letters
        self.policies = list(policies)
        self.clock = clock
        self._groups: dict[str, _Group] = {}
        self._actions: dict[str, _Action] = {}
        self._next_seq = 1
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        # One thread owns the connection: calls are serialized in submission
        # order. The counters are changed on the event loop, when a call's
        # result arrives: a caller sees the backlog's counts move in the
        # same step as its own (the action runner's counts balance at every
        # scrape).
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="backlog")
        self._expiring = asyncio.Lock()  # one select -> dead-letter -> delete at a time

    MEMORY = ":memory:"

    @classmethod
    def in_memory(cls, dead_letters: DeadLetterWriter,
                  policies: Iterable[BacklogPolicy] = ()) -> Backlog:
        return cls(cls.MEMORY, dead_letters, policies)

    @property
    def durable(self) -> bool:
        return self.path != self.MEMORY

    # -- setup ------------------------------------------------------------------

    def add_action(self, action_id: str, rule_id: str, channel: str) -> None:
        """Declare an action and resolve the policies bounding it. Call for
        every configured action, before or after `open`, before `append`."""
        a = self._action(action_id)
        if a.configured:
            return
        a.configured = True
        for p in applicable(self.policies, rule_id, action_id, channel):
            if p.backlog_size == 0 or p.backlog_time == 0:
                zero = "backlog_size" if p.backlog_size == 0 else "backlog_time"
                a.disabled_by = a.disabled_by or f"policy {p.policy_id} ({zero} 0)"
                continue
            g = self._groups.setdefault(p.policy_id, _Group(p.policy_id, p.backlog_size))
            g.members.add(action_id)
            g.bytes += a.stats.bytes  # entries found on disk at open
            a.groups.append(g)
            if a.max_age is None or p.backlog_time < a.max_age:
                a.max_age, a.age_policy = float(p.backlog_time), p.policy_id

    async def open(self) -> None:
        for action_id, count, nbytes in await self._run(self._open):
            self._account(action_id, count, nbytes)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None
        self._executor.shutdown(wait=True)

    # -- what the runner reads ------------------------------------------------

    def stacking(self, action_id: str) -> bool:
        return self._actions[action_id].disabled_by is None

    def size(self, action_id: str) -> tuple[int, int]:
        s = self._action(action_id).stats
        return s.count, s.bytes

    def stats(self, action_id: str) -> ActionStats:
        return self._action(action_id).stats

    def usage(self) -> list[tuple[str, int, int]]:
        """(policy_id, bytes stored, backlog_size) of every size-bounded
        policy in use: how close each is to its bound (for the metrics)."""
        return [(g.policy_id, g.bytes, g.limit) for g in self._groups.values()]

    def pending_actions(self) -> list[str]:
        """Actions with stored entries (after open: what to drain first),
        including ones no longer configured (`add_action` never called)."""
        return [aid for aid, a in self._actions.items() if a.stats.count]

    # -- operations -------------------------------------------------------------

    async def append(self, action_id: str, records: Sequence[Record],
                     reason: str | None = None) -> Appended:
        """Store records at the end of the action's backlog; return once they
        are committed. `reason` (why they were not delivered) only goes into
        the dead letters written when stacking is disabled. If the append
        pushes a size bound over, the oldest entries of that scope are
        dead-lettered before this returns (back-pressure while the
        dead-letter store is down)."""
        appended = await self.store(action_id, records, reason)
        await self.trim(action_id)
        return appended

    async def store(self, action_id: str, records: Sequence[Record],
                    reason: str | None = None) -> Appended:
        """`append` without the size bounds: committed and counted when it
        returns, with no await in between (a caller can count the records
        out of its own hands in the same step); `trim` after it."""
        a = self._actions[action_id]
        if not records:
            return Appended(0, 0)
        if a.disabled_by is not None:
            why = f"{reason or 'not delivered'}; not kept: backlog disabled by {a.disabled_by}"
            await self.dead_letters.write(
                entries(((r, why) for r in records), f"backlog:{action_id}"))
            a.stats.refused += len(records)
            return Appended(0, len(records))
        nbytes = await self._run(self._insert, action_id, records, self.clock())
        self._account(action_id, len(records), nbytes)
        return Appended(len(records), 0)

    async def trim(self, action_id: str) -> None:
        """Dead-letter the oldest entries of every size bound of the action
        that is over its limit."""
        if any(g.bytes > g.limit for g in self._actions[action_id].groups):
            await self._expire(self.clock(), size_only=True)

    async def peek(self, action_id: str, limit: int) -> list[tuple[int, Record]]:
        """The action's oldest `limit` entries, in order (not removed)."""
        if not self._action(action_id).stats.count:
            return []
        return await self._run(self._select, action_id, limit)

    async def ack(self, action_id: str, seqs: Iterable[int]) -> set[int]:
        """Remove delivered (or otherwise settled) entries; one transaction.
        Returns the seqs that were still there (a bound may have expired an
        entry while it was being delivered: dead-lettered and counted then)."""
        seqs = list(seqs)
        if not seqs:
            return set()
        return self._gone(await self._run(self._delete, [(action_id, seqs)]), False)

    async def settle_unconfigured(self) -> int:
        """Dead-letter the entries of actions found on disk that no
        `add_action` declared (removed from the configuration): nothing
        would ever deliver or expire them. Call once after declaring all."""
        n = 0
        for action_id in [aid for aid, a in self._actions.items()
                          if not a.configured and a.stats.count]:
            while batch := await self.peek(action_id, EXPIRE_CHUNK):
                why = f"action {action_id} is no longer configured"
                await self.dead_letters.write(
                    entries(((r, why) for _, r in batch), f"backlog:{action_id}"))
                n += len(self._gone(await self._run(
                    self._delete, [(action_id, [s for s, _ in batch])]), True))
        return n

    async def expire(self, now: float | None = None) -> list[tuple[Record, str]]:
        """Dead-letter every entry past a bound (age or scope size), oldest
        first; return them with their reasons. Call periodically."""
        return await self._expire(self.clock() if now is None else now, size_only=False)

    # -- internals: _open, _take_over, _insert, _select, _delete and _candidates
    #    run in the backlog thread (through _run); the others on the event loop

    def _action(self, action_id: str) -> _Action:
        a = self._actions.get(action_id)
        if a is None:
            a = self._actions[action_id] = _Action()
        return a

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _account(self, action_id: str, count: int, nbytes: int) -> None:
        a = self._action(action_id)
        a.stats.count += count
        a.stats.bytes += nbytes
        for g in a.groups:
            g.bytes += nbytes

    def _gone(self, gone: dict[str, dict[int, int]], expired: bool) -> set[int]:
        """Count out the rows `_delete` removed ({action: {seq: size}}); their seqs."""
        for action_id, sizes in gone.items():
            self._account(action_id, -len(sizes), -sum(sizes.values()))
            if expired:
                self._actions[action_id].stats.expired += len(sizes)
        return {seq for sizes in gone.values() for seq in sizes}

    def _open(self) -> list[tuple[str, int, int]]:
        """Open the database; (action_id, count, bytes) of what it holds."""
        if not self.durable:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.executescript(SCHEMA)
            self._db = db
            return []
        # One process per database: `_next_seq` is kept in memory, and two
        # engines draining one backlog would send each other's entries. The
        # lock goes with the process (also on kill -9).
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BacklogInUse(f"backlog {self.path} is in use by another process (give each "
                               "worker its own worker.state_dir)") from None
        self._lock_fd = fd
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"{self.path}: cannot use WAL mode (got {mode})")
        db.execute("PRAGMA synchronous=FULL")  # see the module docstring
        db.executescript(SCHEMA)
        for other in self.adopt:
            self._take_over(db, other)
        rows = db.execute("SELECT action_id, count(*), sum(size) FROM backlog "
                          "GROUP BY action_id").fetchall()
        self._next_seq = (db.execute("SELECT max(seq) FROM backlog").fetchone()[0] or 0) + 1
        self._db = db
        return rows

    @staticmethod
    def _take_over(db: sqlite3.Connection, other: str) -> None:
        """Move the entries of the backlog database `other` behind this one's
        (their order kept), in one committed transaction, then delete
        `other`. A crash between the two leaves the entries in both, to be
        delivered twice rather than never. Skipped when a process holds it."""
        if not os.path.exists(other):
            return
        fd = os.open(other + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("backlog %s is in use by another process: not taken over", other)
                return
            try:
                db.execute("ATTACH DATABASE ? AS stranded", (other,))
                found = db.execute("SELECT 1 FROM stranded.sqlite_master WHERE type = "
                                   "'table' AND name = 'backlog'").fetchone()
            except sqlite3.DatabaseError as e:  # not a database: keep it, say which
                try:
                    db.execute("DETACH DATABASE stranded")
                except sqlite3.Error:
                    pass
                raise sqlite3.DatabaseError(f"cannot take over the backlog {other}: {e} "
                                            "(move it away to start without it)") from None
            try:
                moved = 0
                if found:
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        top = db.execute("SELECT coalesce(max(seq), 0) FROM main.backlog"
                                         ).fetchone()[0]
                        moved = db.execute(
                            "INSERT INTO main.backlog SELECT action_id, seq + ?, stored, size, "
                            "record FROM stranded.backlog", (top,)).rowcount
                        db.execute("COMMIT")
                    except BaseException:
                        db.execute("ROLLBACK")
                        raise
            finally:
                db.execute("DETACH DATABASE stranded")
            for suffix in ("", "-wal", "-shm", ".lock"):
                try:
                    os.unlink(other + suffix)
                except FileNotFoundError:
                    pass
            log.info("took over %d backlog entries from %s", moved, other)
        finally:
            os.close(fd)

    def _insert(self, action_id: str, records: Sequence[Record], now: float) -> int:
        """Commit the records; their size in bytes."""
        blobs = [_encode(r) for r in records]
        seq = self._next_seq
        rows = [(action_id, seq + i, now, len(b), b) for i, b in enumerate(blobs)]
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO backlog VALUES (?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._next_seq = seq + len(rows)
        return sum(map(len, blobs))

    def _select(self, action_id: str, limit: int) -> list[tuple[int, Record]]:
        rows = self._db.execute("SELECT seq, record FROM backlog WHERE action_id = ? "
                                "ORDER BY seq LIMIT ?", (action_id, limit)).fetchall()
        return [(seq, _decode(blob)) for seq, blob in rows]

    def _delete(self, batches: list[tuple[str, list[int]]]) -> dict[str, dict[int, int]]:
        """Delete (action_id, seqs) batches in one transaction; {action:
        {seq: size}} of the rows still present (an entry may be acked and expired
        concurrently)."""
        db = self._db
        gone: dict[str, dict[int, int]] = {}
        db.execute("BEGIN IMMEDIATE")
        try:
            for action_id, seqs in batches:
                sizes = gone.setdefault(action_id, {})
                for i in range(0, len(seqs), IN_CHUNK):
                    chunk = seqs[i:i + IN_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    sizes.update(db.execute(
                        f"DELETE FROM backlog WHERE action_id = ? AND seq IN ({marks}) "
                        "RETURNING seq, size", (action_id, *chunk)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return gone

    def _candidates(self, now: float, size_only: bool) -> list[tuple[str, int, bytes, str]]:
        """Up to EXPIRE_CHUNK oldest entries past a bound: (action_id, seq, record, reason)."""
        db = self._db
        found: dict[tuple[str, int], tuple[bytes, str]] = {}
        if not size_only:
            for action_id, a in list(self._actions.items()):  # the loop may add one
                if a.max_age is None or not a.stats.count:
                    continue
                cutoff = now - a.max_age
                reason = (f"expired: older than backlog_time {a.max_age:g} s "
                          f"of backlog policy {a.age_policy}")
                # `stored` grows with seq, so the rows to expire are a prefix:
                # read oldest-first and stop at the first young one (a filter
                # on `stored` would scan the whole action when none is old).
                for seq, stored, blob in db.execute(
                        "SELECT seq, stored, record FROM backlog WHERE action_id = ? "
                        "ORDER BY seq LIMIT ?", (action_id, EXPIRE_CHUNK - len(found))):
                    if stored >= cutoff:
                        break
                    found[action_id, seq] = (blob, reason)
                if len(found) >= EXPIRE_CHUNK:
                    break
        for g in self._groups.values():
            excess = g.bytes - g.limit - sum(
                len(blob) for (aid, _), (blob, _) in found.items() if aid in g.members)
            if excess <= 0 or len(found) >= EXPIRE_CHUNK:
                continue
            reason = (f"expired: backlog_size {g.limit} bytes of backlog policy "
                      f"{g.policy_id} reached (oldest entries go first)")
            if len(g.members) == 1:
                (only,) = g.members
                cursor = db.execute("SELECT action_id, seq, size, record FROM backlog "
                                    "WHERE action_id = ? ORDER BY seq", (only,))
            else:  # walk the seq index; skip other actions' rows
                cursor = db.execute("SELECT action_id, seq, size, record FROM backlog "
                                    "ORDER BY seq")
            for action_id, seq, size, blob in cursor:
                if action_id not in g.members or (action_id, seq) in found:
                    continue
                found[action_id, seq] = (blob, reason)
                excess -= size
                if excess <= 0 or len(found) >= EXPIRE_CHUNK:
                    break
            cursor.close()
        return [(aid, seq, blob, reason) for (aid, seq), (blob, reason) in found.items()]

    async def _expire(self, now: float, size_only: bool) -> list[tuple[Record, str]]:
        done: list[tuple[Record, str]] = []
        async with self._expiring:
            while True:
                rows = await self._run(self._candidates, now, size_only)
                if not rows:
                    return done
                by_action: dict[str, list[tuple[Record, str]]] = {}
                seqs: dict[str, list[int]] = {}
                for action_id, seq, blob, reason in rows:
                    by_action.setdefault(action_id, []).append((_decode(blob), reason))
                    seqs.setdefault(action_id, []).append(seq)
                # Durably set aside first, delete after: never in neither place.
                for action_id, items in by_action.items():
                    await self.dead_letters.write(entries(items, f"backlog:{action_id}"))
                    done += items
                self._gone(await self._run(self._delete, list(seqs.items())), True)
