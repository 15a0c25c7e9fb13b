"""Sources: where notifications come from.

Every source is an async iterator of `Batch`es of raw JSON notifications
(bytes, not decoded: the rule set decodes them, and may skip decoding via its
pre-filter). A batch carries its own `ack`: the pipeline calls it exactly once,
only after every match of the batch was delivered or durably handed off, and
calls the acks of one source in the order the batches were produced — so a
source may commit "everything up to here" (Kafka offsets, AMQP multiple-ack).
A batch that is never acked (crash, shutdown timeout) is redelivered by the
server: at-least-once.
"""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field


async def _no_ack() -> None:
    return None


@dataclass(slots=True)
class Batch:
    items: list[bytes]
    ack: Callable[[], Awaitable[None]] = _no_ack
    # Monotonic receipt time: the start of the receipt -> sink-ack latency.
    received_at: float = field(default_factory=time.monotonic)


class Source(abc.ABC):
    """One input. `batches()` yields until `stop()` is called (or the input
    ends, for finite sources); `close()` releases connections after the
    pipeline drained the acks."""

    kind: str = "source"

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.kind

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect / bind. Raise if the source cannot be used at all."""

    @abc.abstractmethod
    def batches(self) -> AsyncIterator[Batch]:
        """Yield batches until stopped or exhausted."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop intake: `batches()` ends soon; acks still work afterwards."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (after the last ack)."""
