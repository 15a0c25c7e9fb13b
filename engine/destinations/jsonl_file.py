"""FILE_FORWARDING (an engine extension, not an IoTDA channel): append each
rule output as one JSON line to a local file.

A write succeeds only once its lines are flushed and fsync'd, so a record
acknowledged here survives a crash of the engine or the machine. The file
work runs in a thread: an fsync must not stall the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Sequence

import orjson
from pydantic import Field

from engine.destinations.base import Record, Sink, SinkError, WriteResult
from engine.destinations.common import _Model
from engine.destinations.registry import register

# Errors that a later attempt may not hit (space freed, device back);
# everything else (permissions, a directory in the way) needs a human.
_TRANSIENT = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EINTR}


class FileForwarding(_Model):
    path: str = Field(min_length=1)
    """The JSONL file to append to (created if missing; its directory must exist)."""
    include_metadata: bool = False
    """Write {"rule_id", "action_id", "key", "event_time", "payload"} per
    line instead of the bare rule output."""


@register
class JsonlFileSink(Sink):
    channel = "FILE_FORWARDING"
    detail_key = "file_forwarding"
    Config = FileForwarding
    config: FileForwarding

    def __init__(self, config: FileForwarding) -> None:
        super().__init__(config)
        self._fd: int | None = None
        self._lock = asyncio.Lock()  # one write at a time: lines of a batch stay together

    async def open(self) -> None:
        if self._fd is not None:
            return
        try:
            self._fd = os.open(self.config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise SinkError(f"cannot open {self.config.path} for appending: {e.strerror}") from e

    async def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _encode(self, records: Sequence[Record]) -> bytes:
        if not self.config.include_metadata:
            lines = [r.json_bytes() for r in records]
            lines.append(b"")
            return b"\n".join(lines)
        # Appended one by one, so each orjson result is freed before the next
        # is made (kept in a list, each costs a fresh malloc chunk: see
        # Record.json_bytes).
        out = bytearray()
        dumps = orjson.dumps
        for r in records:
            out += dumps({"rule_id": r.rule_id, "action_id": r.action_id, "key": r.key,
                          "event_time": r.event_time, "payload": r.json_value()})
            out += b"\n"
        return bytes(out)

    async def write(self, records: Sequence[Record]) -> WriteResult:
        if not records:
            return WriteResult()
        try:
            data = self._encode(records)
        except TypeError as e:  # not JSON-serialisable: no retry will change that
            return WriteResult.all_failed(len(records), f"cannot encode as JSON: {e}", False)
        await self.open()
        assert self._fd is not None
        async with self._lock:
            try:
                await asyncio.to_thread(append_durably, self._fd, data)
            except OSError as e:
                return WriteResult.all_failed(
                    len(records), f"writing {self.config.path}: {e.strerror or e}",
                    e.errno in _TRANSIENT)
        return WriteResult()


def append_durably(fd: int, data: bytes) -> None:
    """Append `data` to `fd` (opened O_APPEND) and fsync; on failure cut the
    file back to where it was."""
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except OSError:
        # Cut a partly written batch off again: the retry appends it whole,
        # and the file never holds half a line.
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass
        raise
