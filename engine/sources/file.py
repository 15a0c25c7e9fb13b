"""NDJSON replay from a file or stdin (`-`): one notification per line.

Reading happens in a worker thread (a pipe or a slow disk must not block the
event loop), a batch's worth of lines at a time. There is nothing to
acknowledge: a replay that is interrupted is simply run again.
"""

from __future__ import annotations

import asyncio
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
            while not self._stopped:
                lines = await loop.run_in_executor(None, _read_lines, f, self.batch_size)
                if not lines:
                    break
                self.bytes_read += sum(map(len, lines))
                # Blank lines are separators, not malformed events.
                items = [s for s in map(bytes.strip, lines) if s]
                if items:
                    yield Batch(items)
        finally:
            if f is not sys.stdin.buffer:
                f.close()


def _read_lines(f: BinaryIO, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        line = f.readline()
        if not line:
            break
        out.append(line)
    return out
