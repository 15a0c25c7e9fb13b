"""The API's test endpoints with `explain: true`, and their lint warnings
(what the console shows as you type)."""

from __future__ import annotations

from tests.api.conftest import RULE, A

EVENT = {"resource": "device.status", "event": "update",
         "notify_data": {"header": {"device_id": "d1"}, "body": {"status": "OFFLINE"}}}


async def test_explain_and_warnings_of_a_rule_text(client):
    body = await client.ok("POST", f"{A}/test", {
        "where": 'notify_data.body.status = "ONLINE"', "event": EVENT, "explain": True,
        "subject": {"resource": "device.status", "event": "update"}})
    assert body["result"] == "no_match"
    assert body["explain"]["result"] == "UNKNOWN"
    assert body["explain"]["decisive"] == "notify_data.body.status = ONLINE"
    assert {"text": "notify_data.body.status", "value": "OFFLINE", "type": "string"} in \
        body["explain"]["nodes"]
    assert any("single quotes" in w["message"] for w in body["warnings"])
    plain = await client.ok("POST", f"{A}/test", {"where": "notify_data.body.status = 'OFFLINE'",
                                                  "event": EVENT})
    assert plain == {"result": "match", "output": EVENT, "warnings": []}


async def test_a_stored_rule_is_explained_with_its_subject(client):
    rule = await client.rule()  # device.status/update, status = 'ONLINE'
    other = {**EVENT, "resource": "device.message", "event": "report"}
    body = await client.ok("POST", f"{A}/rules/{rule['rule_id']}/test",
                           {"event": other, "explain": True})
    assert body["result"] == "no_match"
    assert body["explain"]["summary"].startswith("subject mismatch")
    assert RULE["where"]


async def test_a_stored_rule_is_tested_with_its_app_scope_as_a_worker_runs_it(client):
    rule = await client.rule(app_type="APP", app_id="app1")
    online = {**EVENT, "notify_data": {"header": {"device_id": "d1", "app_id": "app2"},
                                       "body": {"status": "ONLINE"}}}
    body = await client.ok("POST", f"{A}/rules/{rule['rule_id']}/test", {"event": online})
    assert body["result"] == "no_match" and "output" not in body
    assert body["scope"] == "app scope: the rule is for app_id 'app1', the event's is 'app2'"
    online["notify_data"]["header"]["app_id"] = "app1"
    body = await client.ok("POST", f"{A}/rules/{rule['rule_id']}/test", {"event": online})
    assert body["result"] == "match" and "scope" not in body
