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


def test_explain_names_the_failing_condition(tmp_path):
    p = run("--explain", "--where", "notify_data.body.content.t > 50 AND "
            "notify_data.header.device_id = 'd1'", "-", stdin=json.dumps(EVENT))
    assert p.returncode == 1
    assert "WHERE is FALSE: notify_data.body.content.t > 50 is FALSE" in p.stdout
    assert "notify_data.body.content.t = 40 (integer)" in p.stdout
    assert "notify_data.header.device_id = 'd1'  -> TRUE" in p.stdout


def test_a_rule_from_a_file_with_its_subject_and_lint(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text('rules:\n  - {rule_id: hot, subject: {resource: device.status, event: '
                     'update}, where: "notify_data.body.status = \\"ONLINE\\""}\n')
    p = run("--rules", str(rules), "--rule", "hot", "--explain", "-", stdin=json.dumps(EVENT))
    assert p.returncode == 1
    assert "subject mismatch: the rule is for device.status/update" in p.stdout
    assert "single quotes ('ONLINE')" in p.stderr
    p = run("--rules", str(rules), "--rule", "hott", "-", stdin=json.dumps(EVENT))
    assert p.returncode == 2 and "did you mean 'hot'?" in p.stderr
    check = subprocess.run([sys.executable, "-m", "engine", "check", str(rules)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0
    assert "warning: rule hot: where:" in check.stderr
