"""Configuration errors in words, with a did-you-mean where a name is close
to a valid one (unknown keys, channels, detail keys, enum values, events,
rule ids), through `load_config` and through `engine check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]

BAD = """\
rules:
  - rule_id: r1
    selct: "a"
    subject: {resource: device.propert, event: report}
  - rule_id: r2
    subject: {resource: device.status, event: updat}
actions:
  - {action_id: a1, rule_id: r1, channel: HTTP_FORWARDIN,
     channel_detail: {http_forwarding: {url: "http://x"}}}
  - {action_id: a2, rule_id: r1x, channel: HTTP_FORWARDING,
     channel_detail: {http_forwarding: {ur: "http://x", verify_tls: maybe}}}
worker: {batch_size: many, linger_ms: -1, shutdwn_timeout: 3}
sources:
  - kafk: {}
  - http: {listen: "127.0.0.1:1", path: x, auth: nonee}
rulez: []
"""

EXPECTED = {
    "rules[0].selct": "unknown field (did you mean 'select'?)",
    "rules[0].subject.resource": "must be one of: device, device.property, device.message, "
                                 "device.message.status, device.status, batchtask, product, "
                                 "device.command.status (did you mean 'device.property'?)",
    "rules[1].subject.event": "'updat' is not a valid event for resource 'device.status' "
                              "(did you mean 'update'?) (expected one of: update)",
    "actions[0].channel": "unknown channel 'HTTP_FORWARDIN' (did you mean 'HTTP_FORWARDING'?)",
    "actions[1].rule_id": "no rule has rule_id 'r1x' (did you mean 'r1'?)",
    "actions[1].channel_detail.http_forwarding.ur": "unknown field (did you mean 'url'?)",
    "actions[1].channel_detail.http_forwarding.url": "required field is missing",
    "actions[1].channel_detail.http_forwarding.verify_tls": "must be true or false",
    "worker.batch_size": "must be a whole number",
    "worker.linger_ms": "must be at least 0",
    "worker.shutdwn_timeout": "unknown field (did you mean 'shutdown_timeout'?)",
    "sources[0].kafk": "unknown field (did you mean 'kafka'?)",
    "sources[1].http.path": "must start with /",
    "sources[1].http.auth": "must be one of: none (did you mean 'none'?), or must be an object",
    "rulez": "unknown field (did you mean 'rules'?)",
}


@pytest.fixture
def issues(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as err:
        load_config([path])
    return {i.path: i for i in err.value.issues}


@pytest.mark.parametrize("path", list(EXPECTED))
def test_each_problem_in_words_with_a_hint(issues, path):
    assert path in issues, "\n".join(map(str, issues.values()))
    assert issues[path].message.startswith(EXPECTED[path]), issues[path].message
    assert issues[path].line is not None


def test_no_hint_when_nothing_is_close(tmp_path):
    path = tmp_path / "far.yaml"
    path.write_text("rules: [{rule_id: r1, subject: {resource: device, event: create}, "
                    "zzzzzz: 1}]\nworker: {linger_ms: 1.5}\n")
    with pytest.raises(ConfigError) as err:
        load_config([path])
    messages = {i.path: i.message for i in err.value.issues}
    assert messages["rules[0].zzzzzz"] == "unknown field"
    assert messages["worker.linger_ms"] == "must be a whole number (no decimals)"


def test_engine_check_prints_them_and_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    r = subprocess.run([sys.executable, "-m", "engine", "check", str(path)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert f"{path}:3: rules[0].selct: unknown field (did you mean 'select'?)" in r.stderr
    assert "Input should" not in r.stderr and "String should" not in r.stderr
