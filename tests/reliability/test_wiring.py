"""The policies wired into the action runner, in process (no servers): a
failing destination fills the backlog and the source is acked anyway; the
backlog drains in order, first after a restart; flow control holds records
back without dropping them; expiry and disabled stacking dead-letter with
the reason; counts balance throughout."""

from __future__ import annotations

import asyncio
import time

import orjson

from engine import RuleSpec, compile_ruleset
from engine.config import validate_config_dict
from engine.config.models import BacklogPolicy, FlowControlPolicy
from engine.destinations.base import Failure
from engine.policies import Backlog, FlowControl, RetryPolicy
from engine.runtime.actions import ActionRunner
from engine.runtime.deadletter import FileDeadLetters
from engine.runtime.metrics import Metrics
from engine.runtime.worker import Worker
from tests.runtime.support import ListSource, MemorySink, assert_balanced, scrape

RULE = RuleSpec("all", "seq, dev", None)
FAST = RetryPolicy(initial=0.01, cap=0.05, probe_after=50)


class HoldingSource(ListSource):
    """A ListSource that stays open after its batches until stop() (so the
    worker keeps running and draining, like a real stream)."""

    async def batches(self):
        async for b in super().batches():
            yield b
        while not self._stopped:
            await asyncio.sleep(0.01)


def events(n: int, start: int = 0, devices: int = 5) -> list[bytes]:
    return [orjson.dumps({"seq": i, "dev": f"d{i % devices}"}) for i in range(start, start + n)]


def batches(items: list[bytes], size: int) -> list[list[bytes]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def make(tmp_path, sink, source, *, backlog_policies=(), flow_policies=(), metrics=None):
    metrics = metrics or Metrics()
    dl = FileDeadLetters(str(tmp_path / "dead.jsonl"))
    backlog = Backlog(str(tmp_path / "backlog.db"), dl, backlog_policies)
    limiter = FlowControl(flow_policies).limiter_for("all", "out", sink.channel)
    runner = ActionRunner("out", "all", sink, metrics=metrics, dead_letters=dl, batch_size=100,
                          linger=0.001, limiter=limiter, backlog=backlog, retry_policy=FAST)
    w = Worker(compile_ruleset([RULE]), [runner], [source], metrics=metrics, dead_letters=dl,
               metrics_listen="127.0.0.1:0", rule_keys=["all"])
    w.backlog = backlog
    return w


def dead_letters(tmp_path) -> list[dict]:
    p = tmp_path / "dead.jsonl"
    return [orjson.loads(x) for x in p.read_bytes().splitlines()] if p.exists() else []


async def wait_for(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_down_destination_fills_the_backlog_and_the_source_is_acked(tmp_path):
    down = True
    sink = MemorySink(fail=lambda r: Failure("HTTP 503", True) if down else None)
    src = HoldingSource(batches(events(1000), 100))
    w = make(tmp_path, sink, src)
    task = asyncio.create_task(w.run())
    await wait_for(lambda: len(src.acked) == 10, 10)  # all acked while nothing was delivered
    assert sink.records == []
    t = w.metrics.totals
    assert t.backlogged == 1000 and t.inflight == 0 and t.forwarded == 0
    assert_balanced(await scrape(f"http://127.0.0.1:{w.metrics.port}/metrics"))
    down = False
    await wait_for(lambda: t.backlogged == 0, 10)
    w.stop()
    await asyncio.wait_for(task, 10)
    assert [r.payload["seq"] for r in sink.records] == list(range(1000))  # in order
    assert t.forwarded == 1000 and t.dead_lettered == 0


async def test_after_a_restart_the_backlog_drains_first_in_order(tmp_path):
    # Run 1: the destination is down; everything ends up in the backlog.
    sink1 = MemorySink(fail=lambda r: Failure("timeout", True))
    w1 = make(tmp_path, sink1, ListSource(batches(events(500), 100)))
    await asyncio.wait_for(w1.run(), 10)
    assert w1.metrics.totals.backlogged == 500
    # Run 2: the destination is back; new events arrive at once.
    sink2 = MemorySink()
    w2 = make(tmp_path, sink2, HoldingSource(batches(events(300, start=500), 100)))
    task = asyncio.create_task(w2.run())
    await wait_for(lambda: len(sink2.records) == 800, 10)
    samples = await scrape(f"http://127.0.0.1:{w2.metrics.port}/metrics")
    assert_balanced(samples)  # matched 300 + restored 500 = forwarded 800
    w2.stop()
    await asyncio.wait_for(task, 10)
    seqs = [r.payload["seq"] for r in sink2.records]
    assert seqs == list(range(800))  # old ones first; per device (and overall) in order


async def test_flow_control_holds_back_without_dropping(tmp_path):
    sink = MemorySink()
    src = HoldingSource([events(600)])  # one source batch: one writer round
    w = make(tmp_path, sink, src,
             flow_policies=[FlowControlPolicy(policy_id="slow", scope="ACTION",
                                              scope_value="out", limit=200)])
    t0 = time.monotonic()
    task = asyncio.create_task(w.run())
    await wait_for(lambda: len(src.acked) == 1, 10)  # acked before the limit let them through
    acked_after = time.monotonic() - t0
    await wait_for(lambda: len(sink.records) == 600, 15)
    took = time.monotonic() - t0
    w.stop()
    await asyncio.wait_for(task, 10)
    assert sorted(r.payload["seq"] for r in sink.records) == list(range(600))
    assert took >= (600 - 20) / 200 * 0.9  # 200/s after a 0.1 s burst
    assert acked_after < took
    assert w.metrics.totals.dead_lettered == 0
    appended = w.metrics.actions.of("out", "all", "MEMORY").appended
    assert appended > 0, "held back longer than FLOW_WAIT: should have gone to the backlog"


async def test_backlog_size_0_dead_letters_with_the_reason(tmp_path):
    sink = MemorySink(fail=lambda r: Failure("HTTP 503", True) if r.payload["seq"] % 2 else None)
    w = make(tmp_path, sink, ListSource(batches(events(200), 50)),
             backlog_policies=[BacklogPolicy(policy_id="none", backlog_size=0)])
    await asyncio.wait_for(w.run(), 10)
    t = w.metrics.totals
    assert t.forwarded == 100 and t.dead_lettered == 100 and t.backlogged == 0
    dl = dead_letters(tmp_path)
    assert len(dl) == 100
    assert dl[0]["reason"] == "HTTP 503; not kept: backlog disabled by policy none (backlog_size 0)"
    assert {d["payload"]["seq"] % 2 for d in dl} == {1}


async def test_expired_backlog_entries_are_dead_lettered_and_counted(tmp_path):
    sink = MemorySink(fail=lambda r: Failure("HTTP 503", True))
    src = HoldingSource(batches(events(300), 100))
    w = make(tmp_path, sink, src, backlog_policies=[BacklogPolicy(policy_id="short",
                                                                  backlog_time=1)])
    task = asyncio.create_task(w.run())
    t = w.metrics.totals
    await wait_for(lambda: t.dead_lettered == 300, 10)
    assert_balanced(await scrape(f"http://127.0.0.1:{w.metrics.port}/metrics"))
    w.stop()
    await asyncio.wait_for(task, 10)
    assert t.backlogged == 0 and sink.records == []
    dl = dead_letters(tmp_path)
    assert len(dl) == 300
    assert dl[0]["reason"] == "expired: older than backlog_time 1 s of backlog policy short"
    assert w.metrics.actions.of("out", "all", "MEMORY").expired == 300


async def test_without_dead_letter_config_the_worker_writes_a_file(tmp_path):
    config = validate_config_dict({
        "rules": [{"rule_id": "r", "subject": {"resource": "device.message", "event": "report"},
                   "select": "*"}],
        "actions": [{"action_id": "a", "rule_id": "r", "channel": "FILE_FORWARDING",
                     "channel_detail": {"file_forwarding": {"path": str(tmp_path / "o.jsonl")}}}],
        "worker": {"state_dir": str(tmp_path / "state")}}, "<test>")
    w = Worker.from_config(config, sources=[ListSource([[b"{oops", b"[1]"]])],
                           serve_metrics=False)
    await asyncio.wait_for(w.run(), 10)
    lines = (tmp_path / "state" / "dead-letters.jsonl").read_bytes().splitlines()
    assert [orjson.loads(x)["payload"] for x in lines] == ["{oops", "[1]"]
    assert (tmp_path / "state" / "backlog.db").exists()


async def test_a_second_worker_cannot_share_the_state_dir(tmp_path):
    from engine.policies.backlog import BacklogInUse

    a = Backlog(str(tmp_path / "b.db"), FileDeadLetters(str(tmp_path / "d")))
    b = Backlog(str(tmp_path / "b.db"), FileDeadLetters(str(tmp_path / "d")))
    await a.open()
    try:
        try:
            await b.open()
            raise AssertionError("opened twice")
        except BacklogInUse as e:
            assert "worker.state_dir" in str(e)
    finally:
        await a.close()
        await b.close()
