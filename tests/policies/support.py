"""Helpers shared by the policies tests."""

from __future__ import annotations

from typing import Any

from engine.config import BacklogPolicy
from engine.destinations.base import Record


class Clock:
    """A settable clock for expiry and flow-control tests."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryDeadLetters:
    """A DeadLetterWriter that keeps the entries (and counts the writes)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.writes = 0

    async def write(self, entries: list[dict[str, Any]]) -> None:
        self.writes += 1
        self.entries += entries


def records(n: int, *, devices: int = 3, action_id: str = "a1", rule_id: str = "r1",
            start: int = 0, pad: int = 0) -> list[Record]:
    """n records round-robin over `devices` devices, payload {"i": index, "pad": ...};
    all the same encoded size (for i < 10**6), which keeps size bounds easy to test."""
    return [Record({"i": i, "pad": "x" * (pad + 6 - len(str(i)))}, key=f"dev-{i % devices}",
                   event_time="20240101T000000Z", rule_id=rule_id, action_id=action_id)
            for i in range(start, start + n)]


def policy(pid: str = "p", scope: str = "USER", value: str | None = None,
           size: int = 1073741823, time: int = 86399) -> BacklogPolicy:
    return BacklogPolicy(policy_id=pid, scope=scope, scope_value=value, backlog_size=size,
                         backlog_time=time)
