"""docs/getting-started.md works as written: its commands run in order, in
a fresh directory, against a real webhook (the guide's receiver.py) and the
local PostgreSQL, and what arrives is what the rules select."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from engine import compile_rule
from tests import services
from tests.ops.support import DOCS

pytestmark = pytest.mark.services

GUIDE = (DOCS / "getting-started.md").read_text()
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", flags=re.S | re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _psql(sql: str) -> str:
    env = {**os.environ, "PGHOST": services.PG_HOST, "PGPORT": str(services.PG_PORT),
           "PGUSER": services.PG_USER, "PGPASSWORD": services.PG_PASSWORD,
           "PGDATABASE": services.PG_DB}
    return subprocess.run(["psql", "-qAt", "-c", sql], env=env, check=True, text=True,
                          capture_output=True, timeout=30).stdout


@pytest.mark.timeout(240)
def test_the_guide_runs_as_written(tmp_path):
    port, table = _free_port(), f"device_status_{uuid.uuid4().hex[:8]}"
    text = GUIDE.replace("8099", str(port)).replace("device_status", table)
    script = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for lang, info, body in BLOCK.findall(text):
        name = re.search(r"name=(\S+)", info)
        if name:
            (tmp_path / name.group(1)).write_text(body)
        elif lang == "sh" and "install" in info:
            continue  # the test runs the checkout's installed engine
        elif lang == "sh" and "setup" in info:
            script.append(" ".join(f"export {k}={shlex.quote(str(v))}" for k, v in {
                "PGHOST": services.PG_HOST, "PGPORT": services.PG_PORT,
                "PGDATABASE": services.PG_DB, "PGUSER": services.PG_USER,
                "PGPASSWORD": services.PG_PASSWORD}.items()))
        elif lang == "sh":
            script.append(body)
            if "receiver.py &" in body:  # the webhook must answer before anything is sent
                script.append(f"for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/{port}) "
                              "2>/dev/null && break; sleep 0.1; done")
    assert len(script) > 10 and (tmp_path / "rules.yaml").exists()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    try:
        r = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=200)
        assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
        assert "OK: 3 rules (3 active), 3 actions" in r.stdout
        assert "password: '**********'" in r.stdout and services.PG_PASSWORD not in r.stdout
        rows = _psql(f"SELECT device_id, status, at FROM {table}")
    finally:
        _psql(f"DROP TABLE IF EXISTS {table}")

    # What the rules should have selected, computed independently per rule.
    config = yaml.safe_load((tmp_path / "rules.yaml").read_text())
    events = [json.loads(line) for line in (tmp_path / "events.ndjson").read_text().splitlines()]
    expected: dict[str, list] = {}
    for rule in config["rules"]:
        compiled = compile_rule(rule["select"], rule.get("where"))
        kind = (rule["subject"]["resource"], rule["subject"]["event"])
        expected[rule["rule_id"]] = [out for e in events if (e["resource"], e["event"]) == kind
                                     and (out := compiled.apply(e)) is not None]
    assert all(expected.values()), {k: len(v) for k, v in expected.items()}
    received = [json.loads(line)
                for line in (tmp_path / "received.jsonl").read_text().splitlines()]
    webhook = expected["battery-low"] + expected["tamper-alarms"]
    assert sorted(map(json.dumps, received)) == sorted(map(json.dumps, webhook))
    stored = sorted(tuple(line.split("|")) for line in rows.splitlines())
    assert stored == sorted((o["device_id"], o["status"], o["at"])
                            for o in expected["status-changes"])
