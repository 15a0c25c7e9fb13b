"""Destinations refuse what they cannot use before `engine run` starts, and
respect what the receiving server asks for (issue 11, items 7 and 8)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

PYTHON = sys.executable


def _check(tmp_path, url: str) -> subprocess.CompletedProcess:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "rules": [{"rule_id": "r", "subject": {"resource": "device", "event": "create"}}],
        "actions": [{"action_id": "a", "rule_id": "r", "channel": "AMQP_FORWARDING",
                     "channel_detail": {"amqp_forwarding": {"queue_name": "q-12345678",
                                                            "url": url}}}]}))
    return subprocess.run([PYTHON, "-m", "engine", "check", str(path)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("url, reason", [
    ("amqpx://guest:s3cret@127.0.0.1:5672/", "must be an amqp:// or amqps:// URL"),
    ("http://guest:s3cret@127.0.0.1:5672/", "must be an amqp:// or amqps:// URL"),
    ("amqp://guest:s3cret@127.0.0.1:notaport/", "port of the URL must be a number"),
    ("amqp://guest:s3cret@127.0.0.1:70000/", "port of the URL must be a number"),
    ("amqp:///vhost", "needs a host"),
])
def test_amqp_destination_url_is_checked(tmp_path, url, reason):
    res = _check(tmp_path, url)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "actions[0].channel_detail.amqp_forwarding.url" in out and reason in out
    assert "s3cret" not in out and "Traceback" not in out


def test_good_amqp_destination_url_passes(tmp_path):
    res = _check(tmp_path, "amqps://guest:s3cret@broker.example:5671/vh")
    assert res.returncode == 0, res.stdout + res.stderr
