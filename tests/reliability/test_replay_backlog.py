"""`engine replay` drains the backlog of its state directory and counts it
(issue 11, item 3): a replay with the destination down leaves its records in
the backlog and says so (exit 1); the next replay, destination up, delivers
them first, then its own, waits for the backlog to drain and reports it.
The receiver (its own process) holds each record once: every file was
replayed once."""

from __future__ import annotations

import re
import subprocess

from tests.reliability.support import PYTHON, HttpReceiverProcess, duplicates
from tests.runtime.e2e import write_config
from tests.runtime.test_reload import event

N = 2000  # events per file; the even ones match: 1,000 records


def ndjson(path, first: int) -> str:
    path.write_bytes(b"\n".join(event(i) for i in range(first, first + N)) + b"\n")
    return str(path)


def replay(data: str, rules) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "engine", "replay", data, "--rules", str(rules),
                           "--log-format", "text"],
                          capture_output=True, text=True, timeout=120, cwd=rules.parent)


def rules_file(tmp_path, url: str, shutdown_timeout: float):
    """Even seqs forwarded to `url`; a replay waits `shutdown_timeout` s for
    a backlog that does not shrink."""
    return write_config(tmp_path / "rules.yaml", {
        "rules": [{"rule_id": "messages",
                   "subject": {"resource": "device.message", "event": "report"},
                   "select": "notify_data.body.content.seq AS seq",
                   "where": "notify_data.body.content.v > 3"}],
        "actions": [{"action_id": "push", "rule_id": "messages", "channel": "HTTP_FORWARDING",
                     "channel_detail": {"http_forwarding": {"url": url, "timeout_s": 2}}}],
        "worker": {"state_dir": str(tmp_path / "state"), "shutdown_timeout": shutdown_timeout}})


def test_replay_drains_the_backlog_an_earlier_replay_left(tmp_path):
    rx = HttpReceiverProcess(tmp_path)  # not started yet: the destination is down
    rules = rules_file(tmp_path, rx.url, shutdown_timeout=2)
    first = ndjson(tmp_path / "first.ndjson", 0)
    second = ndjson(tmp_path / "second.ndjson", N)
    try:
        down = replay(first, rules)
        assert down.returncode == 1, down.stdout + down.stderr
        assert "0 delivered" in down.stdout
        assert re.search(r"backlog .*: 0 record\(s\) from an earlier run .*, 1000 left",
                         down.stdout), down.stdout
        assert "not delivered: 1000 record(s) stay in the backlog" in down.stdout

        rx.start()
        up = replay(second, rules)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "2000 delivered" in up.stdout, up.stdout
        assert re.search(r"backlog .*: 1000 record\(s\) from an earlier run .*, 0 left",
                         up.stdout), up.stdout
        row = next(line for line in up.stdout.splitlines()
                   if line.strip().startswith("messages"))
        assert row.split() == ["messages", "1000", "1000", "push", "2000", "0", "1000", "0"]

        again = replay(ndjson(tmp_path / "third.ndjson", 2 * N), rules)  # nothing left over
        assert again.returncode == 0, again.stdout + again.stderr
        assert "1000 delivered" in again.stdout and "from an earlier run" not in again.stdout
    finally:
        rx.proc.stop()
    seqs = rx.seqs()
    print(f"\nFIGURES replay: down -> exit {down.returncode}, 1000 left; up -> "
          f"{up.stdout.splitlines()[0]}; receiver {len(seqs)} rows, {len(set(seqs))} distinct")
    assert duplicates(seqs) == 0
    assert sorted(seqs) == list(range(0, 3 * N, 2))
    # Nothing was set aside.
    dead = tmp_path / "state" / "dead-letters.jsonl"
    assert not dead.exists() or not dead.read_bytes().strip()


def test_replay_takes_over_what_workers_left_in_their_backlogs(tmp_path):
    # `engine run --workers 2` left records in worker-1's backlog: a replay
    # (one process on the same state directory) delivers them too.
    import asyncio

    from engine.destinations.base import Record
    from engine.policies.backlog import Backlog
    from engine.runtime.deadletter import DeadLetters

    rx = HttpReceiverProcess(tmp_path)
    rules = rules_file(tmp_path, rx.url, shutdown_timeout=5)
    left = tmp_path / "state" / "worker-1" / "backlog.db"
    left.parent.mkdir(parents=True)

    async def leave() -> None:
        b = Backlog(str(left), DeadLetters())
        b.add_action("push", "messages", "HTTP_FORWARDING")
        await b.open()
        await b.append("push", [Record({"seq": -1 - i}, f"d{i % 7}", rule_id="messages",
                                       action_id="push") for i in range(50)])
        await b.close()

    asyncio.run(leave())
    rx.start()
    try:
        done = replay(ndjson(tmp_path / "data.ndjson", 0), rules)
    finally:
        rx.proc.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"backlog .*: 50 record\(s\) from an earlier run .*, 0 left", done.stdout), \
        done.stdout
    seqs = rx.seqs()
    assert sorted(seqs) == sorted([-1 - i for i in range(50)] + list(range(0, N, 2)))
    assert duplicates(seqs) == 0 and not left.exists()
