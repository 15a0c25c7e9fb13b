"""`engine eval`: the rule debugger's contract (output + exit codes)."""

import json
import subprocess
import sys

EVENT = {"resource": "device.message", "event": "report",
         "notify_data": {"header": {"device_id": "d1"}, "body": {"content": {"t": 40}}}}


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "engine", "eval", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_match_prints_output_and_exits_0(tmp_path):
    f = tmp_path / "ev.json"
    f.write_text(json.dumps(EVENT))
    p = run("--select", "notify_data.header.device_id AS id, notify_data.body.content.t",
            "--where", "notify_data.body.content.t > 38", str(f))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"id": "d1", "notify_data.body.content.t": 40}


def test_no_match_exits_1_from_stdin():
    p = run("--where", "notify_data.body.content.t > 40", "-", stdin=json.dumps(EVENT))
    assert p.returncode == 1
    assert p.stdout.strip() == "no match"


def test_rule_error_prints_caret_and_exits_2():
    p = run("--where", "notify_data.body.content.t >", "-", stdin=json.dumps(EVENT))
    assert p.returncode == 2
    assert "parse error in where clause at line 1, column 29" in p.stderr
    assert p.stderr.rstrip().endswith("^")


def test_bad_event_exits_2_with_reason():
    p = run("--where", "a = 1", "-", stdin="[1, 2]")
    assert p.returncode == 2
    assert "must be a JSON object" in p.stderr
