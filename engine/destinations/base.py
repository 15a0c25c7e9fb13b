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
from typing import Any, ClassVar, NamedTuple

import orjson
from pydantic import BaseModel


class SinkError(Exception):
    """A destination cannot be used at all (bad configuration or credentials,
    missing queue/table/column). Permanent: retrying will not help."""


class Unavailable(Exception):
    """The destination cannot be reached now; retrying later may work."""


class Failure(NamedTuple):
    reason: str
    retryable: bool


@dataclass(slots=True)
class Record:
    """One rule output on its way to one action.

    `raw`, when set, is the exact JSON text of `payload`: the notification
    as it arrived, for a rule that forwards it whole (`SELECT *`). Sinks that
    send JSON send `json_bytes()`, so such outputs keep the input's numbers
    (also integers beyond 64 bits, which the decoded `payload` holds only
    approximately), key order and escapes, and are not re-encoded; sinks
    that need values (SQL columns, InfluxDB) read `payload`. Sinks never
    modify `payload`: one decoded notification may be shared by several
    records."""

    payload: dict[str, Any]          # the rule's projected output (a JSON object)
    key: str | None = None           # device id: ordering / partitioning key
    event_time: str | None = None    # notification event_time, e.g. 20151212T121212Z
    rule_id: str | None = None
    action_id: str | None = None
    raw: bytes | None = None         # the exact JSON of payload, when known

    def json_bytes(self) -> bytes:
        """The output as JSON: `raw` if known, else `payload` encoded."""
        raw = self.raw
        return raw if raw is not None else orjson.dumps(self.payload)

    def json_value(self) -> Any:
        """The output to embed in a larger document encoded with orjson
        (an envelope, a backlog entry): `raw` as is, else `payload`."""
        raw = self.raw
        return orjson.Fragment(raw) if raw is not None else self.payload


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
