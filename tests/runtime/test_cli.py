"""The run / replay / demo commands as a user runs them (subprocesses)."""

import asyncio
import subprocess

import aiohttp
import orjson
import pytest

from engine.sources.simulator import SimulatorSource
from tests.runtime.e2e import ENGINE, EngineProcess, free_port, wait_ready, write_config

RULE = {"rule_id": "status", "subject": {"resource": "device.status", "event": "update"},
        "select": "notify_data.header.device_id AS device, notify_data.body.status AS status"}


def expected_status(items):
    out = []
    for raw in items:
        e = orjson.loads(raw)
        if e["resource"] == "device.status":
            out.append({"device": e["notify_data"]["header"]["device_id"],
                        "status": e["notify_data"]["body"]["status"]})
    return out


def file_action(path):
    return {"action_id": "to-file", "rule_id": "status", "channel": "FILE_FORWARDING",
            "channel_detail": {"file_forwarding": {"path": str(path)}}}


def test_demo_runs_without_any_service(tmp_path):
    r = subprocess.run([*ENGINE, "demo", "--duration", "2", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "demo OK" in r.stdout
    lines = (tmp_path / "matches.jsonl").read_bytes().splitlines()
    assert lines and {orjson.loads(x)["rule_id"] for x in lines} >= {"status-changes"}


@pytest.mark.parametrize("from_stdin", [False, True])
def test_replay_forwards_and_prints_a_summary(tmp_path, from_stdin):
    items = SimulatorSource(rate=100, seed=9, start=1.7e9).make(2000)
    data = tmp_path / "in.ndjson"
    data.write_bytes(b"\n".join(items) + b"\n")
    out = tmp_path / "out.jsonl"
    rules = write_config(tmp_path / "rules.yaml", {"rules": [RULE], "actions": [file_action(out)]})
    args = [*ENGINE, "replay", "-" if from_stdin else str(data), "--rules", str(rules)]
    r = subprocess.run(args, capture_output=True, timeout=60,
                       input=data.read_bytes() if from_stdin else None)
    assert r.returncode == 0, r.stderr
    expected = expected_status(items)
    assert [orjson.loads(x) for x in out.read_bytes().splitlines()] == expected
    summary = r.stdout.decode()
    assert "2000 notifications" in summary
    status_row = next(line for line in summary.splitlines() if line.strip().startswith("status"))
    assert status_row.split()[:5] == ["status", str(len(expected)), str(2000 - len(expected)),
                                      "to-file", str(len(expected))]


def test_replay_dry_run_delivers_nothing(tmp_path):
    data = tmp_path / "in.ndjson"
    data.write_bytes(b"\n".join(SimulatorSource(rate=100, seed=9, start=1.7e9).make(500)))
    out = tmp_path / "out.jsonl"
    rules = write_config(tmp_path / "rules.yaml", {"rules": [RULE], "actions": [file_action(out)]})
    r = subprocess.run([*ENGINE, "replay", str(data), "--rules", str(rules), "--dry-run"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not out.exists()
    assert "500 notifications" in r.stdout


def test_invalid_config_is_reported_with_its_location(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - rule_id: x\n    subject: {resource: nope, event: report}\n")
    r = subprocess.run([*ENGINE, "run", str(rules)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "rules.yaml:3" in r.stderr


async def test_run_http_ingest_then_sigterm_drains_and_exits_0(tmp_path):
    http_port, metrics_port = free_port(), free_port()
    out = tmp_path / "out.jsonl"
    config = write_config(tmp_path / "rules.yaml", {
        "sources": [{"http": {"listen": f"127.0.0.1:{http_port}", "path": "/in",
                              "auth": "none"}}],
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "dead_letter": {"file": str(tmp_path / "dead.jsonl")},
        "rules": [RULE], "actions": [file_action(out)]})
    items = SimulatorSource(rate=100, seed=3, start=1.7e9).make(3000)
    with EngineProcess(config, "--log-format", "json") as engine:
        await wait_ready(metrics_port, engine)
        url = f"http://127.0.0.1:{http_port}/in"
        async with aiohttp.ClientSession() as s:
            async def post(chunk):
                async with s.post(url, data=b"\n".join(chunk),
                                  headers={"Content-Type": "application/x-ndjson"}) as r:
                    return r.status, await r.json()
            answers = await asyncio.gather(*(post(items[i:i + 300])
                                             for i in range(0, 3000, 300)))
            async with s.post(url, data=b"{broken") as r:
                assert r.status == 400
        assert answers == [(200, {"accepted": 300})] * 10
        # A 200 means delivered: the file already holds every output.
        assert sorted(out.read_bytes().splitlines()) == sorted(
            orjson.dumps(x) for x in expected_status(items))
        code, err = engine.stop()
    assert code == 0, err
    logs = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any("SIGTERM" in entry["message"] for entry in logs)
    assert "3000 in" in err
