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


def test_a_file_rule_runs_as_the_worker_runs_it(tmp_path):
    """Dialect, app scope and topic count, as in `engine run` (and rule tests)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - {rule_id: hot, dialect: aliyun,\n"
        "     sql: \"SELECT temp, deviceName() AS dev FROM '/pk/+/user/t' WHERE temp > 30\"}\n"
        "  - {rule_id: app1, subject: {resource: device.message, event: report},\n"
        "     app_type: APP, app_id: app1}\n")
    message = {"resource": "device.message", "event": "report",
               "notify_data": {"header": {"device_id": "pk_d2", "node_id": "d2",
                                          "app_id": "app2"},
                               "body": {"topic": "/pk/d2/user/t", "content": {"temp": 35}}}}
    p = run("--rules", str(rules), "--rule", "hot", "-", stdin=json.dumps(message))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"temp": 35, "dev": "d2"}
    assert "warning" not in p.stderr   # IoTDA's lint does not read Alibaba's paths
    other_topic = {**message, "notify_data": {**message["notify_data"], "body": {
        "topic": "/pk/d2/user/u", "content": {"temp": 35}}}}
    p = run("--rules", str(rules), "--rule", "hot", "--explain", "-",
            stdin=json.dumps(other_topic))
    assert p.returncode == 1 and p.stdout == "no match\n"
    assert "no explain trace for the aliyun dialect" in p.stderr

    p = run("--rules", str(rules), "--rule", "app1", "--explain", "-", stdin=json.dumps(message))
    assert p.returncode == 1
    assert p.stdout.splitlines()[:3] == [
        "no match", "app scope: the rule is for app_id 'app1', the event's is 'app2'",
        "WHERE is TRUE"]
    mine = {**message, "notify_data": {**message["notify_data"], "header": {"app_id": "app1"}}}
    p = run("--rules", str(rules), "--rule", "app1", "-", stdin=json.dumps(mine))
    assert p.returncode == 0 and json.loads(p.stdout) == mine

    check = subprocess.run([sys.executable, "-m", "engine", "check", str(rules)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "warning" not in check.stderr
