"""`engine api` as its own process, driven by the official Huawei Cloud
Python SDK (huaweicloudsdkiotda with AK/SK signing); `engine import` and
`engine export`; a change made by another process reaching a subscriber.

(When the worker takes its rules from the store, the SDK test will also
check that the running worker forwards with the rule it activated.)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.api.storage import SqliteStore
from tests.api.conftest import AK_A, SK_A, TOKEN_A, free_port, running_api, sdk_client

REPO = Path(__file__).resolve().parents[2]


def engine(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "engine.yaml"
    path.write_text(f"""\
api:
  listen: "127.0.0.1:{free_port()}"
  storage: "sqlite://{tmp_path / 'config.db'}"
  projects:
    proj-a:
      tokens: ["${{PROJ_A_TOKEN}}"]
      access_keys: [{{ak: "{AK_A}", sk: "${{PROJ_A_SK}}"}}]
""")
    return path


ENV = {"PROJ_A_TOKEN": TOKEN_A, "PROJ_A_SK": SK_A}


@pytest.fixture
def server(config_file) -> str:
    """`engine api CONFIG` running; yields its base URL."""
    with running_api(config_file, ENV) as (url, _):
        yield url


def test_official_sdk_manages_rules_and_actions(server):
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    from huaweicloudsdkiotda.v5 import (
        AddActionReq,
        AddRuleReq,
        ChannelDetail,
        CreateRoutingRuleRequest,
        CreateRuleActionRequest,
        DeleteRoutingRuleRequest,
        DeleteRuleActionRequest,
        HttpForwarding,
        ListRoutingRulesRequest,
        ListRuleActionsRequest,
        RoutingRuleSubject,
        ShowRoutingRuleRequest,
        UpdateRoutingRuleRequest,
        UpdateRuleReq,
    )

    client = sdk_client(server)
    rule = client.create_routing_rule(CreateRoutingRuleRequest(body=AddRuleReq(
        rule_name="sdk_rule", description="from the SDK", app_type="GLOBAL",
        subject=RoutingRuleSubject(resource="device.property", event="report"),
        select="notify_data.header.device_id as device",
        where="notify_data.body.services[0].properties.temperature > 30")))
    assert rule.rule_id and rule.active is False and rule.subject.resource == "device.property"

    action = client.create_rule_action(CreateRuleActionRequest(body=AddActionReq(
        rule_id=rule.rule_id, channel="HTTP_FORWARDING",
        channel_detail=ChannelDetail(http_forwarding=HttpForwarding(url="http://127.0.0.1:9/h")))))
    assert action.action_id and action.channel_detail.http_forwarding.url == "http://127.0.0.1:9/h"

    rules = client.list_routing_rules(ListRoutingRulesRequest(resource="device.property",
                                                              limit=10, offset=0))
    assert rules.count == 1 and rules.rules[0].rule_id == rule.rule_id and len(rules.marker) == 24
    actions = client.list_rule_actions(ListRuleActionsRequest(rule_id=rule.rule_id))
    assert [a.action_id for a in actions.actions] == [action.action_id]

    active = client.update_routing_rule(UpdateRoutingRuleRequest(rule_id=rule.rule_id,
                                                                body=UpdateRuleReq(active=True)))
    assert active.active is True
    shown = client.show_routing_rule(ShowRoutingRuleRequest(rule_id=rule.rule_id))
    assert shown.active is True and shown.where == rule.where

    with pytest.raises(ClientRequestException) as caught:  # IoTDA's error shape reaches the SDK
        client.delete_routing_rule(DeleteRoutingRuleRequest(rule_id=rule.rule_id))
    assert (caught.value.status_code, caught.value.error_code) == (403, "IOTDA.010037")

    client.delete_rule_action(DeleteRuleActionRequest(action_id=action.action_id))
    client.delete_routing_rule(DeleteRoutingRuleRequest(rule_id=rule.rule_id))
    assert client.list_routing_rules(ListRoutingRulesRequest()).count == 0


def test_sdk_with_a_wrong_secret_is_refused(server):
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    from huaweicloudsdkiotda.v5 import IoTDAClient, ListRoutingRulesRequest

    bad = IoTDAClient.new_builder().with_credentials(BasicCredentials(AK_A, "nope", "proj-a")) \
        .with_endpoints([server]).build()
    with pytest.raises(ClientRequestException) as caught:
        bad.list_routing_rules(ListRoutingRulesRequest())
    assert (caught.value.status_code, caught.value.error_code) == (401, "IOTDA.000002")


RULE_FILE = """\
rules:
  - rule_id: r1
    rule_name: online
    subject: {resource: device.status, event: update}
    where: "notify_data.body.status = 'ONLINE'"
actions:
  - action_id: a1
    rule_id: r1
    channel: MYSQL_FORWARDING
    channel_detail:
      mysql_forwarding:
        address: {ip: 127.0.0.1, port: 3306}
        db_name: iot
        username: u
        password: "${MYSQL_PASSWORD}"
        table_name: t
        column_mappings: [{column_name: device, json_key: notify_data.header.device_id}]
flowcontrol_policies:
  - {policy_id: f1, scope: RULE, scope_value: r1, limit: 50}
sources:
  - file: {path: events.ndjson}
"""


def test_import_then_export_round_trips_through_the_store(tmp_path, config_file):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULE_FILE)
    done = engine("import", str(rules), "--config", str(config_file),
                  env={**ENV, "MYSQL_PASSWORD": "db-secret-9"})
    assert done.returncode == 0, done.stderr
    assert "3 objects stored in project proj-a" in done.stderr
    assert "ignoring sections sources" in done.stderr

    out = tmp_path / "exported.yaml"
    done = engine("export", "--config", str(config_file), "-o", str(out), env=ENV)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o077 == 0  # it holds secrets: owner only
    exported = yaml.safe_load(out.read_text())
    assert [r["rule_id"] for r in exported["rules"]] == ["r1"]
    assert exported["actions"][0]["channel_detail"]["mysql_forwarding"]["password"] == "db-secret-9"
    assert exported["flowcontrol_policies"] == [{"policy_id": "f1", "scope": "RULE",
                                                 "scope_value": "r1", "limit": 50}]
    assert engine("check", str(out)).returncode == 0  # the export is a valid rule file

    # Import is additive by id; --replace drops what the file lacks.
    (tmp_path / "one.yaml").write_text(
        "rules: [{rule_id: r2, subject: {resource: product, event: create}}]\n")
    assert engine("import", str(tmp_path / "one.yaml"), "--config", str(config_file),
                  env=ENV).returncode == 0
    listed = yaml.safe_load(engine("export", "--config", str(config_file), env=ENV).stdout)
    assert [r["rule_id"] for r in listed["rules"]] == ["r1", "r2"]
    # r1 still has an action and a policy: replacing with a file without them is fine,
    # since those are deleted too.
    done = engine("import", str(tmp_path / "one.yaml"), "--config", str(config_file),
                  "--replace", env=ENV)
    assert done.returncode == 0, done.stderr
    listed = yaml.safe_load(engine("export", "--config", str(config_file), env=ENV).stdout)
    assert listed == {"rules": [{"rule_id": "r2", "subject": {"resource": "product",
                                                             "event": "create"}}]}


def test_invalid_import_reports_lines_and_stores_nothing(tmp_path, config_file):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - rule_id: r1\n    subject: {resource: device, event: report}\n")
    done = engine("import", str(bad), "--config", str(config_file), env=ENV)
    assert done.returncode == 2
    assert f"{bad}:3: rules[0].subject.event: 'report' is not a valid event" in done.stderr
    # A file must be valid on its own, like any rule file: an action needs its rule.
    orphan = tmp_path / "orphan.yaml"
    orphan.write_text("actions: [{action_id: a1, rule_id: r9, channel: HTTP_FORWARDING, "
                      "channel_detail: {http_forwarding: {url: 'http://x/'}}}]\n")
    done = engine("import", str(orphan), "--config", str(config_file), env=ENV)
    assert done.returncode == 2 and "no rule has rule_id 'r9'" in done.stderr
    assert yaml.safe_load(engine("export", "--config", str(config_file), env=ENV).stdout) == {}


def test_api_command_needs_an_api_section_and_valid_limits(tmp_path, config_file):
    plain = tmp_path / "plain.yaml"
    plain.write_text("rules: []\n")
    done = engine("api", str(plain))
    assert done.returncode == 2 and "no api: section" in done.stderr
    done = engine("api", str(config_file), "--limit", "max_wombats=3", env=ENV)
    assert done.returncode == 2 and "unknown limit 'max_wombats'" in done.stderr


async def test_a_change_by_another_process_reaches_a_subscriber(tmp_path, config_file):
    # A worker in one process, `engine import` in another, one SQLite file.
    rules = tmp_path / "one.yaml"
    rules.write_text("rules: [{rule_id: r7, subject: {resource: product, event: create}}]\n")
    async with SqliteStore(str(tmp_path / "config.db")) as store:
        events: asyncio.Queue = asyncio.Queue()
        store.subscribe(events.put_nowait)
        done = await asyncio.to_thread(engine, "import", str(rules), "--config", str(config_file),
                                       env=ENV)
        assert done.returncode == 0, done.stderr
        event = await asyncio.wait_for(events.get(), 1)
        assert (event.project, event.id) == ("proj-a", "r7")
