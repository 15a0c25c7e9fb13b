"""Per-rule counters for `GET .../rules/{rule_id}/metrics`: the interface a
worker implements to show them through the API.

The API does not run rules; a worker does. A worker that wants its counters
visible passes an object with `rule_metrics` to `create_app(metrics=...)`
(or sets `app[METRICS_PROVIDER]`). Without one, the endpoint answers zeros
with `"worker_attached": false`, so clients need no special case.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ActionCounters:
    """Balances like the worker's Prometheus counters:
    matched = forwarded + backlogged + dead_lettered + inflight."""

    matched: int = 0  # rule outputs handed to the action
    forwarded: int = 0  # acknowledged by the destination
    failed: int = 0  # failed write attempts (retried or dead-lettered)
    backlogged: int = 0
    dead_lettered: int = 0
    inflight: int = 0


@dataclass(frozen=True)
class RuleCounters:
    evaluated: int = 0  # well-formed events the rule was evaluated on
    matched: int = 0
    failed: int = 0  # evaluations that raised (e.g. a type error at run time)
    actions: dict[str, ActionCounters] = field(default_factory=dict)


class MetricsProvider(Protocol):
    def rule_metrics(self, project: str, rule_id: str) -> RuleCounters | None:
        """Counters of a rule since the worker started, or None if the
        worker does not run that rule (yet)."""
        ...


def metrics_body(rule_id: str, action_ids: list[str], counters: RuleCounters | None,
                 attached: bool) -> dict[str, Any]:
    """The response: the rule's counters and one entry per stored action
    (zeros for those the worker has not reported)."""
    counters = counters or RuleCounters()
    return {
        "rule_id": rule_id,
        "worker_attached": attached,
        "evaluated": counters.evaluated,
        "matched": counters.matched,
        "failed": counters.failed,
        "actions": [
            {"action_id": action_id, **asdict(counters.actions.get(action_id, ActionCounters()))}
            for action_id in action_ids
        ],
    }
