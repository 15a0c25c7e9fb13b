"""Dead letters: what the engine could not use or deliver, with the reason.

One JSON line per item: {"time", "reason", "source", "payload"} plus
"rule_id"/"action_id" for records a destination refused. A malformed input's
payload is its raw text (it may not be JSON at all). Entries are fsync'd
before `write` returns, because the source batch is acked right after.

Without a dead-letter file the entries are only counted and logged (one line
per batch, not per item).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import orjson

from engine.destinations.jsonl_file import append_durably

log = logging.getLogger(__name__)


def raw_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class DeadLetters:
    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = asyncio.Lock()

    def open(self) -> None:
        if self.path is not None and self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def write(self, entries: list[dict[str, Any]]) -> None:
        """Store entries (each with at least reason, source, payload)."""
        if not entries:
            return
        if self._fd is None:
            log.warning("%d dead letter(s) dropped (no dead_letter configured), first: %s",
                        len(entries), entries[0]["reason"])
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        data = b"".join(orjson.dumps({"time": now, **e}, option=orjson.OPT_APPEND_NEWLINE)
                        for e in entries)
        delay = 0.1
        async with self._lock:
            while True:
                try:
                    await asyncio.to_thread(append_durably, self._fd, data)
                    return
                except OSError as e:
                    # The batch must not be acked before its dead letters are
                    # stored: wait for the disk rather than lose them.
                    log.error("cannot store %d dead letter(s) in %s: %s; retrying in %gs",
                              len(entries), self.path, e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
