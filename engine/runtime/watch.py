"""Watching the rule files for changes (hot reload), by polling.

Every `interval` seconds each file is `stat`ed; when the size, mtime or inode
of one changed (an edit in place, or an editor's write-and-rename), the
files are read again after a short settling pause and their content hash
compared with the last one seen: `touch` alone, or an edit that was undone,
triggers nothing. A file that disappears counts as a change (the reload will
then report it as unreadable and keep the running rules).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Sequence

Stat = tuple[int, int, int] | None


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


class ConfigWatcher:
    def __init__(self, paths: Sequence[str], *, interval: float = 1.0,
                 settle: float = 0.2) -> None:
        self.paths = list(paths)
        self.interval = interval
        self.settle = settle
        self._stats: list[Stat] = [None] * len(self.paths)
        self._digests: list[bytes | None] = [None] * len(self.paths)

    async def prime(self) -> None:
        """Take the current state as the baseline."""
        self._stats = [_stat(p) for p in self.paths]
        self._digests = await asyncio.to_thread(lambda: [_digest(p) for p in self.paths])

    async def changes(self) -> AsyncIterator[list[str]]:
        """Yield the files whose content changed, as they change."""
        while True:
            await asyncio.sleep(self.interval)
            stats = [_stat(p) for p in self.paths]
            if stats == self._stats:
                continue
            # Let a writer finish (several writes, or write + rename) first.
            await asyncio.sleep(self.settle)
            self._stats = [_stat(p) for p in self.paths]
            digests = await asyncio.to_thread(lambda: [_digest(p) for p in self.paths])
            changed = [p for p, old, new in zip(self.paths, self._digests, digests, strict=True)
                       if old != new]
            self._digests = digests
            if changed:
                yield changed
