"""The contract every source implements.

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
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from engine.schema import StrictModel

if TYPE_CHECKING:
    from engine.sources.device_registry import Registry


async def _no_ack() -> None:
    return None


@dataclass(slots=True)
class Batch:
    items: list[bytes]
    ack: Callable[[], Awaitable[None]] = _no_ack
    # Monotonic receipt time: the start of the receipt -> sink-ack latency.
    received_at: float = field(default_factory=time.monotonic)


class DeadLetterWriter(Protocol):
    """Where a source puts input it rejects itself (the worker's dead-letter
    store: `engine.runtime.deadletter.DeadLetters`)."""

    async def write(self, entries: list[dict[str, Any]]) -> None: ...


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What the worker lends the sources it builds, beyond their options
    (`from_options(..., context=)`): the device registry (`registry:`; the
    sources of device traffic fill notification headers from it) and the
    dead-letter store (for sources that reject input before it becomes a
    notification; the entries are stored before the input is acked)."""

    registry: Registry | None = None
    dead_letters: DeadLetterWriter | None = None


class SourceOptions(StrictModel):
    """Base of a source's options model: the object under its kind in a
    `sources:` item (unknown keys are refused, values never echoed)."""


class Source(abc.ABC):
    """One input. `batches()` yields until `stop()` is called (or the input
    ends, for finite sources); `close()` releases connections after the
    pipeline drained the acks.

    A registered source (`engine.sources.register`) also sets `kind` (its key
    in a `sources:` item) and `Options` (the model of what is under that key),
    and builds itself from validated options in `from_options`."""

    kind: ClassVar[str] = "source"
    Options: ClassVar[type[SourceOptions]] = SourceOptions

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.kind

    @classmethod
    def from_options(cls, options: Any, *, batch_size: int, metrics: Any = None,
                     context: SourceContext | None = None) -> Source:
        """The source a `sources:` item describes; `batch_size` is the
        worker's (`worker.batch_size`), for sources without their own;
        `metrics` the worker's `Metrics` (for sources that count refusals);
        `context` what else the worker lends (registry, dead letters)."""
        raise NotImplementedError(f"source {cls.kind!r} cannot be configured from a rule file")

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
