"""One write to a sink, sorted: the one place where a sink's answer becomes
records delivered, permanent failures (to the dead letters) and retryable
failures (to be tried again, from the backlog or in place). The action
runner's direct writes and the backlog drain (`drain`) both use it.

    outcome = await write_sorted(sink, records)
    outcome.delivered        # how many the destination acknowledged
    outcome.dead             # positions of permanent failures, in order
    outcome.retry            # positions of retryable failures, in order
    outcome.reason           # the first failure's reason (None: all delivered)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.destinations.base import Failure, Record, Sink, WriteResult


@dataclass(slots=True)
class Outcome:
    delivered: int
    dead: list[int]
    retry: list[int]
    failures: dict[int, Failure]

    @property
    def reason(self) -> str | None:
        return next(iter(self.failures.values())).reason if self.failures else None


async def write_sorted(sink: Sink, records: Sequence[Record]) -> Outcome:
    try:
        result = await sink.write(records)
    except Exception as e:  # the Sink contract says write never raises; be safe
        result = WriteResult.all_failed(len(records), f"sink raised {type(e).__name__}: {e}",
                                        True)
    failures = result.failures
    if not failures:
        return Outcome(len(records), [], [], failures)
    order = sorted(failures)
    return Outcome(len(records) - len(failures), [i for i in order if not failures[i].retryable],
                   [i for i in order if failures[i].retryable], failures)
