"""Watching the rule files for changes (hot reload), by polling.

Every `interval` seconds each file is `stat`ed; when the size, mtime or inode
of one changed (an edit in place, or an editor's write-and-rename), the
watcher waits for the files to settle and then compares their content hash
with the last one seen: `touch` alone, or an edit that was undone, triggers
nothing. A file that disappears counts as a change (the reload will then
report it as unreadable and keep the running rules).

Settled means two samples one poll apart (`settle`, default `interval`)
found the same stat and the same content: a non-atomic writer (`cat new >
rules.yaml` truncates first, a slow copy writes in pieces, an editor saves
in place) is never read half-way unless it pauses longer than a poll. The
reload checks again that a file did not change while it was loaded
(`digests`), and the loader refuses what a writer that stopped for good
leaves (an empty file, a key cut off before its value).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence

log = logging.getLogger(__name__)

Stat = tuple[int, int, int] | None
STILL_CHANGING_LOG = 10.0  # seconds of unsettled files before saying so


def _stat(path: str) -> Stat:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _digest(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).digest()
    except OSError:
        return None


def digests(paths: Sequence[str]) -> list[bytes | None]:
    """The content hash of each file (None: unreadable). Blocking: call in a thread."""
    return [_digest(p) for p in paths]


class ConfigWatcher:
    def __init__(self, paths: Sequence[str], *, interval: float = 1.0,
                 settle: float | None = None) -> None:
        self.paths = list(paths)
        self.interval = interval
        self.settle = interval if settle is None else settle
        self._stats: list[Stat] = [None] * len(self.paths)
        self._digests: list[bytes | None] = [None] * len(self.paths)

    async def prime(self) -> None:
        """Take the current state as the baseline."""
        self._stats, self._digests = await self._sample()

    async def _sample(self) -> tuple[list[Stat], list[bytes | None]]:
        return [_stat(p) for p in self.paths], await asyncio.to_thread(digests, self.paths)

    async def changes(self) -> AsyncIterator[list[str]]:
        """Yield the files whose content changed, once they have settled."""
        while True:
            await asyncio.sleep(self.interval)
            if [_stat(p) for p in self.paths] == self._stats:
                continue
            sample = await self._sample()
            since = time.monotonic()
            logged = False
            while True:  # until two samples a poll apart agree: the writer is done
                await asyncio.sleep(self.settle)
                again = await self._sample()
                if again == sample:
                    break
                sample = again
                if not logged and time.monotonic() - since > STILL_CHANGING_LOG:
                    log.info("%s still changing; reloading once it settles",
                             ", ".join(self.paths))
                    logged = True
            self._stats, new = sample
            changed = [p for p, old, d in zip(self.paths, self._digests, new, strict=True)
                       if old != d]
            self._digests = new
            if changed:
                yield changed
