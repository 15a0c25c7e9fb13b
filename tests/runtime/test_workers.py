"""`engine run --workers N`: N worker processes under one supervisor."""

import asyncio
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from engine.app import supervisor
from engine.config import validate_config_dict
from engine.sources.simulator import SimulatorSource
from tests.reliability.support import HttpReceiverProcess, duplicates
from tests.runtime.e2e import ENGINE, EngineProcess, free_port, wait_ready, write_config
from tests.runtime.test_cli import RULE, expected_status, file_action
from tests.runtime.test_reload import event


def three_free_ports(workers: int = 2) -> int:
    """A port p with p + 1 ... p + workers free too (the supervisor serves
    the merged metrics on p, worker i its own on p + 1 + i)."""
    for _ in range(50):
        p = free_port()
        socks = [socket.socket() for _ in range(workers)]
        try:
            for i, s in enumerate(socks):
                s.bind(("127.0.0.1", p + 1 + i))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return p
    raise RuntimeError("no consecutive free ports")


def children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def received(s: aiohttp.ClientSession, port: int) -> float:
    async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("engine_source_received_total{"))


async def merged(s: aiohttp.ClientSession, port: int) -> dict[str, dict[str, float]]:
    """The supervisor's /metrics: per worker label, received total and up."""
    async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):  # also checks the format
        for sample in family.samples:
            if sample.name in ("engine_source_received_total", "engine_worker_up"):
                w = out.setdefault(sample.labels["worker"], {})
                w[sample.name] = w.get(sample.name, 0) + sample.value
    return out


def http_config(tmp_path: Path, http_port: int, out: Path, **sections) -> Path:
    """rules.yaml: an HTTP source on `http_port`, the status rule, a file action."""
    return write_config(tmp_path / "rules.yaml", {
        "sources": [{"http": {"listen": f"127.0.0.1:{http_port}", "path": "/in",
                              "auth": "none"}}],
        **sections, "rules": [RULE], "actions": [file_action(out)]})


async def test_workers_share_the_port_restart_and_stop_together(tmp_path):
    http_port, metrics = free_port(), three_free_ports()
    out = tmp_path / "out.jsonl"
    # The file's metrics port and state dir are overridden on the command
    # line; each worker takes its own port and directory from those.
    config = http_config(tmp_path, http_port, out, metrics={"listen": "127.0.0.1:1"},
                         worker={"state_dir": "unused"})
    items = SimulatorSource(rate=100, seed=4, start=1.7e9).make(3000)
    with EngineProcess(config, "--workers", "2", "--metrics-listen", f"127.0.0.1:{metrics}",
                       "--state-dir", str(tmp_path / "st"),
                       stderr_file=tmp_path / "err.log") as engine:
        await wait_ready(metrics, engine)      # the supervisor: every worker is ready
        await wait_ready(metrics + 1, engine)
        await wait_ready(metrics + 2, engine)
        url = f"http://127.0.0.1:{http_port}/in"
        # A new connection per request: the kernel spreads them over the workers.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for i in range(0, 3000, 150):
                async with s.post(url, data=b"\n".join(items[i:i + 150]),
                                  headers={"Content-Type": "application/x-ndjson"}) as r:
                    assert (r.status, await r.json()) == (200, {"accepted": 150})
            counts = [await received(s, metrics + 1 + i) for i in range(2)]
            together = await merged(s, metrics)
        assert sum(counts) == 3000 and min(counts) > 0, counts
        # One endpoint for both: each worker's samples under its label.
        assert together == {str(i): {"engine_source_received_total": counts[i],
                                     "engine_worker_up": 1.0} for i in range(2)}
        assert sorted(out.read_bytes().splitlines()) == sorted(
            orjson.dumps(x) for x in expected_status(items))
        assert {p.name for p in (tmp_path / "st").iterdir()} == {"worker-0", "worker-1"}
        assert not (tmp_path / "unused").exists()

        # A worker that dies is started again.
        pids = children(engine.proc.pid)
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = children(engine.proc.pid)
            if len(now) == 2 and pids[0] not in now:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"worker not restarted: {children(engine.proc.pid)}")
        await wait_ready(metrics, engine)
        assert "restarting" in engine.log()

        # SIGTERM stops every worker; the supervisor exits 0.
        survivors = children(engine.proc.pid)
        code, err = engine.stop()
    assert code == 0, err
    for pid in survivors:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
            f"/proc/{pid}/status").read_text()


async def test_by_default_one_worker_per_usable_core_and_sighup_reaches_them(tmp_path):
    n = supervisor.usable_cpus()
    http_port, metrics = free_port(), three_free_ports(n)
    out = tmp_path / "out.jsonl"
    config = http_config(tmp_path, http_port, out, metrics={"listen": f"127.0.0.1:{metrics}"},
                         worker={"state_dir": "st"})
    items = SimulatorSource(rate=100, seed=8, start=1.7e9).make(600)
    with EngineProcess(config, default_workers=True, env={"ENGINE_RELOAD_POLL": "0"},
                       stderr_file=tmp_path / "err.log") as engine:
        await wait_ready(metrics, engine)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            async with s.post(f"http://127.0.0.1:{http_port}/in", data=b"\n".join(items)) as r:
                assert r.status == 200
            workers = await merged(s, metrics)
        assert sorted(workers) == [str(i) for i in range(n)], workers
        assert sorted(p.name for p in (tmp_path / "st").iterdir()) == [
            f"worker-{i}" for i in range(n)]
        pids = children(engine.proc.pid)
        assert len(pids) == n

        # SIGHUP to the supervisor (systemd's ExecReload) reloads every worker.
        engine.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while engine.log().count("reloading the configuration (SIGHUP)") < n:
            assert time.monotonic() < deadline, engine.log()
            await asyncio.sleep(0.1)
        assert engine.proc.poll() is None and children(engine.proc.pid) == pids
        code, err = engine.stop()
    assert code == 0, err
    assert sorted(out.read_bytes().splitlines()) == sorted(
        orjson.dumps(x) for x in expected_status(items))


async def test_ctrl_c_reaches_each_worker_once_through_the_supervisor(tmp_path):
    # A terminal's Ctrl-C signals its whole foreground process group. Had the
    # workers got it too, the supervisor's SIGTERM would be their second
    # signal, on which a worker stops without waiting for its drain.
    http_port, metrics = free_port(), three_free_ports()
    out = tmp_path / "out.jsonl"
    config = http_config(tmp_path, http_port, out, metrics={"listen": f"127.0.0.1:{metrics}"})
    items = SimulatorSource(rate=100, seed=6, start=1.7e9).make(400)
    err = tmp_path / "err.log"
    with err.open("wb") as f:  # a group of its own, as a shell gives a job
        proc = subprocess.Popen([*ENGINE, "run", str(config), "--workers", "2", "--status",
                                 "log"], cwd=tmp_path, stderr=f, start_new_session=True)
    try:
        await wait_ready(metrics)
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{http_port}/in", data=b"\n".join(items)) as r:
            assert r.status == 200
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = err.read_text()
    assert "not waiting for the drain" not in log, log
    assert log.count("SIGTERM received") == 2 and "SIGINT received" not in log, log
    assert sorted(out.read_bytes().splitlines()) == sorted(
        orjson.dumps(x) for x in expected_status(items))


def file_config(tmp_path: Path, count: int, seed: int) -> tuple[list[bytes], Path, Path]:
    """rules.yaml replaying `count` simulated notifications from a file to
    the status rule's file action: (the notifications, output, config)."""
    data = tmp_path / "in.ndjson"
    items = SimulatorSource(rate=100, seed=seed, start=1.7e9).make(count)
    data.write_bytes(b"\n".join(items) + b"\n")
    out = tmp_path / "out.jsonl"
    config = write_config(tmp_path / "rules.yaml", {
        "sources": [{"file": {"path": str(data)}}], "rules": [RULE],
        "actions": [file_action(out)]})
    return items, out, config


def test_by_default_a_configuration_that_cannot_be_divided_runs_in_one_process(tmp_path):
    items, out, config = file_config(tmp_path, 300, seed=2)
    r = subprocess.run([*ENGINE, "run", str(config), "--status", "log"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    if supervisor.usable_cpus() > 1:  # said once, with the reason
        assert r.stderr.count("one process, not one per core") == 1, r.stderr
        assert "source 'file' is replayed in order by one process unless --workers" in r.stderr
    assert "worker 0 started" not in r.stderr
    assert sorted(out.read_bytes().splitlines()) == sorted(
        orjson.dumps(x) for x in expected_status(items))
    assert not (tmp_path / "state" / "worker-0").exists()


def test_workers_asked_for_divide_a_file_and_finish(tmp_path):
    """`--workers 2` on a file: each worker replays its part, exits 0 and is
    not restarted; the supervisor exits 0 once both have; every line's
    output is delivered once."""
    items, out, config = file_config(tmp_path, 6000, seed=3)
    r = subprocess.run([*ENGINE, "run", str(config), "--workers", "2", "--status", "log"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for i in range(2):
        assert r.stderr.count(f"worker {i} started") == 1, r.stderr
        assert re.search(rf"worker {i} \(pid \d+\) finished its part", r.stderr), r.stderr
    assert "restarting" not in r.stderr, r.stderr
    received = [int(line.split("engine run: ", 1)[1].split()[0])
                for line in r.stderr.splitlines() if "engine run: " in line and " in, " in line]
    assert len(received) == 2 and min(received) > 0 and sum(received) == 6000, received
    assert sorted(out.read_bytes().splitlines()) == sorted(
        orjson.dumps(x) for x in expected_status(items))


def test_usable_cpus_is_the_affinity_capped_by_the_cgroup_quota(tmp_path):
    cores = len(os.sched_getaffinity(0))
    cases = 0

    def usable(proc_cgroup: str, files: dict[str, str]) -> int:
        nonlocal cases
        cases += 1
        root = tmp_path / str(cases)
        for rel, text in files.items():
            (root / "fs" / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / "fs" / rel).write_text(text)
        (root / "cgroup").parent.mkdir(parents=True, exist_ok=True)
        (root / "cgroup").write_text(proc_cgroup)
        return supervisor.usable_cpus(str(root / "fs"), str(root / "cgroup"))

    assert usable("0::/\n", {}) == cores                      # no quota anywhere
    assert usable("0::/\n", {"cpu.max": "max 100000\n"}) == cores
    # v2: the smallest quota from the process's cgroup up to the root, rounded down
    assert usable("0::/a/b\n", {"a/b/cpu.max": "max 100000\n", "a/cpu.max": "150000 100000\n",
                                "cpu.max": "400000 100000\n"}) == 1
    assert usable("0::/a\n", {"a/cpu.max": "200000 100000\n"}) == min(cores, 2)
    assert usable("0::/\n", {"cpu.max": "5000 100000\n"}) == 1  # a share of one CPU: one
    assert usable("0::/k\n", {"k/cpu.max": "6400000 100000\n"}) == cores  # more than there are
    # v1, cpu and cpuacct mounted together or cpu alone; -1 is no quota
    assert usable("4:cpu,cpuacct:/docker/x\n1:memory:/docker/x\n", {
        "cpu,cpuacct/docker/x/cpu.cfs_quota_us": "100000\n",
        "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"}) == 1
    assert usable("3:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n",
                                "cpu/cpu.cfs_period_us": "100000\n"}) == cores
    assert usable("garbage", {"cpu.max": "not numbers"}) == cores


def test_workers_refuse_sources_they_cannot_divide(tmp_path):
    cases = {
        "mqtt without shared_group": ({"mqtt": {"topics": ["a/#"]}},
                                      "set mqtt.shared_group"),
        "mqtt device_status": ({"mqtt": {"topics": ["a/#"], "shared_group": "g",
                                         "device_status": "mosquitto-log"}},
                               "mqtt.device_status cannot be shared"),
        "device_api": ({"device_api": {"listen": "127.0.0.1:0"}},
                       "source 'device_api' cannot be shared"),
        "standard input": ({"file": {"path": "-"}}, "reading standard input cannot be shared"),
        "http on port 0": ({"http": {"listen": "127.0.0.1:0", "auth": "none"}},
                           "HTTP source on port 0 cannot be shared"),
    }
    for name, (source, why) in cases.items():
        config = write_config(tmp_path / "rules.yaml", {
            "sources": [source], "rules": [RULE], "actions": [file_action(tmp_path / "o")]})
        r = subprocess.run([*ENGINE, "run", str(config), "--workers", "2"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (name, r.stderr)
        assert why in r.stderr, (name, r.stderr)


def test_mqtt_with_shared_group_can_be_divided():
    config = validate_config_dict({
        "sources": [{"mqtt": {"topics": ["a/#"], "shared_group": "g"}},
                    {"kafka": {"topics": ["t"], "bootstrap_servers": "127.0.0.1:9092"}}, {"http": {"auth": "none"}}],
        "rules": [RULE], "actions": [file_action("/dev/null")]})
    assert supervisor.check_sources(config) is None


def test_each_worker_gets_its_own_port_and_state_dir_after_the_overrides():
    config = validate_config_dict({
        "sources": [{"http": {"auth": "none"}}], "metrics": {"listen": "127.0.0.1:9000"},
        "rules": [RULE], "actions": [file_action("/dev/null")]})
    w = supervisor.for_worker(config, 3)
    assert w.metrics.listen == "127.0.0.1:9004"  # 9000: the supervisor's merged endpoint
    assert w.worker.state_dir == os.path.join(config.worker.state_dir, "worker-3")


def test_merged_metrics_label_each_worker_and_keep_families_whole():
    from engine.app.metrics_merge import merge

    one = ('# HELP engine_x_total X.\n# TYPE engine_x_total counter\n'
           'engine_x_total{rule="a"} 3.0\n# HELP engine_up Up.\n# TYPE engine_up gauge\n'
           'engine_up 1.0\n')
    two = one.replace(" 3.0", " 4.0")
    text = merge([one, None, two])
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert [(s.labels, s.value) for s in families["engine_x"].samples] == [
        ({"worker": "0", "rule": "a"}, 3.0), ({"worker": "2", "rule": "a"}, 4.0)]
    assert [(s.labels, s.value) for s in families["engine_up"].samples] == [
        ({"worker": "0"}, 1.0), ({"worker": "2"}, 1.0)]
    assert [(s.labels["worker"], s.value) for s in families["engine_worker_up"].samples] == [
        ("0", 1.0), ("1", 0.0), ("2", 1.0)]
    assert text.count("# TYPE engine_x_total counter") == 1


def test_stranded_backlogs_are_taken_over_by_exactly_one_process(tmp_path):
    root = tmp_path / "state"
    for d in ("", "worker-0", "worker-1", "worker-2", "worker-3", "worker-x"):
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d / "backlog.db").touch()
    (root / "worker-4").mkdir()  # no backlog in it

    def taken(index, n):
        return [str(Path(p).relative_to(root)) for p in
                supervisor.stranded_backlogs(str(root), index, n)]

    # One process after N workers: all of theirs.
    assert taken(None, 1) == [f"worker-{i}/backlog.db" for i in range(4)]
    # 2 workers after 4 (or after one process): each backlog goes to one of them.
    assert taken(0, 2) == ["backlog.db", "worker-2/backlog.db"]
    assert taken(1, 2) == ["worker-3/backlog.db"]
    # As many workers as before: worker 0 takes only the single process's.
    assert taken(0, 4) == ["backlog.db"] and taken(3, 4) == []
    assert supervisor.stranded_backlogs(str(tmp_path / "missing"), None, 1) == ()


def backlog_rows(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT count(*) FROM backlog").fetchone()[0]


async def test_fewer_workers_deliver_what_the_others_left_in_their_backlogs(tmp_path):
    # 2 workers, destination down: what they accepted waits in their two
    # backlogs. One process after them (destination up) delivers all of it.
    rx = HttpReceiverProcess(tmp_path)  # not started: the destination is down
    http_port, metrics = free_port(), three_free_ports()
    state = tmp_path / "state"
    config = write_config(tmp_path / "rules.yaml", {
        "sources": [{"http": {"listen": f"127.0.0.1:{http_port}", "path": "/in",
                              "auth": "none"}}],
        "metrics": {"listen": f"127.0.0.1:{metrics}"},
        "worker": {"state_dir": str(state), "shutdown_timeout": 2},
        "rules": [{"rule_id": "messages",
                   "subject": {"resource": "device.message", "event": "report"},
                   "select": "notify_data.body.content.seq AS seq",
                   "where": "notify_data.body.content.v > 3"}],
        "actions": [{"action_id": "push", "rule_id": "messages", "channel": "HTTP_FORWARDING",
                     "channel_detail": {"http_forwarding": {"url": rx.url, "timeout_s": 2}}}]})
    url = f"http://127.0.0.1:{http_port}/in"
    try:
        with EngineProcess(config, "--workers", "2",
                           stderr_file=tmp_path / "two.log") as engine:
            await wait_ready(metrics, engine)
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(force_close=True)) as s:
                for first in range(0, 2000, 100):  # a connection each: both workers get some
                    body = b"\n".join(event(i) for i in range(first, first + 100))
                    async with s.post(url, data=body) as r:
                        assert (r.status, await r.json()) == (200, {"accepted": 100})
            code, err = engine.stop(timeout=60)
        assert code == 0, err
        held = [backlog_rows(state / f"worker-{i}" / "backlog.db") for i in range(2)]
        assert sum(held) == 1000 and min(held) > 0, held

        rx.start()
        single = free_port()
        with EngineProcess(config, "--metrics-listen", f"127.0.0.1:{single}",
                           stderr_file=tmp_path / "one.log") as engine:
            await wait_ready(single, engine)
            deadline = time.monotonic() + 60
            while len(rx.seqs()) < 1000 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            code, err = engine.stop(timeout=60)
        assert code == 0, err
    finally:
        rx.kill()
    seqs = rx.seqs()
    assert sorted(seqs) == list(range(0, 2000, 2)) and duplicates(seqs) == 0
    for i in range(2):
        assert f"took over {held[i]} backlog entries from {state}/worker-{i}/backlog.db" in err
        assert not (state / f"worker-{i}" / "backlog.db").exists()
    assert backlog_rows(state / "backlog.db") == 0
