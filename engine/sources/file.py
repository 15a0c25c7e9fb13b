"""NDJSON replay from a file or stdin (`-`): one notification per line.

Reading happens in a worker thread (a pipe or a slow disk must not block the
event loop), a batch's worth of lines at a time. There is nothing to
acknowledge: a replay that is interrupted is simply run again.

Divided between N workers (`engine run --workers N`, which sets `part`),
worker i reads the lines that start in bytes [i*size/N, (i+1)*size/N) of
the file, found by skipping to the next newline at both ends, so every
line is read by exactly one worker and no worker reads what it skips.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any, BinaryIO

from pydantic import Field

from engine.sources.base import Batch, Source, SourceContext, SourceOptions
from engine.sources.registry import register


class FileOptions(SourceOptions):
    """Read notifications from an NDJSON file; `-` reads standard input."""

    path: str = Field(min_length=1)


@register
class FileSource(Source):
    kind = "file"
    Options = FileOptions

    def __init__(self, path: str, *, batch_size: int = 1000, name: str | None = None) -> None:
        super().__init__(name)
        self.path = path
        self.batch_size = batch_size
        self._stopped = False
        self.bytes_read = 0  # progress for `engine replay`
        # (i, n): read the i-th of n parts of the file (see the module's doc).
        self.part: tuple[int, int] | None = None

    @classmethod
    def from_options(cls, options: FileOptions, *, batch_size: int,
                     metrics: Any = None, context: SourceContext | None = None) -> FileSource:
        return cls(options.path, batch_size=batch_size)

    def stop(self) -> None:
        self._stopped = True

    async def batches(self) -> AsyncIterator[Batch]:
        f: BinaryIO = sys.stdin.buffer if self.path == "-" else open(self.path, "rb")  # noqa: SIM115
        try:
            loop = asyncio.get_running_loop()
            left = sys.maxsize  # bytes of this part still to read (the whole file: no limit)
            if self.part is not None and f is not sys.stdin.buffer:
                left = await loop.run_in_executor(None, _seek_part, f, *self.part)
            while not self._stopped and left > 0:
                lines = await loop.run_in_executor(None, _read_lines, f, self.batch_size, left)
                if not lines:
                    break
                n = sum(map(len, lines))
                self.bytes_read += n
                left -= n
                # Blank lines are separators, not malformed events.
                items = [s for s in map(bytes.strip, lines) if s]
                if items:
                    yield Batch(items)
        finally:
            if f is not sys.stdin.buffer:
                f.close()


def _read_lines(f: BinaryIO, n: int, left: int) -> list[bytes]:
    """Up to n lines, those that start within the next `left` bytes (a part
    ends at the start of a line, so they end there too)."""
    out: list[bytes] = []
    while len(out) < n and left > 0:
        line = f.readline()
        if not line:
            break
        out.append(line)
        left -= len(line)
    return out


def _seek_part(f: BinaryIO, index: int, count: int) -> int:
    """Seek to the start of part `index` of `count`; its length in bytes.
    Both ends are a line's start (or the end of the file)."""
    size = os.fstat(f.fileno()).st_size

    def line_start(offset: int) -> int:
        """The first line start at or after `offset`."""
        if offset <= 0:
            return 0
        if offset >= size:
            return size
        f.seek(offset - 1)  # a line starting exactly at offset follows a newline
        return offset - 1 + len(f.readline())

    start, end = line_start(size * index // count), line_start(size * (index + 1) // count)
    f.seek(start)
    return end - start
