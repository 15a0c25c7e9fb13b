"""Error actions (`error_action: true`, Alibaba's ErrorActionFlag): an
action that receives what the rule's other actions could not deliver, and
not the rule's outputs. The dead-letter store keeps every entry as before."""

from __future__ import annotations

import asyncio
import json

import yaml
from aiohttp import web

from engine.config import load_config
from engine.runtime.worker import Worker
from tests.runtime.support import ListSource

EVENT = {"resource": "device.status", "event": "update",
         "notify_data": {"header": {"device_id": "d1"}, "body": {"status": "ONLINE"}}}


async def test_refused_outputs_reach_the_error_action_and_the_store(tmp_path):
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=400, text="bad payload")   # not retryable

    app = web.Application()
    app.router.add_post("/in", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    errors = tmp_path / "errors.jsonl"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({
        "rules": [{"rule_id": "status", "select": "notify_data.header.device_id AS device",
                   "subject": {"resource": "device.status", "event": "update"}}],
        "actions": [
            {"action_id": "hook", "rule_id": "status", "channel": "HTTP_FORWARDING",
             "channel_detail": {"http_forwarding": {"url": f"http://127.0.0.1:{port}/in"}}},
            {"action_id": "errors", "rule_id": "status", "channel": "FILE_FORWARDING",
             "error_action": True,
             "channel_detail": {"file_forwarding": {"path": str(errors)}}}],
        "worker": {"state_dir": str(tmp_path / "state"), "linger_ms": 0}}))
    source = ListSource([[json.dumps(EVENT).encode()] * 3], name="list")
    worker = Worker.from_config(load_config([path]), sources=[source])
    try:
        await asyncio.wait_for(worker.run(), 60)
    finally:
        await runner.cleanup()
    rows = [json.loads(line) for line in errors.read_text().splitlines()]
    # Only the failures, not the three outputs themselves: each the dead letter.
    assert len(rows) == 3
    for row in rows:
        assert set(row) == {"time", "reason", "source", "rule_id", "action_id", "key", "payload"}
        assert (row["action_id"], row["rule_id"], row["key"]) == ("hook", "status", "d1")
        assert row["reason"] == "HTTP 400 Bad Request" and row["payload"] == {"device": "d1"}
    stored = (tmp_path / "state" / "dead-letters.jsonl").read_text().splitlines()
    assert len(stored) == 3


def test_error_action_is_a_rule_file_field_not_an_iotda_one():
    from engine.api.service import ACTIONS

    assert "error_action" in ACTIONS.file_only


def test_alibaba_error_actions_map_onto_error_action():
    from engine.api.aliyun.mapping import engine_action

    action = {"Id": 1002, "RuleId": 1000, "Type": "HTTP", "ErrorActionFlag": True,
              "Configuration": json.dumps({"url": "http://127.0.0.1:9/errors"})}
    item = engine_action(action)
    assert item is not None and item["error_action"] is True
    assert item["channel"] == "HTTP_FORWARDING" and item["rule_id"] == "aliyun-1000"
    assert "error_action" not in engine_action({**action, "ErrorActionFlag": False})
