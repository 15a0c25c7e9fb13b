"""One step of draining an action's backlog into its destination, with flow
control, backoff/probing and dead letters - the policies put together, so
the action runner's backlog loop can be:

    backoff = Backoff(RetryPolicy())
    while backlog.size(action_id)[0]:
        step = await drain_step(backlog, action_id, sink, limiter=limiter,
                                backoff=backoff, dead_letters=dead_letters)
        if step.wait:
            await asyncio.sleep(step.wait)

A step takes as many of the oldest entries as the batch size, the flow
limiter (waiting for it if need be) and the backoff state allow (one small probe batch while the
destination is considered down), writes them, acks what was delivered,
dead-letters permanent failures (durably, then acks them) and leaves
retryable failures in the backlog, where the next step finds them first.

Order: entries go out oldest first. A batch that partly fails retryably
lets a device's later records that succeeded overtake its failed earlier
ones (the sink reports per record, the write already happened); the next
step sends the failed ones before anything newer.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.destinations.base import Sink
from engine.policies.backlog import Backlog
from engine.policies.deadletters import DeadLetterWriter, entry
from engine.policies.flowcontrol import Limiter
from engine.policies.outcome import write_sorted
from engine.policies.retry import Backoff


@dataclass(slots=True)
class Step:
    delivered: int = 0
    dead_lettered: int = 0
    failed: int = 0         # retryable failures, still in the backlog
    wait: float = 0.0       # seconds to wait before the next step (backoff)
    reason: str | None = None  # first failure reason, for the runner's log


async def drain_step(backlog: Backlog, action_id: str, sink: Sink, *, limiter: Limiter,
                     backoff: Backoff, dead_letters: DeadLetterWriter,
                     batch_size: int = 500) -> Step:
    want = min(backoff.batch_size(batch_size), backlog.size(action_id)[0])
    if want <= 0:
        return Step()
    k = await limiter.acquire(want)  # waits while flow control holds records back
    batch = await backlog.peek(action_id, k)
    records = [r for _, r in batch]
    outcome = await write_sorted(sink, records)
    if outcome.dead:
        await dead_letters.write([entry(records[i], outcome.failures[i].reason,
                                        f"action:{action_id}") for i in outcome.dead])
    kept = set(outcome.retry)
    removed = await backlog.ack(action_id,
                                [seq for i, (seq, _) in enumerate(batch) if i not in kept])
    # An entry a bound expired while it was written is dead-lettered and
    # counted already: counted here only if this ack removed it.
    dead = sum(1 for i in outcome.dead if batch[i][0] in removed)
    step = Step(delivered=len(removed) - dead, dead_lettered=dead,
                failed=len(outcome.retry), reason=outcome.reason)
    if step.failed:
        step.wait = backoff.failure()
    else:
        backoff.success()
    return step
