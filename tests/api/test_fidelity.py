"""IoTDA fidelity (issue 18): the seed's field types, id formats, list-filter
constraints and response shapes, checked through the official
`huaweicloudsdkiotda` client where it can express the request (it sends
whatever Python values it is given, so loose types too) and with raw
requests otherwise.

The SDK tests share one `engine api` process; each uses its own objects.
"""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path

import orjson
import pytest
import requests

from engine.api import service
from engine.destinations.base import Record
from engine.policies.backlog import Backlog
from tests.api.conftest import AK_A, SK_A, TOKEN_A, A, free_port, running_api, sdk_client

REPO = Path(__file__).resolve().parents[2]
ENV = {"FIDELITY_TOKEN": TOKEN_A, "FIDELITY_SK": SK_A}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`engine api` with project proj-a (token and AK/SK); yields (url, output
    lines once it stopped)."""
    tmp = tmp_path_factory.mktemp("fidelity")
    config = tmp / "engine.yaml"
    config.write_text(f"""\
api:
  listen: "127.0.0.1:{free_port()}"
  storage: "sqlite://{tmp / 'config.db'}"
  projects:
    proj-a:
      tokens: ["${{FIDELITY_TOKEN}}"]
      access_keys: [{{ak: "{AK_A}", sk: "${{FIDELITY_SK}}"}}]
""")
    with running_api(config, ENV, "--limit", "rate=100000", "--limit", "burst=100000") \
            as (url, output):
        yield url, output


@pytest.fixture
def sdk(server):
    return sdk_client(server[0])


def sdk_error(call):
    """(status, error_code, error_msg) of an SDK call that must fail."""
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException

    with pytest.raises(ClientRequestException) as caught:
        call()
    return caught.value.status_code, caught.value.error_code, caught.value.error_msg


def new_rule(sdk, **fields):
    from huaweicloudsdkiotda.v5 import AddRuleReq, CreateRoutingRuleRequest, RoutingRuleSubject

    return sdk.create_routing_rule(CreateRoutingRuleRequest(body=AddRuleReq(
        subject=RoutingRuleSubject(resource="device.status", event="update"), app_type="GLOBAL",
        **fields)))


# ------------------------------------------------------------------ 1. several backlog policies


def test_several_backlog_policies_per_project_through_the_sdk(sdk):
    from huaweicloudsdkiotda.v5 import (
        AddBacklogPolicy,
        CreateRoutingBacklogPolicyRequest,
        DeleteRoutingBacklogPolicyRequest,
        ListRoutingBacklogPolicyRequest,
    )

    names = [f"keep_{uuid.uuid4().hex[:8]}" for _ in range(3)]
    created = [sdk.create_routing_backlog_policy(CreateRoutingBacklogPolicyRequest(
        body=AddBacklogPolicy(policy_name=name, backlog_size=1000 * (i + 1), backlog_time=60)))
        for i, name in enumerate(names)]
    assert len({p.policy_id for p in created}) == 3
    listed = sdk.list_routing_backlog_policy(ListRoutingBacklogPolicyRequest())
    assert {p.policy_name for p in listed.backlog_policies} >= set(names)
    for policy in created:
        sdk.delete_routing_backlog_policy(DeleteRoutingBacklogPolicyRequest(
            policy_id=policy.policy_id))


def test_backlog_policy_quota_is_reachable_through_the_sdk(sdk):
    # The engine's quota (max_backlog_policies, default 10) is now what stops
    # an SDK user, not a one-per-scope rule.
    from huaweicloudsdkiotda.v5 import (
        AddBacklogPolicy,
        CreateRoutingBacklogPolicyRequest,
        DeleteRoutingBacklogPolicyRequest,
        ListRoutingBacklogPolicyRequest,
    )

    def create():
        return sdk.create_routing_backlog_policy(CreateRoutingBacklogPolicyRequest(
            body=AddBacklogPolicy(backlog_time=600)))

    existing = sdk.list_routing_backlog_policy(ListRoutingBacklogPolicyRequest(limit=50)).count
    created = [create() for _ in range(10 - existing)]
    assert sdk_error(create)[:2] == (403, "IOTDA.010003")
    for policy in created:
        sdk.delete_routing_backlog_policy(DeleteRoutingBacklogPolicyRequest(
            policy_id=policy.policy_id))


class _DeadLetters:
    def __init__(self) -> None:
        self.entries: list[dict] = []

    async def write(self, entries: list[dict]) -> None:
        self.entries += entries


async def test_several_backlog_policies_combine_strictest_bound_wins(client, store, tmp_path):
    # Three tenant-wide policies as an SDK user creates them (no scope): each
    # bounds every action, so the smallest size and the shortest time apply.
    await client.ok("POST", f"{A}/backlog-policy", {"backlog_size": 1_000_000,
                                                    "backlog_time": 100}, 201)
    await client.ok("POST", f"{A}/backlog-policy", {"backlog_size": 600,
                                                    "backlog_time": 1000}, 201)
    config = service.project_config(await store.load("proj-a"), "proj-a")
    assert len(config.backlog_policies) == 2

    now = [1000.0]
    dead = _DeadLetters()
    backlog = Backlog(str(tmp_path / "backlog.db"), dead, config.backlog_policies,
                      clock=lambda: now[0])
    backlog.add_action("a1", "r1", "HTTP_FORWARDING")
    await backlog.open()
    try:
        records = [Record({"n": i, "pad": "x" * 40}, "d1", None, "r1", "a1") for i in range(20)]
        await backlog.append("a1", records)
        count, size = backlog.size("a1")
        assert size <= 600 and 0 < count < 20  # the 600-byte policy, not the 1 MB one
        assert len(dead.entries) == 20 - count
        now[0] += 150  # older than the 100 s policy, younger than the 1000 s one
        await backlog.expire()
        assert backlog.size("a1") == (0, 0) and len(dead.entries) == 20
    finally:
        await backlog.close()

    # A 0 in any of them turns stacking off (IoTDA: "logs are not stacked").
    await client.ok("POST", f"{A}/backlog-policy", {"backlog_size": 0}, 201)
    config = service.project_config(await store.load("proj-a"), "proj-a")
    off = Backlog(str(tmp_path / "off.db"), dead, config.backlog_policies)
    off.add_action("a1", "r1", "HTTP_FORWARDING")
    assert not off.stacking("a1")


# ------------------------------------------------------------------ 2. strict types


@pytest.mark.parametrize("value", ["yes", 1, "true", 0])
def test_loose_booleans_are_400_on_update(sdk, value):
    from huaweicloudsdkiotda.v5 import UpdateRoutingRuleRequest, UpdateRuleReq

    rule = new_rule(sdk)
    status, code, message = sdk_error(lambda: sdk.update_routing_rule(UpdateRoutingRuleRequest(
        rule_id=rule.rule_id, body=UpdateRuleReq(active=value))))
    assert (status, code) == (400, "IOTDA.010000") and "active: must be true or false" \
        in message


@pytest.mark.parametrize("value", ["yes", 1, "true", 0])
async def test_loose_booleans_are_400_on_create(client, value):
    # `active` on create is an extension the SDK's AddRuleReq cannot send.
    status, error = await client.call("POST", f"{A}/rules", {
        "subject": {"resource": "device", "event": "create"}, "active": value})
    assert (status, error["error_code"]) == (400, "IOTDA.010000")
    assert "active: must be true or false" in error["error_msg"]
    assert (await client.ok("GET", f"{A}/rules"))["count"] == 0


@pytest.mark.parametrize(("path", "body", "code", "field"), [
    ("flowcontrol-policy", {"scope": "CHANNEL", "scope_value": "HTTP_FORWARDING", "limit": "10"},
     "IOTDA.010048", "limit"),
    ("flowcontrol-policy", {"scope": "CHANNEL", "scope_value": "AMQP_FORWARDING", "limit": 10.0},
     "IOTDA.010048", "limit"),
    ("backlog-policy", {"backlog_size": "100"}, "IOTDA.010045", "backlog_size"),
    ("backlog-policy", {"backlog_time": True}, "IOTDA.010045", "backlog_time"),
    ("rules", {"subject": {"resource": "device", "event": "create"}, "select": 5},
     "IOTDA.010000", "select"),
])
async def test_loose_numbers_and_strings_are_400(client, path, body, code, field):
    status, error = await client.call("POST", f"{A}/{path}", body)
    assert (status, error["error_code"]) == (400, code), error
    assert f"{field}: must be " in error["error_msg"]


@pytest.mark.parametrize(("channel", "detail", "field"), [
    ("HTTP_FORWARDING", {"http_forwarding": {"url": "http://127.0.0.1:9/", "sni_enable": "false"}},
     "channel_detail.http_forwarding.sni_enable"),
    ("MYSQL_FORWARDING", {"mysql_forwarding": {
        "address": {"ip": "127.0.0.1", "port": "3306"}, "db_name": "iot", "username": "u",
        "password": "p", "table_name": "t",
        "column_mappings": [{"column_name": "d", "json_key": "notify_data.header.device_id"}]}},
     "channel_detail.mysql_forwarding.address.port"),
])
async def test_loose_types_in_channel_detail_are_400(client, channel, detail, field):
    rule = await client.rule()
    body = {"rule_id": rule["rule_id"], "channel": channel, "channel_detail": detail}
    status, error = await client.call("POST", f"{A}/actions", body)
    assert (status, error["error_code"]) == (400, "IOTDA.010005"), error
    assert f"{field}: must be " in error["error_msg"]


# ------------------------------------------------------------------ 3. path ids


BAD_IDS = ["a" * 37, "a.b", "a b", "ü"]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize(("path", "name"), [
    ("rules", "rule_id"), ("actions", "action_id"), ("flowcontrol-policy", "policy_id"),
    ("backlog-policy", "policy_id"),
])
async def test_malformed_path_ids_are_400_not_404(client, path, name, bad):
    for method, body in (("GET", None), ("PUT", {"description": "d"}), ("DELETE", None)):
        status, error = await client.call(method, f"{A}/{path}/{bad}", body)
        assert (status, error["error_code"]) == (400, "IOTDA.000006"), (method, error)
        assert f"'{name}'" in error["error_msg"]
    # 36 characters of the alphabet is a well-formed id: unknown, so 404.
    status, _ = await client.call("GET", f"{A}/{path}/{'a' * 36}")
    assert status == 404


async def test_malformed_rule_id_in_the_extensions_is_400(client):
    for method, suffix, body in (("POST", "test", {"event": {}}), ("GET", "metrics", None)):
        status, error = await client.call(method, f"{A}/rules/a.b/{suffix}", body)
        assert (status, error["error_code"]) == (400, "IOTDA.000006")


def test_malformed_path_id_through_the_sdk(sdk):
    from huaweicloudsdkiotda.v5 import ShowRoutingRuleRequest, ShowRuleActionRequest

    assert sdk_error(lambda: sdk.show_routing_rule(ShowRoutingRuleRequest(rule_id="a" * 37)))[:2] \
        == (400, "IOTDA.000006")
    assert sdk_error(lambda: sdk.show_rule_action(ShowRuleActionRequest(action_id="a.b")))[:2] \
        == (400, "IOTDA.000006")


# ------------------------------------------------------------------ 4. action without rule_id


def test_action_without_rule_id_is_400(sdk):
    from huaweicloudsdkiotda.v5 import (
        AddActionReq,
        ChannelDetail,
        CreateRuleActionRequest,
        HttpForwarding,
    )

    status, code, message = sdk_error(lambda: sdk.create_rule_action(CreateRuleActionRequest(
        body=AddActionReq(channel="HTTP_FORWARDING", channel_detail=ChannelDetail(
            http_forwarding=HttpForwarding(url="http://127.0.0.1:9/h"))))))
    assert (status, code) == (400, "IOTDA.010005")
    assert "rule_id: required field is missing" in message


async def test_action_with_rule_id_null_is_400(client):
    status, error = await client.call("POST", f"{A}/actions", {
        "rule_id": None, "channel": "HTTP_FORWARDING",
        "channel_detail": {"http_forwarding": {"url": "http://127.0.0.1:9/h"}}})
    assert (status, error["error_code"]) == (400, "IOTDA.010005")


# ------------------------------------------------------------------ 5. list filters


@pytest.mark.parametrize(("path", "query", "name"), [
    ("rules", "resource=foo", "resource"),
    ("rules", "event=explode", "event"),
    ("rules", "resource=device.status&event=create", "event"),
    ("rules", "app_type=FOO", "app_type"),
    ("rules", "app_id=a.b", "app_id"),
    ("rules", f"rule_name={'n' * 257}", "rule_name"),
    ("rules", "active=yes", "active"),
    ("actions", "channel=FOO", "channel"),
    ("actions", "app_type=FOO", "app_type"),
    ("actions", f"rule_id={'r' * 37}", "rule_id"),
    ("flowcontrol-policy", "scope=FOO", "scope"),
    ("flowcontrol-policy", f"scope_value={'v' * 257}", "scope_value"),
    ("flowcontrol-policy", f"policy_name={'p' * 257}", "policy_name"),
    ("backlog-policy", "policy_name=has%20space", "policy_name"),
])
async def test_malformed_list_filters_are_400(client, path, query, name):
    status, error = await client.call("GET", f"{A}/{path}?{query}")
    assert (status, error["error_code"]) == (400, "IOTDA.000006"), error
    assert f"'{name}'" in error["error_msg"]


async def test_well_formed_filters_still_filter(client):
    rule = await client.rule()
    await client.action(rule["rule_id"])
    for path, query, count in (
        ("rules", "resource=device.status&event=update&active=false", 1),
        ("rules", "resource=device", 0),
        ("actions", "channel=HTTP_FORWARDING&app_type=GLOBAL", 1),
        ("actions", "channel=OBS_FORWARDING", 0),  # IoTDA's, not supported here: no match
        ("flowcontrol-policy", "scope=RULE", 0),
    ):
        listed = await client.ok("GET", f"{A}/{path}?{query}")
        assert listed["count"] == count, (path, query)


def test_malformed_filter_through_the_sdk(sdk):
    from huaweicloudsdkiotda.v5 import (
        ListRoutingFlowControlPolicyRequest,
        ListRoutingRulesRequest,
        ListRuleActionsRequest,
    )

    for call in (
        lambda: sdk.list_routing_rules(ListRoutingRulesRequest(resource="foo")),
        lambda: sdk.list_routing_rules(ListRoutingRulesRequest(rule_name="x" * 257)),
        lambda: sdk.list_rule_actions(ListRuleActionsRequest(channel="FOO")),
        lambda: sdk.list_routing_flow_control_policy(ListRoutingFlowControlPolicyRequest(
            scope="FOO")),
    ):
        assert sdk_error(call)[:2] == (400, "IOTDA.000006")


# ------------------------------------------------------------------ 6. HTTP channel_detail

# IoTDA's HttpForwarding (seed Table 1-188) and the engine options docs/api.md
# lists as extensions.
IOTDA_HTTP = {"url", "cert_id", "cn_name", "sni_enable", "signature_enable", "token"}
HTTP_EXTENSIONS = {"ca_file", "verify_tls", "timeout_s", "max_concurrency"}


def test_http_channel_detail_extensions_and_masked_token_are_documented(sdk, server):
    from huaweicloudsdkiotda.v5 import (
        AddActionReq,
        ChannelDetail,
        CreateRuleActionRequest,
        HttpForwarding,
        ShowRuleActionRequest,
    )

    rule = new_rule(sdk)
    action = sdk.create_rule_action(CreateRuleActionRequest(body=AddActionReq(
        rule_id=rule.rule_id, channel="HTTP_FORWARDING", channel_detail=ChannelDetail(
            http_forwarding=HttpForwarding(url="http://127.0.0.1:9/h", signature_enable=True,
                                           token="secrettoken123")))))
    shown = sdk.show_rule_action(ShowRuleActionRequest(action_id=action.action_id))
    assert shown.channel_detail.http_forwarding.token == "**********"
    raw = requests.get(f"{server[0]}{A}/actions/{action.action_id}",
                       headers={"X-Auth-Token": TOKEN_A}, timeout=10).json()
    fields = set(raw["channel_detail"]["http_forwarding"])
    assert fields <= IOTDA_HTTP | HTTP_EXTENSIONS
    assert fields - IOTDA_HTTP == {"verify_tls", "timeout_s", "max_concurrency"}  # ca_file unset
    assert raw["channel_detail"]["http_forwarding"]["token"] == "**********"

    # docs/api.md lists every engine field and says why the token is masked.
    docs = (REPO / "docs" / "api.md").read_text()
    differences = docs[docs.index("## Differences from IoTDA"):]
    for name in HTTP_EXTENSIONS:
        assert f"`{name}`" in differences, name
    assert re.search(r"masked.*safer", differences, re.S)


# ------------------------------------------------------------------ 7. no nulls


def _nulls(value, path=""):
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nulls(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nulls(v, f"{path}[{i}]")]
    return [path] if value is None else []


async def test_unset_optional_fields_are_omitted_not_null(client):
    rule = await client.ok("POST", f"{A}/rules",
                           {"subject": {"resource": "device", "event": "create"}}, 201)
    assert set(rule) == {"rule_id", "subject", "app_type", "active"}
    action = await client.action(rule["rule_id"])
    flow = await client.ok("POST", f"{A}/flowcontrol-policy", {"limit": 5}, 201)
    assert set(flow) == {"policy_id", "scope", "limit"}
    backlog = await client.ok("POST", f"{A}/backlog-policy", {}, 201)
    for body in (
        rule, action, flow, backlog,
        await client.ok("GET", f"{A}/rules/{rule['rule_id']}"),
        await client.ok("PUT", f"{A}/rules/{rule['rule_id']}", {"active": True}),
        await client.ok("GET", f"{A}/rules"),
        await client.ok("GET", f"{A}/actions"),
        await client.ok("GET", f"{A}/flowcontrol-policy"),
        await client.ok("GET", f"{A}/backlog-policy"),
    ):
        assert _nulls(body) == [], body


def test_sdk_reads_responses_without_the_omitted_fields(sdk):
    from huaweicloudsdkiotda.v5 import ShowRoutingRuleRequest

    rule = new_rule(sdk)
    shown = sdk.show_routing_rule(ShowRoutingRuleRequest(rule_id=rule.rule_id))
    assert shown.rule_id == rule.rule_id and shown.rule_name is None and shown.select is None


# ------------------------------------------------------------------ 8. over-long URL


def test_overlong_url_gets_the_iotda_shape_and_one_log_line(tmp_path):
    config = tmp_path / "engine.yaml"
    config.write_text(f"""\
api:
  listen: "127.0.0.1:{free_port()}"
  projects:
    proj-a: {{tokens: ["${{FIDELITY_TOKEN}}"]}}
""")
    with running_api(config, ENV) as (url, output):
        host, port = url.removeprefix("http://").split(":")
        path = f"{A}/rules?rule_name=" + "x" * 10_000
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Auth-Token: {TOKEN_A}\r\n"
                         "Connection: close\r\n\r\n".encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        # The server still answers normally afterwards.
        ok = requests.get(f"{url}{A}/rules", headers={"X-Auth-Token": TOKEN_A}, timeout=10)
        assert ok.status_code == 200
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"
    assert b"content-type: application/json" in head.lower()
    error = orjson.loads(body)
    assert error["error_code"] == "IOTDA.000008" and "8190 bytes" in error["error_msg"]
    assert "xxxx" not in error["error_msg"]  # the request is not echoed

    refused = [line for line in output if "malformed HTTP request" in line]
    assert len(refused) == 1 and "WARNING" in refused[0] and "xxxx" not in refused[0], output
    assert not [line for line in output if "Traceback" in line or " ERROR " in line], output
