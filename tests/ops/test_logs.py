"""Logs an operator can use: JSON lines with ids as fields, UTC times,
listen addresses at start-up, a status line that log lines do not break,
an exit summary that says what stays behind, replay progress."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import signal
import socket
import subprocess
import time
import urllib.request

import yaml

from engine.app.replay import replay_progress
from engine.runtime.metrics import Totals
from engine.runtime.status import (
    LIVE,
    JsonFormatter,
    StatusAwareHandler,
    StatusReporter,
    TextFormatter,
)
from tests.ops.support import ENGINE

UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")


def _record(msg="%d record(s) failed", args=(3,), **extra):
    rec = logging.LogRecord("engine.runtime.actions", logging.WARNING, __file__, 1, msg, args,
                            None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_ids_as_fields_and_utc_milliseconds():
    doc = json.loads(JsonFormatter().format(_record(action_id="hook", rule_id="r1",
                                                    reason="HTTP 503 Service Unavailable")))
    assert UTC_MS.match(doc["time"]), doc["time"]
    assert doc["message"] == "3 record(s) failed"
    assert (doc["action_id"], doc["rule_id"], doc["reason"]) == (
        "hook", "r1", "HTTP 503 Service Unavailable")
    assert "source" not in doc


def test_text_lines_append_the_fields():
    line = TextFormatter().format(_record(source="amqp", reason="bad json"))
    stamp, rest = line.split(" ", 1)
    assert UTC_MS.match(stamp)
    assert rest == 'WARNING engine.runtime.actions: 3 record(s) failed source=amqp reason="bad json"'


async def test_log_lines_do_not_interleave_with_the_tty_status_line():
    out = io.StringIO()
    handler = StatusAwareHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("tests.ops.tty")
    logger.addHandler(handler)
    logger.propagate = False
    totals = Totals(received=5)
    rep = StatusReporter(totals, tty=True, stream=out)
    rep.interval = 0.05
    task = asyncio.create_task(rep.run())
    try:
        while LIVE.line is None:
            await asyncio.sleep(0.01)
        shown = LIVE.line
        logger.warning("destination down")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        logger.removeHandler(handler)
    text = out.getvalue()
    # the status line is cleared, the log line written whole, the status line redrawn
    assert "\r\x1b[Kdestination down\n" + shown in text
    assert LIVE.line is None and text.endswith("\r\x1b[K")


def test_replay_progress():
    assert replay_progress(25 << 20, 100 << 20, 5.0) == " 25% 5.0 MiB/s ETA 0:15"
    assert replay_progress(3 << 20, None, 1.0) == "3 MiB 3.0 MiB/s"
    assert replay_progress(0, 100, 0.0).endswith("ETA ?")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _received(port: int) -> float:
    """engine_source_received_total over all sources (0 while not serving)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("engine_source_received_total{"))


def test_run_logs_json_listeners_failures_and_an_exit_summary_with_the_backlog(tmp_path):
    """engine run --log-format json against a destination that refuses
    connections: the listeners are logged at start, failures carry the
    action's ids and the reason as fields, and the exit summary counts
    what stays in the backlog."""
    dead = _free_port()  # nothing listens there: connection refused, retryable
    metrics, ingest = _free_port(), _free_port()
    config = {
        "sources": [{"simulator": {"rate": 2000, "count": 200, "seed": 2,
                                   "kinds": [{"resource": "device.status", "event": "update"}]}},
                    {"http": {"listen": f"127.0.0.1:{ingest}", "auth": "none"}}],
        "rules": [{"rule_id": "status", "subject": {"resource": "device.status",
                                                    "event": "update"}}],
        "actions": [{"action_id": "hook", "rule_id": "status", "channel": "HTTP_FORWARDING",
                     "channel_detail": {"http_forwarding": {
                         "url": f"http://127.0.0.1:{dead}/in", "timeout_s": 2}}}],
        "worker": {"shutdown_timeout": 3},
    }
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(config))
    err = tmp_path / "stderr"
    with err.open("wb") as f:
        proc = subprocess.Popen([*ENGINE, "run", "rules.yaml", "--log-format", "json",
                                 "--status", "log", "--metrics-listen", f"127.0.0.1:{metrics}"],
                                cwd=tmp_path, stderr=f)
    try:
        deadline = time.monotonic() + 60
        # Every simulated notification read, and the failure logged: a
        # loaded machine can log the first batch's before the second is in.
        while time.monotonic() < deadline and not (
                b"kept in the backlog" in err.read_bytes() and _received(metrics) >= 200):
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.read_text().splitlines()
    summary = lines[-1]
    docs = [json.loads(line) for line in lines[:-1]]
    assert all(UTC_MS.match(d["time"]) for d in docs)
    messages = [d["message"] for d in docs]
    assert f"metrics on http://127.0.0.1:{metrics}/metrics (health: /healthz, /readyz)" in messages
    assert any(f"listening on http://127.0.0.1:{ingest}/" in m for m in messages)
    kept = [d for d in docs if "kept in the backlog" in d["message"]]
    assert kept and kept[0]["action_id"] == "hook" and kept[0]["rule_id"] == "status"
    assert "Connect" in kept[0]["reason"] or "refused" in kept[0]["reason"], kept[0]
    assert "hook" not in kept[0]["message"]
    n = int(re.search(r"(\d+) left in the backlog", summary).group(1))
    assert n > 0 and re.match(r"engine run: 200 in, \d+ matched, 0 delivered, 0 dead-lettered",
                              summary), summary
