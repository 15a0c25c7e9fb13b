"""`engine --version`, `schema`, `config --effective` and the `run` overrides,
run as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import socket
from importlib.metadata import version

import jsonschema
import pytest
import yaml

from tests.ops.support import ROOT, engine

SIMULATED = {"sources": [{"simulator": {"rate": 1000, "count": 50, "seed": 1}}],
             "rules": [{"rule_id": "r", "subject": {"resource": "device.status",
                                                    "event": "update"}}]}


def test_version():
    r = engine("--version")
    assert r.returncode == 0
    assert r.stdout.decode().startswith(f"engine {version('iot-forwarding-engine')} (Python 3.")


def _schema() -> dict:
    r = engine("schema")
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def test_schema_accepts_the_examples_and_types_channel_detail():
    validator = jsonschema.Draft202012Validator(_schema())
    example = yaml.safe_load((ROOT / "examples" / "rules.yaml").read_text())
    assert not list(validator.iter_errors(example))
    example_json = json.loads((ROOT / "examples" / "rules.json").read_text())
    assert not list(validator.iter_errors(example_json))

    def errors(doc):
        return [e.message for e in validator.iter_errors(doc)]

    http = {"action_id": "a", "rule_id": "r", "channel": "HTTP_FORWARDING",
            "channel_detail": {"http_forwarding": {"url": "http://x/"}}}
    assert not errors({"actions": [http]})
    # the detail key must be the channel's, and its members are typed
    assert errors({"actions": [{**http, "channel_detail": {"amqp_forwarding": {
        "queue_name": "q" * 8}}}]})
    assert errors({"actions": [{**http, "channel_detail": {"http_forwarding": {
        "url": "http://x/", "timeout_s": "soon"}}}]})
    assert errors({"actions": [{**http, "channel_detail": {"http_forwarding": {
        "url": "http://x/", "no_such_member": 1}}}]})
    assert errors({"actions": [{**http, "channel": "OBS_FORWARDING"}]})
    # events per resource, unknown top-level keys
    assert errors({"rules": [{"rule_id": "r", "subject": {"resource": "device.status",
                                                          "event": "report"}}]})
    assert errors({"rulez": []})


def test_schema_knows_every_channel():
    from engine.config.channels import registry

    assert set(_schema()["$defs"]["Action"]["properties"]["channel"]["enum"]) == set(registry())


def test_config_effective_fills_defaults_substitutes_env_and_masks_secrets(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("""
rules:
  - rule_id: r
    subject: {resource: device.status, event: update}
actions:
  - action_id: hook
    rule_id: r
    channel: HTTP_FORWARDING
    channel_detail: {http_forwarding: {url: "${HOOK_URL}", signature_enable: true,
                                       token: "${HOOK_TOKEN}"}}
  - action_id: queue
    rule_id: r
    channel: AMQP_FORWARDING
    channel_detail: {amqp_forwarding: {queue_name: notifications,
                                       url: "amqp://bob:${AMQP_PW}@127.0.0.1:5672/"}}
""")
    env = {"HOOK_URL": "http://127.0.0.1:9/hook", "HOOK_TOKEN": "tokenSecret42",
           "AMQP_PW": "pw-Secret-77"}
    r = engine("config", "--effective", str(rules), env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "tokenSecret42" not in out and "pw-Secret-77" not in out
    doc = yaml.safe_load(out)
    hook, queue = (a["channel_detail"] for a in doc["actions"])
    assert hook["http_forwarding"]["url"] == env["HOOK_URL"]          # interpolated
    assert hook["http_forwarding"]["token"] == "**********"          # masked
    assert hook["http_forwarding"]["timeout_s"] == 15.0              # default filled in
    assert queue["amqp_forwarding"]["url"] == "amqp://bob:**********@127.0.0.1:5672/"
    assert doc["worker"] == {"batch_size": 500, "linger_ms": 0, "shutdown_timeout": 30.0,
                             "state_dir": "engine-state"}
    as_json = engine("config", "--effective", "--format", "json", str(rules), env=env)
    assert json.loads(as_json.stdout) == doc


def test_config_effective_reports_a_missing_variable(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text('metrics: {listen: "${NOT_SET_ANYWHERE_42}"}\n')
    r = engine("config", "--effective", str(rules))
    assert r.returncode == 2 and b"NOT_SET_ANYWHERE_42" in r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_overrides_metrics_listen_and_state_dir(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({**SIMULATED, "metrics": {"listen": "127.0.0.1:1"}}))
    port = _free_port()
    r = engine("run", str(rules), "--status", "log", "--metrics-listen", f"127.0.0.1:{port}",
               "--state-dir", "state/w1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    log = r.stderr.decode()
    assert f"metrics on http://127.0.0.1:{port}/metrics" in log
    assert (tmp_path / "state" / "w1" / "backlog.db").exists()
    assert not (tmp_path / "engine-state").exists()


def test_metrics_port_in_use_names_the_metrics_endpoint(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(SIMULATED))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = engine("run", str(rules), "--status", "log", "--metrics-listen",
                   f"127.0.0.1:{port}", cwd=tmp_path)
    assert r.returncode == 2
    last = r.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("engine run: ListenError: metrics endpoint (metrics.listen): "
                           f"cannot listen on 127.0.0.1:{port}: address already in use")


@pytest.mark.parametrize(("option", "value"), [("--metrics-listen", "nowhere"),
                                               ("--state-dir", "")])
def test_run_refuses_a_bad_override(tmp_path, option, value):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(SIMULATED))
    r = engine("run", str(rules), option, value, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.decode().startswith(f"engine run: {option}: ")
