"""Property: whatever the sequence of appends, acks, expiries and restarts,
every appended record is in exactly one place - still in the backlog (in
append order), acknowledged as delivered, or in the dead letters - and the
in-memory counters match the database."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.policies.backlog import Backlog, _encode
from tests.policies.support import Clock, MemoryDeadLetters, policy, records

HTTP = "HTTP_FORWARDING"
ONE = len(_encode(records(1)[0]))  # every test record has this size

ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.sampled_from(["a1", "a2"]), st.integers(1, 12)),
    st.tuples(st.just("ack"), st.sampled_from(["a1", "a2"]), st.integers(1, 12)),
    st.tuples(st.just("wait"), st.integers(1, 40)),
    st.tuples(st.just("restart"),),
), max_size=25)


async def scenario(path: Path, steps, size_records: int, max_age: int) -> None:
    clock = Clock()
    dead = MemoryDeadLetters()
    policies = [policy("tenant", size=size_records * ONE, time=max_age)]

    async def open_backlog() -> Backlog:
        b = Backlog(str(path), dead, policies, clock=clock)
        b.add_action("a1", "r1", HTTP)
        b.add_action("a2", "r2", HTTP)
        await b.open()
        return b

    b = await open_backlog()
    appended: dict[str, list[int]] = {"a1": [], "a2": []}
    delivered: set[int] = set()
    nxt = 0
    try:
        for step in steps:
            if step[0] == "append":
                _, aid, n = step
                await b.append(aid, records(n, action_id=aid, start=nxt))
                appended[aid] += range(nxt, nxt + n)
                nxt += n
                assert b.size("a1")[1] + b.size("a2")[1] <= size_records * ONE
            elif step[0] == "ack":
                _, aid, n = step
                batch = await b.peek(aid, n)
                await b.ack(aid, [s for s, _ in batch])
                delivered |= {r.payload["i"] for _, r in batch}
            elif step[0] == "wait":
                clock.advance(step[1])
                await b.expire()
            else:
                await b.close()
                b = await open_backlog()
        for aid in ("a1", "a2"):
            left = [r.payload["i"] for _, r in await b.peek(aid, 10_000)]
            gone = {e["payload"]["i"] for e in dead.entries if e["action_id"] == aid}
            mine = appended[aid]
            assert left == [i for i in mine if i in set(left)]          # append order kept
            assert sorted(left + [i for i in mine if i in delivered] + sorted(gone)) == mine
            assert b.size(aid) == (len(left), len(left) * ONE)
        assert len(dead.entries) == len({e["payload"]["i"] for e in dead.entries})  # no dup
    finally:
        await b.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=ops, size_records=st.integers(1, 30), max_age=st.integers(5, 100))
def test_every_record_is_in_exactly_one_place(steps, size_records, max_age):
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp) / "b.db", steps, size_records, max_age))
