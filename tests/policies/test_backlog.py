"""The durable backlog: order, durability across kill -9, expiry by time and
by size into dead letters (counted, with reasons), 0 disables stacking."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from engine.destinations.base import Record
from engine.policies.backlog import Backlog, _encode
from tests.policies.support import Clock, MemoryDeadLetters, policy, records

ROOT = Path(__file__).resolve().parents[2]
HTTP = "HTTP_FORWARDING"


async def opened(path, dead, policies=(), clock=None, actions=(("a1", "r1", HTTP),)):
    b = Backlog(str(path), dead, policies, **({"clock": clock} if clock else {}))
    for a in actions:
        b.add_action(*a)
    await b.open()
    return b


def nbytes(recs) -> int:
    return sum(len(_encode(r)) for r in recs)


async def test_append_peek_ack_in_order(tmp_path, dead):
    b = await opened(tmp_path / "b.db", dead)
    try:
        recs = records(10)
        assert (await b.append("a1", recs[:4])).stored == 4
        await b.append("a1", recs[4:])
        assert b.size("a1") == (10, nbytes(recs))
        got = await b.peek("a1", 3)
        assert [r for _, r in got] == recs[:3]
        assert await b.ack("a1", [s for s, _ in got]) == {s for s, _ in got}
        assert await b.ack("a1", [s for s, _ in got]) == set()  # already gone: not counted twice
        assert [r for _, r in await b.peek("a1", 100)] == recs[3:]
        assert b.size("a1") == (7, nbytes(recs[3:]))
        assert await b.peek("a2-unknown", 10) == []
    finally:
        await b.close()


async def test_reopen_keeps_entries_counters_and_sequence(tmp_path, dead):
    path = tmp_path / "b.db"
    b = await opened(path, dead, actions=[("a1", "r1", HTTP), ("a2", "r1", HTTP)])
    await b.append("a1", records(5))
    await b.append("a2", records(3, action_id="a2"))
    last = (await b.peek("a1", 10))[-1][0]
    await b.close()
    b = await opened(path, dead, actions=[("a1", "r1", HTTP), ("a2", "r1", HTTP)])
    try:
        assert sorted(b.pending_actions()) == ["a1", "a2"]
        assert b.size("a1") == (5, nbytes(records(5)))
        await b.append("a1", records(1, start=5))
        entries = await b.peek("a1", 10)
        assert entries[-1][0] > last
        assert [r.payload["i"] for _, r in entries] == list(range(6))
    finally:
        await b.close()



async def test_whole_notification_keeps_its_bytes_across_a_reopen(tmp_path, dead):
    # A record forwarded whole carries the input bytes; after a restart the
    # backlog must give back those bytes (1.50, 1E3, key order), not a re-encoding.
    raw = b'{"b": 1.50, "a": 1E3, "s": "\\u00e9"}'
    rec = Record(orjson.loads(raw), "d1", "20260101T000000Z", "r1", "a1", raw)
    plain = records(1, start=7)[0]
    path = tmp_path / "b.db"
    b = await opened(path, dead)
    await b.append("a1", [rec, plain])
    await b.close()
    b = await opened(path, dead)
    try:
        (_, got), (_, got_plain) = await b.peek("a1", 10)
        assert got == rec and got.json_bytes() == raw
        assert got_plain == plain and got_plain.raw is None
        assert b.size("a1") == (2, nbytes([rec, plain]))
    finally:
        await b.close()


CHILD = r"""
import asyncio, sys
from engine.destinations.base import Record
from engine.policies.backlog import Backlog

class Nowhere:
    async def write(self, entries):
        raise AssertionError("no dead letters expected")

async def main(path):
    b = Backlog(path, Nowhere())
    b.add_action("a1", "r1", "HTTP_FORWARDING")
    await b.open()
    i = b.size("a1")[0]
    while True:
        await b.append("a1", [Record({"i": i + j}, key=f"dev-{(i + j) % 7}") for j in range(100)])
        i += 100
        sys.stdout.write(f"{i}\n")
        sys.stdout.flush()

asyncio.run(main(sys.argv[1]))
"""


def _run_and_kill(path: Path, after: int) -> int:
    """Append batches of 100 in a child; SIGKILL it as soon as it reports
    that `after` more records are committed. Return the highest count it
    acknowledged (append returned)."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    acked = first = None
    try:
        deadline = time.monotonic() + 30
        for line in child.stdout:
            acked = int(line)
            first = first or acked
            if acked - first >= after or time.monotonic() > deadline:
                break
        os.kill(child.pid, signal.SIGKILL)  # while it is inside its next append
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        child.stdout.close()
    assert acked is not None, "the child never acknowledged an append"
    return acked


@pytest.mark.parametrize("rounds", [3])
async def test_kill_9_loses_nothing_acknowledged(tmp_path, dead, rounds):
    path = tmp_path / "b.db"
    for after in (0, 1000, 5000)[:rounds]:
        acked = await asyncio.to_thread(_run_and_kill, path, after)
        b = await opened(path, dead)
        try:
            count, _ = b.size("a1")
            entries = await b.peek("a1", count + 1)
        finally:
            await b.close()
        # Everything acknowledged is there, in order, with no gap; at most one
        # more whole batch (committed but killed before it said so).
        assert acked <= count <= acked + 100 and count % 100 == 0
        assert [r.payload["i"] for _, r in entries] == list(range(count))
        assert all(r.key == f"dev-{r.payload['i'] % 7}" for _, r in entries)


async def test_expiry_by_time_goes_to_dead_letters_counted(tmp_path, dead):
    clock = Clock()
    b = await opened(tmp_path / "b.db", dead, [policy("keep100", time=100)], clock)
    try:
        old, young = records(4), records(3, start=4)
        await b.append("a1", old)
        clock.advance(50)
        await b.append("a1", young)
        clock.advance(50)
        assert await b.expire() == []              # exactly 100 s old: not yet
        clock.advance(1)
        expired = await b.expire()
        assert [r for r, _ in expired] == old
        assert all("backlog_time 100 s of backlog policy keep100" in why for _, why in expired)
        assert [e["payload"] for e in dead.entries] == [r.payload for r in old]
        assert {e["source"] for e in dead.entries} == {"backlog:a1"}
        assert {(e["rule_id"], e["action_id"]) for e in dead.entries} == {("r1", "a1")}
        assert [e["key"] for e in dead.entries] == [r.key for r in old]
        assert b.stats("a1").expired == 4
        assert [r for _, r in await b.peek("a1", 10)] == young
        clock.advance(50)
        assert len(await b.expire()) == 3
        assert b.size("a1") == (0, 0) and b.stats("a1").expired == 7
    finally:
        await b.close()


async def test_expiry_by_size_drops_oldest_first_at_append(tmp_path, dead):
    recs = records(30, pad=50)
    one = nbytes(recs[:1])
    b = await opened(tmp_path / "b.db", dead, [policy("small", size=10 * one)])
    try:
        for i in range(0, 30, 6):
            await b.append("a1", recs[i:i + 6])
            count, size = b.size("a1")
            assert size <= 10 * one
        assert count == 10
        assert [r for _, r in await b.peek("a1", 100)] == recs[20:]
        assert [e["payload"]["i"] for e in dead.entries] == list(range(20))
        assert all("backlog_size " + str(10 * one) in e["reason"] for e in dead.entries)
        assert b.stats("a1").expired == 20
        # store() alone leaves the bound to trim() (the runner counts between)
        assert (await b.store("a1", records(4, pad=50, start=30))).stored == 4
        assert b.size("a1")[0] == 14 and len(dead.entries) == 20
        await b.trim("a1")
        assert b.size("a1")[0] == 10 and b.stats("a1").expired == 24
        assert [e["payload"]["i"] for e in dead.entries] == list(range(24))
    finally:
        await b.close()


async def test_counts_move_when_a_result_reaches_the_event_loop(tmp_path, dead):
    # The action runner counts records out of flight in the step `store`
    # returns in; if the backlog thread counted them itself, a scrape in
    # between would see them twice (in flight and in the backlog).
    b = await opened(tmp_path / "b.db", dead)
    try:
        recs = records(5)
        task = asyncio.create_task(b.append("a1", recs))
        await asyncio.sleep(0)        # the insert goes to the backlog thread
        time.sleep(0.3)               # and commits while the loop is held here
        assert b.size("a1") == (0, 0)
        assert (await task).stored == 5
        assert b.size("a1") == (5, nbytes(recs))
        seqs = [s for s, _ in await b.peek("a1", 5)]
        task = asyncio.create_task(b.ack("a1", seqs[:2]))
        await asyncio.sleep(0)
        time.sleep(0.3)
        assert b.size("a1")[0] == 5
        assert await task == set(seqs[:2]) and b.size("a1") == (3, nbytes(recs[2:]))
    finally:
        await b.close()


async def test_whichever_bound_is_reached_first(tmp_path, dead):
    clock = Clock()
    recs = records(10)
    size = nbytes(recs[:5])
    b = await opened(tmp_path / "b.db", dead, [policy("both", size=size, time=60)], clock)
    try:
        await b.append("a1", recs[:5])            # at the size bound, not over
        clock.advance(61)
        assert len(await b.expire()) == 5         # time first
        await b.append("a1", recs[5:])
        await b.append("a1", records(1, start=10))  # size first
        assert "backlog_size" in dead.entries[-1]["reason"]
        assert b.stats("a1").expired == 6
    finally:
        await b.close()


async def test_user_size_bound_is_shared_oldest_of_all_actions_first(tmp_path, dead):
    a1, a2 = records(6, action_id="a1"), records(6, action_id="a2", start=100)
    b = await opened(tmp_path / "b.db", dead, [policy("tenant", size=nbytes(a1[:4] + a2[:4]))],
                     actions=[("a1", "r1", HTTP), ("a2", "r2", "KAFKA_FORWARDING")])
    try:
        await b.append("a1", a1[:4])
        await b.append("a2", a2[:4])
        await b.append("a1", a1[4:])          # over the shared bound: a1's own oldest go
        await b.append("a2", a2[4:])          # then a1's next oldest, then a2's oldest
        expired = [e["payload"]["i"] for e in dead.entries]
        assert expired == [0, 1, 2, 3]
        assert b.size("a1")[0] + b.size("a2")[0] == 8
    finally:
        await b.close()


async def test_scoped_policies_bound_only_their_actions(tmp_path, dead):
    clock = Clock()
    pol = [policy("tenant"), policy("rule-r2", "RULE", "r2", time=10),
           policy("act-a3", "ACTION", "a3", time=5)]
    acts = [("a1", "r1", HTTP), ("a2", "r2", HTTP), ("a3", "r2", HTTP)]
    b = await opened(tmp_path / "b.db", dead, pol, clock, acts)
    try:
        for a, _, _ in acts:
            await b.append(a, records(2, action_id=a))
        clock.advance(6)
        assert {(e["action_id"], e["reason"].split("policy ")[1]) for e in
                [{"action_id": r.action_id, "reason": w} for r, w in await b.expire()]} == {
            ("a3", "act-a3")}
        clock.advance(5)
        assert {r.action_id for r, _ in await b.expire()} == {"a2"}
        assert b.size("a1")[0] == 2
    finally:
        await b.close()


@pytest.mark.parametrize("size,time_", [(0, 86399), (1000, 0)])
async def test_zero_disables_stacking_and_dead_letters_instead(tmp_path, dead, size, time_):
    pol = [policy("tenant"), policy("nostack", "RULE", "r2", size=size, time=time_)]
    b = await opened(tmp_path / "b.db", dead, pol,
                     actions=[("a1", "r1", HTTP), ("a2", "r2", HTTP)])
    try:
        assert b.stacking("a1") and not b.stacking("a2")
        r = await b.append("a2", records(3, action_id="a2"), reason="HTTP 503")
        assert (r.stored, r.refused) == (0, 3)
        assert b.size("a2") == (0, 0) and b.stats("a2").refused == 3
        field = "backlog_size" if size == 0 else "backlog_time"
        assert {e["reason"] for e in dead.entries} == {
            f"HTTP 503; not kept: backlog disabled by policy nostack ({field} 0)"}
        assert (await b.append("a1", records(3))).stored == 3   # other rule unaffected
    finally:
        await b.close()


async def test_without_policies_iotda_defaults_apply(tmp_path, dead):
    clock = Clock()
    b = await opened(tmp_path / "b.db", dead, [], clock)
    try:
        assert b.stacking("a1")
        await b.append("a1", records(2))
        clock.advance(86399)
        assert await b.expire() == []
        clock.advance(1.5)
        assert all("policy default" in why for _, why in await b.expire())
        assert b.stats("a1").expired == 2
    finally:
        await b.close()


async def test_drain_after_restart_keeps_each_devices_order(tmp_path, dead):
    path = tmp_path / "b.db"
    b = await opened(path, dead)
    recs = records(1000, devices=13)
    for i in range(0, 1000, 70):   # batches that do not line up with devices
        await b.append("a1", recs[i:i + 70])
    await b.close()
    b = await opened(path, dead)
    try:
        assert b.pending_actions() == ["a1"]
        got = []
        while batch := await b.peek("a1", 64):
            got += [r for _, r in batch]
            await b.ack("a1", [s for s, _ in batch])
        assert got == recs
        for dev in {r.key for r in recs}:
            seen = [r.payload["i"] for r in got if r.key == dev]
            assert seen == sorted(seen)
    finally:
        await b.close()


async def test_expiry_deletes_only_once_dead_letters_are_stored(tmp_path):
    class Broken:
        async def write(self, entries):
            raise OSError("dead-letter store down")

    clock = Clock()
    b = await opened(tmp_path / "b.db", Broken(), [policy("p", time=10)], clock)
    try:
        await b.append("a1", records(3))
        clock.advance(11)
        with pytest.raises(OSError):
            await b.expire()
        assert b.size("a1")[0] == 3 and b.stats("a1").expired == 0
        b.dead_letters = MemoryDeadLetters()
        assert len(await b.expire()) == 3
    finally:
        await b.close()


async def test_entries_of_removed_actions_are_dead_lettered(tmp_path, dead):
    path = tmp_path / "b.db"
    b = await opened(path, dead, actions=[("a1", "r1", HTTP), ("gone", "r1", HTTP)])
    await b.append("gone", records(5, action_id="gone"))
    await b.append("a1", records(1))
    await b.close()
    b = await opened(path, dead)
    try:
        assert sorted(b.pending_actions()) == ["a1", "gone"]
        assert await b.settle_unconfigured() == 5
        assert b.pending_actions() == ["a1"]
        assert {e["reason"] for e in dead.entries} == {"action gone is no longer configured"}
    finally:
        await b.close()


async def test_event_loop_keeps_running_during_large_appends(tmp_path, dead):
    b = await opened(tmp_path / "b.db", dead)
    gaps = []

    async def ticker():
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        recs = records(20_000, pad=100)
        t0 = time.monotonic()
        for i in range(0, len(recs), 5000):
            await b.append("a1", recs[i:i + 5000])
        elapsed = time.monotonic() - t0
    finally:
        tick.cancel()
        await b.close()
    print(f"\n20k appends in batches of 5000: {elapsed:.2f} s; loop max gap {max(gaps) * 1000:.0f} ms")
    assert max(gaps) < 0.25


async def test_throughput_figures(tmp_path, dead):
    """Not a speed assertion: prints what append/peek+ack achieve here (docs/RELIABILITY.md)."""
    b = await opened(tmp_path / "b.db", dead)
    try:
        recs = records(50_000, pad=100)
        for batch in (1, 500):
            n = 500 if batch == 1 else 50_000
            t0 = time.monotonic()
            for i in range(0, n, batch):
                await b.append("a1", recs[i:i + batch])
            rate = n / (time.monotonic() - t0)
            print(f"\nappend, batches of {batch}: {rate:,.0f} records/s")
        t0 = time.monotonic()
        while batch := await b.peek("a1", 500):
            await b.ack("a1", [s for s, _ in batch])
        print(f"peek+ack, batches of 500: {50_500 / (time.monotonic() - t0):,.0f} records/s")
        assert b.size("a1") == (0, 0)
    finally:
        await b.close()


async def test_take_over_moves_a_stranded_backlog_behind_its_own(tmp_path, dead, caplog):
    # What a worker left (a different number of workers now): its entries
    # move into this backlog, in their order, after this one's; its file goes.
    stranded, own = tmp_path / "w1" / "backlog.db", tmp_path / "backlog.db"
    stranded.parent.mkdir()
    b = await opened(stranded, dead, actions=[("a1", "r1", HTTP), ("a2", "r1", HTTP)])
    await b.append("a1", records(5))
    await b.append("a2", records(2, action_id="a2"))
    await b.close()
    b = await opened(own, dead)
    await b.append("a1", records(2, start=100))
    await b.close()

    caplog.set_level("INFO", logger="engine.policies.backlog")
    b = Backlog(str(own), dead, adopt=[str(stranded), str(tmp_path / "none" / "backlog.db")])
    b.add_action("a1", "r1", HTTP)
    b.add_action("a2", "r1", HTTP)
    await b.open()
    try:
        assert [r.payload["i"] for _, r in await b.peek("a1", 10)] == [100, 101, 0, 1, 2, 3, 4]
        assert [r.action_id for _, r in await b.peek("a2", 10)] == ["a2", "a2"]
        assert b.size("a1") == (7, nbytes(records(2, start=100)) + nbytes(records(5)))
        assert not any(stranded.parent.iterdir())  # db, wal, shm and lock: all gone
        assert f"took over 7 backlog entries from {stranded}" in caplog.text
        await b.append("a1", records(1, start=200))  # the sequence continues after them
        assert [r.payload["i"] for _, r in await b.peek("a1", 10)][-1] == 200
    finally:
        await b.close()


async def test_take_over_of_a_backlog_killed_mid_append(tmp_path, dead):
    # kill -9 leaves the committed entries in the WAL: they are taken over too.
    stranded = tmp_path / "stranded.db"
    acked = await asyncio.to_thread(_run_and_kill, stranded, 1000)
    b = Backlog(str(tmp_path / "own.db"), dead, adopt=[str(stranded)])
    b.add_action("a1", "r1", HTTP)
    await b.open()
    try:
        count, _ = b.size("a1")
        assert acked <= count <= acked + 100
        assert [r.payload["i"] for _, r in await b.peek("a1", count + 1)] == list(range(count))
        assert not stranded.exists()
    finally:
        await b.close()


async def test_a_backlog_in_use_is_not_taken_over(tmp_path, dead, caplog):
    other = await opened(tmp_path / "other.db", dead)
    await other.append("a1", records(3))
    try:
        b = Backlog(str(tmp_path / "own.db"), dead, adopt=[str(tmp_path / "other.db")])
        b.add_action("a1", "r1", HTTP)
        await b.open()
        try:
            assert b.size("a1") == (0, 0)
        finally:
            await b.close()
        assert other.size("a1")[0] == 3 and len(await other.peek("a1", 10)) == 3
        assert "in use by another process: not taken over" in caplog.text
    finally:
        await other.close()


async def test_a_stranded_file_that_is_no_backlog_stops_the_start_naming_it(tmp_path, dead):
    bad = tmp_path / "worker-1.db"
    bad.write_bytes(b"not a database at all, but somebody's file" * 100)
    b = Backlog(str(tmp_path / "own.db"), dead, adopt=[str(bad)])
    with pytest.raises(Exception, match=f"cannot take over the backlog {bad}: .*move it away"):
        await b.open()
    await b.close()
    assert bad.read_bytes().startswith(b"not a database")
