"""Scale-out: two `engine run` processes with the same rule file in one
Kafka consumer group split a 4-partition topic. In steady state every
matching event is forwarded exactly once; after one worker is killed (-9)
mid-stream the other takes its partitions over once the session timed out
and every matching event still arrives (at least once; duplicates counted)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.runtime.e2e import EngineProcess, Receiver, write_config
from tests.runtime.test_reload import event

pytestmark = pytest.mark.services

PARTITIONS = 4
STEADY = 8000     # events produced while both workers run
AFTER = 16000     # events produced around the kill (at 2,000/s)
ASSIGNED = re.compile(r"kafka group \S+: (\d+) partition\(s\) assigned: (.*)")
TOTAL_IN = re.compile(r"total in (\d+)")


def assignment(log: str) -> set[str] | None:
    """The latest partitions assigned to a worker, from its log."""
    found = ASSIGNED.findall(log)
    if not found:
        return None
    topic_parts = found[-1][1]
    return {f"{t}:{p.strip()}" for t, ps in re.findall(r"([\w-]+)\[([\d, ]*)\]", topic_parts)
            for p in ps.split(",") if p.strip()}


def total_in(log: str) -> int:
    found = TOTAL_IN.findall(log)
    return int(found[-1]) if found else 0


async def produce(kafka: str, topic: str, seqs: range, rate: float | None = None,
                  progress: list[int] | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=5)
    await producer.start()
    try:
        t0 = time.monotonic()
        for i, seq in enumerate(seqs):
            await producer.send(topic, event(seq), partition=seq % PARTITIONS)
            if rate and i % 200 == 199:
                await producer.flush()
                if progress is not None:
                    progress.append(i + 1)
                ahead = t0 + (i + 1) / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()


async def until(cond, timeout: float, what: str, engines=()) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        for e in engines:
            assert e.proc.poll() is None, f"a worker exited:\n{e.log()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_two_workers_split_partitions_and_survive_a_kill(kafka, tmp_path):
    t_start = time.monotonic()
    topic, group = f"scale-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS,
                                            replication_factor=1)])
        async with Receiver() as rx:
            config = write_config(tmp_path / "rules.yaml", {
                "sources": [{"kafka": {"bootstrap_servers": kafka, "topics": [topic],
                                       "group_id": group, "session_timeout_ms": 3000,
                                       "max_batch": 500}}],
                "rules": [{"rule_id": "even",
                           "subject": {"resource": "device.message", "event": "report"},
                           "select": "notify_data.body.content.seq AS seq",
                           "where": "notify_data.body.content.v > 3"}],
                "actions": [{"action_id": "hook", "rule_id": "even",
                             "channel": "HTTP_FORWARDING",
                             "channel_detail": {"http_forwarding": {"url": rx.url}}}],
            })
            # The same rule file; each process in its own directory (local state).
            (tmp_path / "a").mkdir()
            (tmp_path / "b").mkdir()
            with EngineProcess(config, stderr_file=tmp_path / "a.log", cwd=tmp_path / "a") as a, \
                    EngineProcess(config, stderr_file=tmp_path / "b.log", cwd=tmp_path / "b") as b:
                # Both members of the group, each with half of the partitions.
                def split() -> bool:
                    pa, pb = assignment(a.log()), assignment(b.log())
                    return bool(pa and pb and len(pa) == len(pb) == PARTITIONS // 2
                                and not pa & pb)
                await until(split, 30, "both workers to get 2 partitions", (a, b))

                # Steady state: exactly once, both workers busy.
                await produce(kafka, topic, range(STEADY))
                await until(lambda: len(rx.bodies) >= STEADY // 2, 30,
                            "steady-state outputs", (a, b))
                await asyncio.sleep(1.5)  # nothing more may come; status lines catch up
                seqs = sorted(body["seq"] for body in rx.bodies)
                assert seqs == list(range(0, STEADY, 2)), "steady state must be exactly once"
                in_a, in_b = total_in(a.log()), total_in(b.log())
                assert in_a + in_b == STEADY and in_a and in_b, (in_a, in_b)

                # kill -9 one worker while events stream in.
                progress: list[int] = []
                stream = asyncio.create_task(produce(kafka, topic, range(STEADY, STEADY + AFTER),
                                                     rate=2000, progress=progress))
                await until(lambda: len(rx.bodies) >= STEADY // 2 + 500, 20,
                            "the stream to reach the workers", (a, b))
                a.proc.kill()
                a.proc.wait()
                t_kill = time.monotonic()
                assert not stream.done() and progress[-1] < AFTER // 2, "kill not mid-stream"
                await stream
                expected = set(range(0, STEADY + AFTER, 2))
                await until(lambda: {body["seq"] for body in rx.bodies} >= expected, 40,
                            "every event after the kill", (b,))
                t_complete = time.monotonic() - t_kill
                await until(lambda: assignment(b.log()) == {f"{topic}:{p}"
                                                            for p in range(PARTITIONS)},
                            10, "the survivor to own every partition", (b,))
                code, log_b = b.stop()
        assert code == 0, log_b
        got = [body["seq"] for body in rx.bodies]
        assert set(got) == expected and all(s % 2 == 0 for s in got)
        duplicates = len(got) - len(expected)
        print(f"\nscale-out: {STEADY + AFTER} events, {len(expected)} matches, "
              f"{duplicates} duplicate(s) after kill -9, all delivered {t_complete:.1f}s "
              f"after the kill; test {time.monotonic() - t_start:.1f}s")
    finally:
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()
