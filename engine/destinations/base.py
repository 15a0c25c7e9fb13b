"""The contract every destination implements.

A destination (sink) receives batches of rule outputs and either delivers the
whole batch or says, per item, what failed and whether retrying can help.
Batching, retries, backlog and flow control live above this interface (in the
runtime and policies); a sink only talks to its server.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

from pydantic import BaseModel

from engine import _core


class SinkError(Exception):
    """A destination cannot be used at all (bad configuration or credentials,
    missing queue/table/column). Permanent: retrying will not help."""


class Unavailable(Exception):
    """The destination cannot be reached now; retrying later may work."""


class Failure(NamedTuple):
    reason: str
    retryable: bool


# One rule output on its way to one action: Record(payload, key=None,
# event_time=None, rule_id=None, action_id=None, raw=None), with
# json_bytes() / json_value(). Defined in the core (a C class: the runtime
# makes one per output and action); its docstring has the contract.
Record = _core.Record

@dataclass(slots=True)
class WriteResult:
    """Outcome of one `Sink.write`: an empty `failures` means every item was
    acknowledged by the destination."""

    failures: dict[int, Failure] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    @classmethod
    def all_failed(cls, n: int, reason: str, retryable: bool) -> WriteResult:
        f = Failure(reason, retryable)
        return cls({i: f for i in range(n)})


class Sink(abc.ABC):
    """Base class of every destination. Subclasses set the class attributes
    and implement `open`, `write` and `close`."""

    channel: ClassVar[str]               # IoTDA channel name, e.g. "HTTP_FORWARDING"
    detail_key: ClassVar[str]            # key inside channel_detail, e.g. "http_forwarding"
    Config: ClassVar[type[BaseModel]]    # the channel_detail model (IoTDA field names)
    # How many write() calls the action runner may have under way at once.
    # More than 1 only for a sink that puts concurrent writes on the wire in
    # the order they were called (per key), so that a device's records stay
    # in order while the next write is built during the previous one's round
    # trip.
    writes_in_flight: ClassVar[int] = 1

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect and check the destination; raise SinkError if unusable."""

    @abc.abstractmethod
    async def write(self, records: Sequence[Record]) -> WriteResult:
        """Deliver a batch. Never raises for delivery problems: report them in
        the result (a destination error is never counted as success)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; pending writes have completed."""

    async def _connect(self) -> None:  # noqa: B027 - optional hook
        """(Re)connect if needed; raise SinkError (permanent) or Unavailable."""

    async def _connect_or_fail(self, n: int) -> WriteResult | None:
        """Connect before a write of n items; when that fails, the result that
        fails all of them (retryable unless the destination is unusable)."""
        try:
            await self._connect()
        except SinkError as e:
            return WriteResult.all_failed(n, str(e), False)
        except Unavailable as e:
            return WriteResult.all_failed(n, str(e), True)
        return None
