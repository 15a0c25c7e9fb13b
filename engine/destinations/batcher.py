"""Group records into batches for one sink: by count, by bytes and by time,
with a bound on the batches being written at once.

    batcher = Batcher(sink, on_result, max_count=1000, max_linger_s=0.05)
    await batcher.add(record)      # waits while the in-flight window is full
    ...
    await batcher.close()          # flushes, then waits for every write

`on_result(batch, result)` is called once per batch with the sink's
WriteResult (indices are positions in `batch`). Retrying is the caller's
business: the batcher only groups and bounds. Batches start in order but with
max_in_flight > 1 they are written concurrently; use max_in_flight=1 where
the order across batches matters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson

from engine.destinations.base import Record, Sink, WriteResult

OnResult = Callable[[list[Record], WriteResult], Awaitable[None] | None]


def payload_size(record: Record) -> int:
    return len(orjson.dumps(record.payload))


class Batcher:
    def __init__(
        self,
        sink: Sink,
        on_result: OnResult,
        *,
        max_count: int = 1000,
        max_bytes: int = 1 << 20,
        max_linger_s: float = 0.05,
        max_in_flight: int = 4,
        size_of: Callable[[Record], int] = payload_size,
    ) -> None:
        if max_count < 1 or max_bytes < 1 or max_in_flight < 1 or max_linger_s < 0:
            raise ValueError("batch limits must be positive")
        self.sink = sink
        self.on_result = on_result
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.max_linger_s = max_linger_s
        self.size_of = size_of
        self._buf: list[Record] = []
        self._bytes = 0
        self._window = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    async def add(self, record: Record) -> None:
        """Queue one record; sends the batch when it is full. Waits (back
        pressure) while `max_in_flight` batches are being written."""
        if self._closed:
            raise RuntimeError("batcher is closed")
        size = self.size_of(record)
        # A record that would push the batch over max_bytes starts a new batch
        # (a single oversized record still goes, alone).
        if self._buf and self._bytes + size > self.max_bytes:
            await self.flush()
        self._buf.append(record)
        self._bytes += size
        if len(self._buf) >= self.max_count or self._bytes >= self.max_bytes:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_linger_s, self._linger)

    def _linger(self) -> None:
        self._timer = None
        if self._buf:
            task = asyncio.get_running_loop().create_task(self.flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Send what is buffered now (waits for a free slot in the window)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buf:
            return
        batch, self._buf, self._bytes = self._buf, [], 0
        await self._window.acquire()
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[Record]) -> None:
        try:
            try:
                result = await self.sink.write(batch)
            except Exception as e:  # the contract says write does not raise; be safe
                result = WriteResult.all_failed(len(batch), f"sink raised {type(e).__name__}: {e}", True)
            out = self.on_result(batch, result)
            if out is not None:
                await out
        finally:
            self._window.release()

    async def drain(self) -> None:
        """Flush and wait until every batch written so far has its result."""
        await self.flush()
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def close(self) -> None:
        self._closed = True
        await self.drain()

    def abort(self) -> None:
        """Drop buffered records and cancel writes (shutdown without waiting)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._buf.clear()
        for t in list(self._tasks):
            t.cancel()
