"""Hot reload: rule-file changes and SIGHUP swap the rules between batches,
without losing or duplicating events; invalid edits keep the running rules."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson

from engine.config import load_config
from engine.runtime.watch import ConfigWatcher
from engine.runtime.worker import Worker, WorkerOptions
from engine.sources import Batch, Source
from tests.runtime.e2e import EngineProcess, Receiver, free_port, wait_ready, write_config
from tests.runtime.support import assert_balanced, by_label, scrape

PER_BATCH = 20


def event(seq: int) -> bytes:
    """Even sequence numbers match the rules below (v > 3), odd ones do not."""
    return orjson.dumps({"resource": "device.message", "event": "report",
                         "event_time": "20260101T000000Z",
                         "notify_data": {"header": {"device_id": f"d{seq % 7}"},
                                         "body": {"content": {"seq": seq,
                                                              "v": 5 if seq % 2 == 0 else 1}}}})


def rules(version: str, url: str, **top) -> dict:
    """One rule (same id in every version) forwarding `{seq, version}` to `url`."""
    return {**top,
            "rules": [{"rule_id": "messages",
                       "subject": {"resource": "device.message", "event": "report"},
                       "select": f"notify_data.body.content.seq AS seq, '{version}' AS version",
                       "where": "notify_data.body.content.v > 3"}],
            "actions": [{"action_id": f"hook-{version}", "rule_id": "messages",
                         "channel": "HTTP_FORWARDING",
                         "channel_detail": {"http_forwarding": {"url": url}}}]}


class StreamSource(Source):
    """`n` batches of PER_BATCH events, a short pause between them; records
    the order of acks."""

    kind = "stream"

    def __init__(self, n: int, pause: float = 0.005) -> None:
        super().__init__()
        self.n, self.pause = n, pause
        self.acked: list[int] = []
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    async def batches(self) -> AsyncIterator[Batch]:
        for b in range(self.n):
            if self._stopped:
                return
            yield Batch([event(b * PER_BATCH + i) for i in range(PER_BATCH)], self._acker(b))
            await asyncio.sleep(self.pause)

    def _acker(self, b: int):
        async def ack() -> None:
            self.acked.append(b)

        return ack


async def test_reload_swaps_between_batches_and_drains_replaced_actions(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="engine.runtime.worker")
    path = tmp_path / "rules.yaml"
    async with Receiver(delay=0.01) as slow, Receiver() as fast:
        write_config(path, rules("v1", slow.url))
        src = StreamSource(150)
        worker = Worker.from_config(load_config([path]), sources=[src], config_paths=[path],
                                    # reloaded by hand here
                                    options=WorkerOptions(serve_metrics=False, reload_interval=0))
        run = asyncio.create_task(worker.run())
        while len(slow.bodies) < 40:
            await asyncio.sleep(0.005)
        (old,) = worker.runners
        write_config(path, rules("v2", fast.url))
        assert await worker.reload("test")
        (new,) = worker.runners
        assert new is not old and new.action_id == "hook-v2"
        # The replaced action still delivers what the old rule set routed to it...
        assert old in worker._open
        # ...and is closed once that is settled, while the stream goes on.
        deadline = time.monotonic() + 10
        while old in worker._open and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert old not in worker._open and not run.done()
        await asyncio.wait_for(run, 30)

    outputs = slow.bodies + fast.bodies
    assert sorted(o["seq"] for o in outputs) == list(range(0, 150 * PER_BATCH, 2))  # once each
    assert {o["version"] for o in slow.bodies} == {"v1"}
    assert {o["version"] for o in fast.bodies} == {"v2"}
    # Whole batches on one side: every batch routed by the old rules came
    # before every batch routed by the new ones.
    old_batches = {o["seq"] // PER_BATCH for o in slow.bodies}
    new_batches = {o["seq"] // PER_BATCH for o in fast.bodies}
    assert max(old_batches) < min(new_batches)
    assert src.acked == list(range(150))
    assert worker.metrics.matched_of("messages") == 75 * PER_BATCH  # counts survive the swap
    assert "reload applied (rule set 2): rules +0 -0 ~1 (messages); actions +1 (hook-v2) " \
           "-1 (hook-v1) ~0" in caplog.text


async def test_invalid_reload_is_logged_per_problem_and_keeps_the_rules(tmp_path, caplog):
    path = tmp_path / "rules.yaml"
    async with Receiver() as rx:
        write_config(path, rules("v1", rx.url))
        worker = Worker.from_config(load_config([path]), sources=[StreamSource(1)],
                                    serve_metrics=False, config_paths=[path])
        bad = rules("v2", rx.url)
        bad["rules"][0]["where"] = "notify_data.body.content.v >"   # syntax error
        bad["actions"][0]["rule_id"] = "nope"                       # unknown rule
        write_config(path, bad)
        assert not await worker.reload("test")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3, errors  # one line per problem, then the verdict
    assert all(e.startswith(f"reload rejected: {path}:") for e in errors[:2]), errors
    assert not any("\n" in e for e in errors)
    assert any("rules[0].where" in e and "column" in e for e in errors), errors
    assert any("actions[0].rule_id" in e for e in errors), errors
    assert "the running configuration is kept" in errors[2]
    assert worker.pipeline.generation.number == 1
    assert worker.runners[0].action_id == "hook-v1"


async def test_watcher_reports_content_changes_only(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("x: 1\n")
    b.write_text("y: 1\n")
    w = ConfigWatcher([str(a), str(b)], interval=0.05, settle=0.01)
    await w.prime()
    seen: asyncio.Queue = asyncio.Queue()

    async def collect():
        async for changed in w.changes():
            seen.put_nowait(changed)

    collector = asyncio.create_task(collect())

    async def next_change(timeout=0.5):
        try:
            return await asyncio.wait_for(seen.get(), timeout)
        except TimeoutError:
            return None

    os.utime(a)  # touched, same content
    assert await next_change() is None
    b.write_text("y: 2\n")
    assert await next_change() == [str(b)]
    tmp = tmp_path / "a.tmp"  # an editor's write-and-rename
    tmp.write_text("x: 2\n")
    tmp.replace(a)
    assert await next_change() == [str(a)]
    a.unlink()
    assert await next_change() == [str(a)]
    collector.cancel()


# ---------------------------------------------------------------- `engine run`


class Posters:
    """`n` clients POSTing arrays of events with increasing sequence numbers
    to the engine's HTTP ingest, each waiting for the answer (= delivered)."""

    def __init__(self, url: str, n: int = 4, per_request: int = 10) -> None:
        self.url, self.n, self.per_request = url, n, per_request
        self.sent: list[int] = []
        self._seq = itertools.count()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Posters:
        self._session = aiohttp.ClientSession()
        self._tasks = [asyncio.create_task(self._post()) for _ in range(self.n)]
        return self

    async def _post(self) -> None:
        while not self._stop.is_set():
            seqs = [next(self._seq) for _ in range(self.per_request)]
            body = b"[" + b",".join(event(s) for s in seqs) + b"]"
            async with self._session.post(self.url, data=body) as r:
                assert r.status == 200, await r.text()
            self.sent.extend(seqs)

    async def until(self, n: int, timeout: float = 20) -> None:
        """Until at least `n` more events were accepted."""
        target = len(self.sent) + n
        deadline = time.monotonic() + timeout
        while len(self.sent) < target:
            assert time.monotonic() < deadline, "ingest too slow"
            for t in self._tasks:
                if t.done():
                    t.result()
            await asyncio.sleep(0.01)

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()


async def wait_log(engine: EngineProcess, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while text not in (log := engine.log()):
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{log}"
        assert engine.proc.poll() is None, f"engine exited:\n{log}"
        await asyncio.sleep(0.05)
    return log


def top(ingest_port: int, metrics_port: int, **sources) -> dict:
    return {"sources": [{"http": {"listen": f"127.0.0.1:{ingest_port}", "path": "/in", "auth": "none",
                                  **sources}}],
            "metrics": {"listen": f"127.0.0.1:{metrics_port}"}}


def check_exactly_once(sent: list[int], old: list[dict], new: list[dict]) -> None:
    outputs = old + new
    assert sorted(o["seq"] for o in outputs) == sorted(s for s in sent if s % 2 == 0)
    assert {o["version"] for o in old} == {"v1"} and {o["version"] for o in new} == {"v2"}


async def test_engine_run_reloads_a_changed_rule_file(tmp_path):
    ingest, metrics = free_port(), free_port()
    path = tmp_path / "rules.yaml"
    async with Receiver() as a, Receiver() as b:
        write_config(path, rules("v1", a.url, **top(ingest, metrics)))
        with EngineProcess(path, stderr_file=tmp_path / "engine.log") as engine:
            await wait_ready(metrics, engine)
            async with Posters(f"http://127.0.0.1:{ingest}/in") as posters:
                await posters.until(400)
                write_config(path, rules("v2", b.url, **top(ingest, metrics)))
                await wait_log(engine, "reload applied (rule set 2)")
                await posters.until(400)
                assert b.bodies, "no output of the new rule"
                # An invalid edit: logged with file:line, the v2 rule keeps forwarding.
                broken = rules("v3", a.url, **top(ingest, metrics))
                broken["rules"][0]["select"] = "notify_data.body.content.seq AS"
                write_config(path, broken)
                log = await wait_log(engine, "problem(s); the running configuration is kept")
                n_new = len(b.bodies)
                await posters.until(400)
                assert len(b.bodies) > n_new
            samples = await scrape(f"http://127.0.0.1:{metrics}/metrics")
            code, log = engine.stop()
    assert code == 0, log
    assert f"reload rejected: {path}:" in log and "rules[0].select" in log
    assert "changed: " + str(path) in log
    check_exactly_once(posters.sent, a.bodies, b.bodies)
    # Metrics survive the swap: the rule's counter covers both versions.
    assert by_label(samples, "engine_source_received_total", "source")["http"] == len(posters.sent)
    assert by_label(samples, "engine_rule_matched_total", "rule")["messages"] == \
        len(posters.sent) // 2
    assert_balanced(samples)


async def test_engine_run_reloads_on_sighup(tmp_path):
    ingest, metrics = free_port(), free_port()
    path = tmp_path / "rules.yaml"
    async with Receiver() as a, Receiver() as b:
        write_config(path, rules("v1", a.url, **top(ingest, metrics)))
        # No polling: only SIGHUP reloads.
        with EngineProcess(path, env={"ENGINE_RELOAD_POLL": "0"},
                           stderr_file=tmp_path / "engine.log") as engine:
            await wait_ready(metrics, engine)
            async with Posters(f"http://127.0.0.1:{ingest}/in") as posters:
                await posters.until(200)
                # The new rule, and a source change: a restart would be
                # needed, so nothing of it is applied.
                write_config(path, rules("v2", b.url, **top(ingest, metrics, max_inflight=7)))
                await asyncio.sleep(1.5)
                await posters.until(200)
                assert not b.bodies and "reload" not in engine.log()
                engine.proc.send_signal(signal.SIGHUP)
                await wait_log(engine, "reload refused: the new configuration changes sources")
                await posters.until(200)
                assert not b.bodies
                write_config(path, rules("v2", b.url, **top(ingest, metrics)))
                engine.proc.send_signal(signal.SIGHUP)
                log = await wait_log(engine, "reload applied (rule set 2)")
                await posters.until(200)
                assert b.bodies
            code, log = engine.stop()
    assert code == 0, log
    assert "reloading the configuration (SIGHUP)" in log
    assert "reload refused: the new configuration changes sources, which only a restart " \
           "applies; nothing was applied" in log
    check_exactly_once(posters.sent, a.bodies, b.bodies)
