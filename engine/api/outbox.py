"""The registry's notifications as a source: `device`/`create|update|delete`
and `product`/`create|update|delete`, from the API store's outbox.

`engine.api.devices` writes each change's notification into the store
(kind `registry_events`) in the same transaction as the change. This source
hands them to the worker's rules and deletes them once the pipeline acked
them (delivered, backlogged or dead-lettered): at-least-once, and nothing
is lost when the worker stops between the change and the delivery — the
next worker to start picks the notification up.

Several workers may share one store (PostgreSQL): a worker first claims
entries (writes its owner id and a lease into them, under the project's
write lock), so each notification goes through one worker's rules; a claim
whose worker died expires after `lease` seconds and is taken again
(delivered twice at worst, never lost). New entries are noticed from the
store's change events, and by polling every `poll` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from engine.api.storage import EVENTS, ChangeEvent, Delete, Op, Put, Store, Stored
from engine.sources.base import Batch, Source

log = logging.getLogger(__name__)


class RegistryEvents(Source):
    kind = "registry_events"

    def __init__(self, store: Store, *, batch_size: int = 100, lease: float = 60.0,
                 poll: float = 1.0, owner: str | None = None) -> None:
        super().__init__("registry_events")
        self.store = store
        self.batch_size = batch_size
        self.lease = lease
        self.poll = poll
        self.owner = owner or uuid.uuid4().hex
        self._wake = asyncio.Event()
        self._stopped = False

    def _changed(self, event: ChangeEvent) -> None:
        if event.kind == EVENTS and event.op == "put":
            self._wake.set()

    async def batches(self) -> AsyncIterator[Batch]:
        unsubscribe = self.store.subscribe(self._changed)
        try:
            while not self._stopped:
                self._wake.clear()
                claimed = await self._claim()
                for project, entries in claimed.items():
                    items = [orjson.dumps(e.body["notification"]) for e in entries]
                    yield Batch(items, ack=self._acker(project, [e.id for e in entries]))
                if not claimed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll)
        finally:
            unsubscribe()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    async def _claim(self) -> dict[str, list[Stored]]:
        """Claim up to `batch_size` unclaimed (or expired) entries, oldest
        first, per project."""
        out: dict[str, list[Stored]] = {}
        left = self.batch_size
        try:
            projects = await self.store.projects()
        except Exception as e:  # the store unreachable: try again at the next poll
            log.warning("registry notifications: cannot read the API store: %s: %s",
                        type(e).__name__, e)
            return out
        for project in projects:
            if left <= 0:
                break
            now = time.time()
            want = left

            def plan(records: list[Stored], now: float = now, want: int = want) -> list[Op]:
                free = [r for r in records if r.kind == EVENTS
                        and (r.body.get("claim") is None or r.body["claim"]["until"] < now)]
                claim = {"owner": self.owner, "until": now + self.lease}
                return [Put(EVENTS, r.id, {**r.body, "claim": claim}) for r in free[:want]]

            try:
                written = await self.store.change(project, plan)
            except Exception as e:
                log.warning("registry notifications: cannot claim in project %s: %s: %s",
                            project, type(e).__name__, e)
                continue
            if written:
                out[project] = sorted(written, key=lambda r: r.seq)
                left -= len(written)
        return out

    def _acker(self, project: str, ids: list[str]) -> Any:
        async def ack() -> None:
            wanted = set(ids)

            def plan(records: list[Stored]) -> list[Op]:
                return [Delete(EVENTS, r.id) for r in records
                        if r.kind == EVENTS and r.id in wanted]

            # A failure here leaves the entries claimed: they come again once
            # the lease expired (delivered twice, never lost).
            try:
                await self.store.change(project, plan)
            except Exception as e:
                log.warning("registry notifications: cannot remove %d delivered entries of "
                            "project %s: %s: %s", len(ids), project, type(e).__name__, e)
        return ack
