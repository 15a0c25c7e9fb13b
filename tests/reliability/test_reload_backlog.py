"""A reload that removes or renames an action does not strand its backlog
(issue 11, item 2): the records it holds are delivered to the destination
they were routed to - the removed action keeps draining its backlog, and
closes once it is empty. A real HTTP receiver (its own process) is down
while the records are backlogged, and recovers after the reload.

A stop before that leaves them on disk; the next start dead-letters them
with the reason (the configuration no longer says where they go)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import orjson

from engine.config import load_config
from engine.runtime.worker import Worker, WorkerOptions
from engine.sources import Batch, Source
from tests.reliability.support import HttpReceiverProcess, duplicates, free_port
from tests.runtime.e2e import write_config
from tests.runtime.support import assert_balanced, by_label, scrape
from tests.runtime.test_reload import PER_BATCH, event

BATCHES = 100  # 2,000 events, 1,000 of them match (the figure)
HAND_RELOAD = WorkerOptions(reload_interval=0)  # reloaded by the tests, not by polling


class HeldStream(Source):
    """BATCHES batches, then stays open until stop() (a stream)."""

    kind = "stream"

    def __init__(self, first: int = 0) -> None:
        super().__init__()
        self.first = first
        self._stopped = asyncio.Event()

    def stop(self) -> None:
        self._stopped.set()

    async def batches(self) -> AsyncIterator[Batch]:
        for b in range(self.first, self.first + BATCHES):
            yield Batch([event(b * PER_BATCH + i) for i in range(PER_BATCH)], _no_ack)
        await self._stopped.wait()


async def _no_ack() -> None:
    pass


def config(tmp_path, action_id: str, url: str, metrics_port: int) -> dict:
    return {"rules": [{"rule_id": "messages",
                       "subject": {"resource": "device.message", "event": "report"},
                       "select": "notify_data.body.content.seq AS seq",
                       "where": "notify_data.body.content.v > 3"}],
            "actions": [{"action_id": action_id, "rule_id": "messages",
                         "channel": "HTTP_FORWARDING",
                         "channel_detail": {"http_forwarding": {"url": url, "timeout_s": 2}}}],
            "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
            "worker": {"state_dir": str(tmp_path / "state")}}


async def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def backlogged(worker: Worker, action: str) -> float:
    return worker.metrics.registry.get_sample_value(
        "engine_action_backlogged", {"action": action, "rule": "messages",
                                     "channel": "HTTP_FORWARDING"}) or 0


async def test_renamed_action_delivers_its_backlog_once_the_destination_is_back(
        tmp_path, caplog):
    caplog.set_level(logging.INFO)
    rx = HttpReceiverProcess(tmp_path)  # not started: the destination is down
    metrics_port = free_port()
    path = write_config(tmp_path / "rules.yaml", config(tmp_path, "push", rx.url, metrics_port))
    src = HeldStream()
    worker = Worker.from_config(load_config([path]), sources=[src], config_paths=[path],
                                options=HAND_RELOAD)
    run = asyncio.create_task(worker.run())
    try:
        # Every match of the stream ends up in push's backlog (receiver down).
        await wait_for(lambda: worker.backlog is not None and worker.metrics.totals.matched
                       == BATCHES * PER_BATCH // 2 and worker.metrics.totals.inflight == 0,
                       30, "stream not backlogged")
        assert worker.backlog.size("push")[0] == BATCHES * PER_BATCH // 2
        # The rename: same rule, same URL, new id.
        write_config(path, config(tmp_path, "push2", rx.url, metrics_port))
        assert await worker.reload("rename")
        await asyncio.sleep(1.0)
        rx.start()  # the destination recovers
        back = time.monotonic()
        await wait_for(lambda: len(rx.seqs()) >= BATCHES * PER_BATCH // 2, 60,
                       f"not delivered: {len(rx.seqs())}\n{caplog.text[-3000:]}")
        await wait_for(lambda: worker.backlog.size("push")[0] == 0, 10, "backlog not empty")
        print(f"\nFIGURES rename push -> push2: {BATCHES * PER_BATCH // 2} backlogged, "
              f"delivered {time.monotonic() - back:.1f} s after the receiver came back")
        await wait_for(lambda: all(r.action_id != "push" for r in worker._open), 10,
                       "removed action not closed")
        samples = await scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        worker.stop()
        await asyncio.wait_for(run, 30)
        rx.proc.stop()
    seqs = rx.seqs()
    assert sorted(set(seqs)) == list(range(0, BATCHES * PER_BATCH, 2))
    assert duplicates(seqs) == 0
    assert by_label(samples, "engine_action_backlogged", "action").get("push", 0) == 0
    assert by_label(samples, "engine_action_forwarded_total", "action")["push"] == len(seqs)
    assert not by_label(samples, "engine_action_dead_lettered_total", "action").get("push")
    assert_balanced(samples)
    assert "action push was removed by a reload: delivering the 1000 record(s)" in caplog.text


async def test_a_removed_actions_backlog_left_at_stop_is_dead_lettered_at_the_next_start(
        tmp_path, caplog):
    caplog.set_level(logging.INFO)
    rx = HttpReceiverProcess(tmp_path)  # down throughout
    metrics_port = free_port()
    path = write_config(tmp_path / "rules.yaml", config(tmp_path, "push", rx.url, metrics_port))
    worker = Worker.from_config(load_config([path]), sources=[HeldStream()],
                                config_paths=[path], options=HAND_RELOAD)
    run = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: worker.metrics.totals.matched == BATCHES * PER_BATCH // 2
                       and worker.metrics.totals.inflight == 0, 30, "stream not backlogged")
        write_config(path, config(tmp_path, "push2", rx.url, metrics_port))
        assert await worker.reload("rename")
    finally:
        worker.stop()
        await asyncio.wait_for(run, 30)
    assert "action push (removed by a reload): 1000 record(s) stay in the backlog" in caplog.text
    # The next start has no destination for them: set aside, with the reason.
    worker = Worker.from_config(load_config([path]), sources=[HeldStream(first=BATCHES)],
                                serve_metrics=False)
    run = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: worker.metrics.ready, 10, "not started")
    finally:
        worker.stop()
        await asyncio.wait_for(run, 30)
    dead = [orjson.loads(line) for line in
            (tmp_path / "state" / "dead-letters.jsonl").read_bytes().splitlines()]
    assert len(dead) == BATCHES * PER_BATCH // 2
    assert {d["reason"] for d in dead} == {"action push is no longer configured"}


async def test_an_action_configured_again_takes_its_backlog_back(tmp_path, caplog):
    """Removed, then configured again while its backlog drains: one runner
    drains it (the new one), each record is delivered once."""
    caplog.set_level(logging.INFO)
    rx = HttpReceiverProcess(tmp_path)
    metrics_port = free_port()
    path = write_config(tmp_path / "rules.yaml", config(tmp_path, "push", rx.url, metrics_port))
    worker = Worker.from_config(load_config([path]), sources=[HeldStream()],
                                config_paths=[path], options=HAND_RELOAD)
    run = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: worker.metrics.totals.matched == BATCHES * PER_BATCH // 2
                       and worker.metrics.totals.inflight == 0, 30, "stream not backlogged")
        write_config(path, config(tmp_path, "push2", rx.url, metrics_port))
        assert await worker.reload("rename")
        await wait_for(lambda: "was removed by a reload" in caplog.text, 10, "not draining")
        write_config(path, config(tmp_path, "push", rx.url, metrics_port))
        assert await worker.reload("rename back")
        rx.start()
        await wait_for(lambda: worker.backlog.size("push")[0] == 0, 60,
                       f"not delivered\n{caplog.text[-3000:]}")
        await wait_for(lambda: sum(r.action_id == "push" for r in worker._open) == 1, 10,
                       "the removed runner is still open")
        samples = await scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        worker.stop()
        await asyncio.wait_for(run, 30)
        rx.proc.stop()
    seqs = rx.seqs()
    assert sorted(seqs) == list(range(0, BATCHES * PER_BATCH, 2))  # each once
    assert "the action configured again under this id delivers its backlog" in caplog.text
    assert_balanced(samples)
