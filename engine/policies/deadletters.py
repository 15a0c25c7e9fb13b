"""Dead letters as the policies layer sees them: the entry shape and the
writer contract. The stores themselves (JSONL file with fsync, Kafka topic
with acks=all, AMQP queue with persistent messages and publisher confirms)
already exist in `engine.runtime.deadletter` (`dead_letters_from_config`
builds one from a `DeadLetterConfig`); the backlog uses any of them through
the `DeadLetterWriter` protocol below, so this module imports nothing from
the runtime and the runtime can import the policies without a cycle.

Entry shape (what `engine.runtime.actions.ActionRunner` already writes; the
store adds "time", an ISO-8601 UTC string, when it writes):

    {"reason": str, "source": "action:<id>" | "backlog:<id>" | <source name>,
     "rule_id": str | None, "action_id": str | None, "key": str | None,
     "payload": <the rule output>}

Durability contract: `await writer.write(entries)` returns only once the
entries are stored durably, and keeps retrying while the store fails. The
backlog deletes an expired entry only after that returns, so an entry is
always either in the backlog or in the dead letters (possibly briefly in
both after a crash: at-least-once, never zero).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from engine.destinations.base import Record


class DeadLetterWriter(Protocol):
    async def write(self, entries: list[dict[str, Any]]) -> None:
        """Store entries durably; return only once they are stored."""
        ...


def entry(record: Record, reason: str, source: str) -> dict[str, Any]:
    return {"reason": reason, "source": source, "rule_id": record.rule_id,
            "action_id": record.action_id, "key": record.key, "payload": record.payload}


def entries(items: Iterable[tuple[Record, str]], source: str) -> list[dict[str, Any]]:
    """Entries for (record, reason) pairs, all from one source."""
    return [entry(r, reason, source) for r, reason in items]
