"""drain_step: backlog -> sink with flow control, backoff/probing and dead letters."""

from __future__ import annotations

import time

from engine.config import FlowControlPolicy
from engine.destinations.base import Failure, Sink, WriteResult
from engine.policies.backlog import Backlog
from engine.policies.drain import drain_step
from engine.policies.flowcontrol import FlowControl
from engine.policies.retry import Backoff, RetryPolicy
from tests.policies.support import records

HTTP = "HTTP_FORWARDING"


class ScriptedSink(Sink):
    """Fails the first `down` writes (retryably), refuses payloads with
    "bad" permanently, fails record index `flaky` once; records what it got."""

    channel = HTTP

    def __init__(self, down: int = 0) -> None:
        self.down = down
        self.writes: list[int] = []      # batch sizes
        self.delivered: list[dict] = []

    async def write(self, recs):
        self.writes.append(len(recs))
        if self.down:
            self.down -= 1
            return WriteResult.all_failed(len(recs), "HTTP 503", True)
        failures = {i: Failure("HTTP 400: bad", False) for i, r in enumerate(recs)
                    if r.payload.get("bad")}
        self.delivered += [r.payload for i, r in enumerate(recs) if i not in failures]
        return WriteResult(failures)


async def backlog_with(tmp_path, dead, recs):
    b = Backlog(str(tmp_path / "b.db"), dead)
    b.add_action("a1", "r1", HTTP)
    await b.open()
    await b.append("a1", recs)
    return b


async def test_down_destination_is_probed_then_drained_in_order(tmp_path, dead):
    recs = records(1200, devices=5)
    b = await backlog_with(tmp_path, dead, recs)
    sink = ScriptedSink(down=6)
    backoff = Backoff(RetryPolicy(initial=0.001, cap=0.002, probe_after=3, probe_interval=0.001,
                                  probe_batch=1))
    unlimited = FlowControl().limiter_for("r1", "a1", HTTP)
    try:
        steps = []
        while b.size("a1")[0]:
            steps.append(await drain_step(b, "a1", sink, limiter=unlimited, backoff=backoff,
                                          dead_letters=dead, batch_size=500))
        # 3 full batches fail, then single-record probes until the server is back,
        # then full batches again.
        assert sink.writes[:6] == [500, 500, 500, 1, 1, 1]
        assert sink.writes[6] == 1 and sink.writes[7:] == [500, 500, 199]
        assert [s.failed for s in steps[:6]] == [500, 500, 500, 1, 1, 1]
        assert all(s.wait > 0 for s in steps[:6]) and steps[-1].wait == 0
        assert steps[0].reason == "HTTP 503"
        assert sink.delivered == [r.payload for r in recs]
        assert dead.entries == []
    finally:
        await b.close()


async def test_permanent_failures_are_dead_lettered_and_acked(tmp_path, dead):
    recs = records(10)
    for i in (2, 7):
        recs[i].payload["bad"] = True
    b = await backlog_with(tmp_path, dead, recs)
    try:
        step = await drain_step(b, "a1", ScriptedSink(), limiter=FlowControl().limiter_for(
            "r1", "a1", HTTP), backoff=Backoff(), dead_letters=dead)
        assert (step.delivered, step.dead_lettered, step.failed, step.wait) == (8, 2, 0, 0.0)
        assert [(e["reason"], e["source"], e["payload"]["i"]) for e in dead.entries] == [
            ("HTTP 400: bad", "action:a1", 2), ("HTTP 400: bad", "action:a1", 7)]
        assert b.size("a1") == (0, 0)
    finally:
        await b.close()


async def test_drain_respects_the_flow_limit(tmp_path, dead):
    """400 records through a 200 TPS policy: the first 20 are the burst, the
    other 380 take about 1.9 s; bounded well under the per-test timeout."""
    b = await backlog_with(tmp_path, dead, records(400))
    limiter = FlowControl([FlowControlPolicy(policy_id="p", limit=200)]).limiter_for(
        "r1", "a1", HTTP)
    sink = ScriptedSink()
    try:
        t0 = time.monotonic()
        while b.size("a1")[0]:
            await drain_step(b, "a1", sink, limiter=limiter, backoff=Backoff(),
                             dead_letters=dead)
        elapsed = time.monotonic() - t0
        assert len(sink.delivered) == 400
        assert elapsed >= 1.9 * 0.9, elapsed     # the limit held (no upper timing bound)
        assert max(sink.writes) <= 20
    finally:
        await b.close()
