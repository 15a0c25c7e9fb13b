"""A reload applies changed flow-control policies to running actions;
a reload that changes backlog policies is refused (they need a restart)."""

from __future__ import annotations

import logging

from engine.config import validate_config_dict
from engine.runtime.worker import Worker


def config(tmp_path, **sections):
    return validate_config_dict({
        "rules": [{"rule_id": "r1", "subject": {"resource": "device", "event": "create"}}],
        "actions": [{"action_id": "a1", "rule_id": "r1", "channel": "HTTP_FORWARDING",
                     "channel_detail": {"http_forwarding": {"url": "http://127.0.0.1:9/x"}}}],
        "worker": {"state_dir": str(tmp_path / "state")}, **sections})


async def test_flow_control_change_applies_at_the_swap(tmp_path, caplog):
    worker = Worker.from_config(config(tmp_path), sources=[], serve_metrics=False)
    reloader = worker.enable_file_reload([])
    [runner] = worker.runners
    assert runner.limiter.policy_ids == []
    await runner.open()
    try:
        flow = [{"policy_id": "f1", "scope": "RULE", "scope_value": "r1", "limit": 5}]
        with caplog.at_level(logging.WARNING):
            assert await reloader.apply(config(
                tmp_path, flowcontrol_policies=flow,
                backlog_policies=[{"policy_id": "b1", "backlog_size": 0}])) is False
        assert "changes backlog_policies, which only a restart applies" in caplog.text
        assert runner.limiter.policy_ids == []  # nothing of it applied
        assert await reloader.apply(config(tmp_path, flowcontrol_policies=flow)) is True
        assert worker.runners == [runner]  # the same action keeps running
        assert runner.limiter.policy_ids == ["f1"]
        assert await reloader.apply(config(tmp_path)) is True
        assert runner.limiter.policy_ids == []
    finally:
        await runner.close()
