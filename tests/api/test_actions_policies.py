"""Actions (IoTDA 1.4.8.6-1.4.8.10), flow control (1.4.22) and backlog
(1.4.21) policies, and the per-project quotas."""

from __future__ import annotations

import pytest

from engine.config.limits import ApiLimits
from tests.api.conftest import HTTP_DETAIL, A

MYSQL = {"mysql_forwarding": {
    "address": {"ip": "127.0.0.1", "port": 3306}, "db_name": "iot", "username": "u",
    "password": "mysql-secret-1", "table_name": "t",
    "column_mappings": [{"column_name": "device", "json_key": "notify_data.header.device_id"}],
}}


async def test_action_create_show_list_update_delete(client):
    rule = await client.rule(app_type="APP", app_id="space1")
    action = await client.action(rule["rule_id"])
    assert set(action) == {"action_id", "rule_id", "app_id", "channel", "channel_detail"}
    assert action["app_id"] == "space1"  # IoTDA shows the rule's resource space
    assert action["channel_detail"]["http_forwarding"]["url"] == "http://127.0.0.1:9/hook"
    assert await client.ok("GET", f"{A}/actions/{action['action_id']}") == action

    listed = await client.ok("GET", f"{A}/actions?rule_id={rule['rule_id']}")
    assert (listed["count"], listed["actions"]) == (1, [action])

    moved = await client.ok("PUT", f"{A}/actions/{action['action_id']}", {
        "channel": "AMQP_FORWARDING",
        "channel_detail": {"amqp_forwarding": {"queue_name": "iot.queue.1"}}})
    assert moved["channel"] == "AMQP_FORWARDING"
    assert moved["channel_detail"]["amqp_forwarding"]["queue_name"] == "iot.queue.1"

    await client.ok("DELETE", f"{A}/actions/{action['action_id']}", status=204)
    status, error = await client.call("GET", f"{A}/actions/{action['action_id']}")
    assert (status, error["error_code"]) == (404, "IOTDA.010020")


async def test_action_of_unknown_rule_is_404(client):
    status, error = await client.call("POST", f"{A}/actions", {
        "rule_id": "no-such-rule", "channel": "HTTP_FORWARDING", "channel_detail": HTTP_DETAIL})
    assert (status, error["error_code"]) == (404, "IOTDA.010002")


@pytest.mark.parametrize(("change", "fragment"), [
    ({"channel": "OBS_FORWARDING"}, "channel OBS_FORWARDING is not supported by this engine"),
    ({"channel": "CARRIER_PIGEON"}, "unknown channel 'CARRIER_PIGEON'"),
    ({"channel_detail": {"http_forwarding": {"url": "ftp://x"}}},
     "channel_detail.http_forwarding.url"),
    ({"channel_detail": {"amqp_forwarding": {"queue_name": "q1234567"}}},
     "channel_detail.amqp_forwarding: unknown field"),
    ({"channel": "FILE_FORWARDING",
      "channel_detail": {"file_forwarding": {"path": "/tmp/x.jsonl"}}}, "FILE_FORWARDING"),
])
async def test_invalid_action_is_400(client, change, fragment):
    rule = await client.rule()
    body = {"rule_id": rule["rule_id"], "channel": "HTTP_FORWARDING",
            "channel_detail": HTTP_DETAIL, **change}
    status, error = await client.call("POST", f"{A}/actions", body)
    assert (status, error["error_code"]) == (400, "IOTDA.010005")
    assert fragment in error["error_msg"]


async def test_action_filters(client):
    r1 = await client.rule()
    r2 = await client.rule(app_type="APP", app_id="space2")
    a1 = await client.action(r1["rule_id"])
    a2 = await client.action(r2["rule_id"], channel="MYSQL_FORWARDING", channel_detail=MYSQL)

    async def ids(query: str) -> list[str]:
        return [a["action_id"] for a in (await client.ok("GET", f"{A}/actions?{query}"))["actions"]]

    assert await ids("") == [a2["action_id"], a1["action_id"]]
    assert await ids("channel=MYSQL_FORWARDING") == [a2["action_id"]]
    assert await ids("app_type=APP") == [a2["action_id"]]
    assert await ids("app_type=GLOBAL") == [a1["action_id"]]
    assert await ids("app_id=space2") == [a2["action_id"]]
    assert await ids(f"rule_id={r1['rule_id']}&channel=MYSQL_FORWARDING") == []


async def test_secrets_are_masked_and_a_masked_value_sent_back_keeps_the_secret(client, store):
    rule = await client.rule()
    action = await client.action(rule["rule_id"], channel="MYSQL_FORWARDING", channel_detail=MYSQL)
    shown = action["channel_detail"]["mysql_forwarding"]
    assert shown["password"] == "**********"

    # GET, change the table, PUT it all back (masked password included).
    detail = {"mysql_forwarding": {**MYSQL["mysql_forwarding"], "password": shown["password"],
                                   "table_name": "t2"}}
    await client.ok("PUT", f"{A}/actions/{action['action_id']}", {"channel_detail": detail})
    (stored,) = [r for r in await store.load("proj-a") if r.kind == "actions"]
    assert stored.body["channel_detail"]["mysql_forwarding"]["password"] == "mysql-secret-1"
    assert stored.body["channel_detail"]["mysql_forwarding"]["table_name"] == "t2"

    # A mask where nothing is stored cannot become the password.
    http = {"http_forwarding": {"url": "http://127.0.0.1:9/", "token": "**********"}}
    status, error = await client.call("PUT", f"{A}/actions/{action['action_id']}",
                                      {"channel": "HTTP_FORWARDING", "channel_detail": http})
    assert status == 400 and "token: a masked secret" in error["error_msg"]


async def test_secret_never_appears_in_an_error(client):
    rule = await client.rule()
    detail = {"mysql_forwarding": {**MYSQL["mysql_forwarding"], "password": "x" * 300}}
    status, error = await client.call("POST", f"{A}/actions", {
        "rule_id": rule["rule_id"], "channel": "MYSQL_FORWARDING", "channel_detail": detail})
    assert status == 400 and "password" in error["error_msg"]
    assert "x" * 300 not in error["error_msg"]


# ------------------------------------------------------------------ policies


async def test_flowcontrol_policy_lifecycle(client):
    policy = await client.ok("POST", f"{A}/flowcontrol-policy", {
        "policy_name": "p1", "description": "d", "scope": "CHANNEL",
        "scope_value": "HTTP_FORWARDING", "limit": 100}, 201)
    assert set(policy) == {"policy_id", "policy_name", "description", "scope", "scope_value", "limit"}
    pid = policy["policy_id"]
    assert await client.ok("GET", f"{A}/flowcontrol-policy/{pid}") == policy
    updated = await client.ok("PUT", f"{A}/flowcontrol-policy/{pid}", {"limit": 7})
    assert updated == {**policy, "limit": 7}
    status, error = await client.call("PUT", f"{A}/flowcontrol-policy/{pid}", {"scope": "USER"})
    assert status == 400 and "scope: cannot be changed" in error["error_msg"]

    user = await client.ok("POST", f"{A}/flowcontrol-policy", {"limit": 10}, 201)
    listed = await client.ok("GET", f"{A}/flowcontrol-policy?scope=CHANNEL")
    assert [p["policy_id"] for p in listed["flowcontrol_policies"]] == [pid]
    listed = await client.ok("GET", f"{A}/flowcontrol-policy")
    assert listed["count"] == 2 and listed["flowcontrol_policies"][0] == user

    await client.ok("DELETE", f"{A}/flowcontrol-policy/{pid}", status=204)
    status, error = await client.call("GET", f"{A}/flowcontrol-policy/{pid}")
    assert (status, error["error_code"]) == (404, "IOTDA.010046")


async def test_flowcontrol_policy_errors(client):
    status, error = await client.call("POST", f"{A}/flowcontrol-policy",
                                      {"scope": "RULE", "scope_value": "missing"})
    assert (status, error["error_code"]) == (400, "IOTDA.010048")
    assert "no rule has rule_id 'missing'" in error["error_msg"]
    await client.ok("POST", f"{A}/flowcontrol-policy", {"scope": "USER"}, 201)
    status, error = await client.call("POST", f"{A}/flowcontrol-policy", {"scope": "USER"})
    assert status == 400 and "already applies to scope USER" in error["error_msg"]


async def test_backlog_policy_lifecycle_and_defaults(client):
    policy = await client.ok("POST", f"{A}/backlog-policy", {"policy_name": "keep"}, 201)
    assert (policy["backlog_size"], policy["backlog_time"]) == (1073741823, 86399)
    pid = policy["policy_id"]
    updated = await client.ok("PUT", f"{A}/backlog-policy/{pid}",
                              {"backlog_size": 100, "backlog_time": 100})
    assert (updated["backlog_size"], updated["backlog_time"]) == (100, 100)
    listed = await client.ok("GET", f"{A}/backlog-policy?policy_name=keep")
    assert listed["backlog_policies"] == [updated]
    status, error = await client.call("PUT", f"{A}/backlog-policy/{pid}", {"backlog_time": 86400})
    assert (status, error["error_code"]) == (400, "IOTDA.010045")
    await client.ok("DELETE", f"{A}/backlog-policy/{pid}", status=204)
    status, error = await client.call("DELETE", f"{A}/backlog-policy/{pid}")
    assert (status, error["error_code"]) == (404, "IOTDA.010043")


# ------------------------------------------------------------------ quotas


class TestQuotas:
    @pytest.fixture
    def limits(self) -> ApiLimits:
        return ApiLimits(rate=1000, burst=1000, max_rules=3, max_actions_per_rule=2,
                         max_flowcontrol_policies=1, max_backlog_policies=1)

    async def test_quotas(self, client):
        rules = [await client.rule() for _ in range(3)]
        status, error = await client.call("POST", f"{A}/rules", {"subject": rules[0]["subject"]})
        assert (status, error["error_code"]) == (403, "IOTDA.010003")

        for _ in range(2):
            await client.action(rules[0]["rule_id"])
        status, error = await client.call("POST", f"{A}/actions", {
            "rule_id": rules[0]["rule_id"], "channel": "HTTP_FORWARDING", "channel_detail": HTTP_DETAIL})
        assert (status, error["error_code"]) == (403, "IOTDA.010003")
        await client.action(rules[1]["rule_id"])  # the limit is per rule

        await client.ok("POST", f"{A}/flowcontrol-policy", {}, 201)
        status, error = await client.call("POST", f"{A}/flowcontrol-policy",
                                          {"scope": "CHANNEL", "scope_value": "HTTP_FORWARDING"})
        assert (status, error["error_code"]) == (403, "IOTDA.010049")

        await client.ok("POST", f"{A}/backlog-policy", {}, 201)
        status, _ = await client.call("POST", f"{A}/backlog-policy", {"scope": "RULE",
                                                                      "scope_value": rules[0]["rule_id"]})
        assert status == 403


@pytest.mark.parametrize("scope", [{}, ["USER"], 3])
async def test_non_string_scope_is_400_not_500(client, scope):
    # Found by fuzzing: engine.config's cross-object check hashes the scope.
    for path in ("flowcontrol-policy", "backlog-policy"):
        status, error = await client.call("POST", f"{A}/{path}", {"scope": scope})
        assert status == 400 and "scope" in error["error_msg"]
