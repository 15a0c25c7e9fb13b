"""Every rules-engine action of Alibaba's IoT API through the official SDK
against `engine api` (seed §2.9), with the seed's limits and error codes."""

from __future__ import annotations

import json

from tests.api.conftest import AK_B, SK_B
from tests.api_aliyun.conftest import DB_PASSWORD, Sdk, stored

HTTP_CONFIG = json.dumps({"url": "http://127.0.0.1:9/hook"})


def test_every_rule_action_through_the_official_sdk(server):
    endpoint, db = server
    sdk = Sdk(endpoint)
    created = sdk.ok("CreateRule", Name="iot_test1", ProductKey="a1pk0001",
                     ShortTopic="dev1/user/update", Select="a,b,c", RuleDesc="rule test",
                     DataType="JSON", Where="a>10")
    rule_id = created["RuleId"]
    assert isinstance(rule_id, int)

    info = sdk.ok("GetRule", RuleId=rule_id)["RuleInfo"]
    assert info["Id"] == rule_id and info["Name"] == "iot_test1"
    assert info["Status"] == "STOP" and info["DataType"] == "JSON"
    assert info["Select"] == "a,b,c" and info["Where"] == "a>10"
    assert info["ShortTopic"] == "dev1/user/update" and info["topicType"] == 1
    assert info["Topic"] == "/a1pk0001/dev1/user/update"
    assert info["RuleDesc"] == "rule test" and info["Created"] and info["Modified"]

    republish = sdk.ok("CreateRuleAction", RuleId=rule_id, Type="REPUBLISH",
                       Configuration=json.dumps({"topic": "/a1pk0001/dev2/user/get",
                                                 "topicType": 1}))["ActionId"]
    http = sdk.ok("CreateRuleAction", RuleId=rule_id, Type="HTTP",
                  Configuration=HTTP_CONFIG)["ActionId"]
    assert republish != http
    action = sdk.ok("GetRuleAction", ActionId=http)["RuleActionInfo"]
    assert action == {"Id": http, "RuleId": rule_id, "Type": "HTTP",
                      "Configuration": HTTP_CONFIG, "ErrorActionFlag": False}
    secret = sdk.ok("CreateRuleAction", RuleId=rule_id, Type="MYSQL", Configuration=json.dumps(
        {"address": {"ip": "127.0.0.1", "port": 3306}, "db_name": "iot", "username": "u",
         "password": DB_PASSWORD, "table_name": "t",
         "column_mappings": [{"column_name": "a", "json_key": "a"}]}))["ActionId"]
    shown = sdk.ok("GetRuleAction", ActionId=secret)["RuleActionInfo"]["Configuration"]
    assert DB_PASSWORD not in shown and json.loads(shown)["password"] == "**********"
    sdk.ok("DeleteRuleAction", ActionId=secret)
    listed = sdk.ok("ListRuleActions", RuleId=rule_id)["RuleActionList"]
    assert [a["Id"] for a in listed] == [republish, http]

    sdk.ok("StartRule", RuleId=rule_id)
    assert sdk.ok("GetRule", RuleId=rule_id)["RuleInfo"]["Status"] == "RUNNING"
    sdk.fails("StartRule", "iot.ruleng.RuleAlreadyIsStarted", RuleId=rule_id)
    assert sdk.ok("ListRule", PageSize=10, CurrentPage=1)["Data"][0]["Status"] == "RUNNING"
    sdk.ok("StopRule", RuleId=rule_id)
    assert sdk.ok("GetRule", RuleId=rule_id)["RuleInfo"]["Status"] == "STOP"

    sdk.ok("UpdateRule", RuleId=rule_id, Name="test_2", ShortTopic="+/user/get",
           Select="a,b", Where="b<5")
    info = sdk.ok("GetRule", RuleId=rule_id)["RuleInfo"]
    assert (info["Name"], info["Select"], info["Where"]) == ("test_2", "a,b", "b<5")
    assert info["ProductKey"] == "a1pk0001" and info["Topic"] == "/a1pk0001/+/user/get"
    assert info["RuleDesc"] == "rule test"  # not sent: kept

    sdk.ok("DeleteRuleAction", ActionId=republish)
    sdk.fails("GetRuleAction", "iot.rule.NotFoundRuleAction", ActionId=republish)
    assert [a["Id"] for a in sdk.ok("ListRuleActions", RuleId=rule_id)["RuleActionList"]] == [http]

    sdk.ok("DeleteRule", RuleId=rule_id)  # with its actions
    sdk.fails("GetRule", "iot.rule.NotFoundRule", RuleId=rule_id)
    sdk.fails("GetRuleAction", "iot.rule.NotFoundRuleAction", ActionId=http)
    assert sdk.ok("ListRule", PageSize=10, CurrentPage=1)["Data"] == []
    assert [row[1] for row in stored(db)] == ["aliyun_ids"]


def test_system_topic_binary_rule_and_projects_apart(server):
    endpoint, _ = server
    a, b = Sdk(endpoint), Sdk(endpoint, AK_B, SK_B)
    rule = a.ok("CreateRule", Name="props_rule", ProductKey="a1pk",
                ShortTopic="${deviceName}/thing/event/property/post", Select="*",
                DataType="BINARY")["RuleId"]
    info = a.ok("GetRule", RuleId=rule)["RuleInfo"]
    assert info["topicType"] == 0 and info["DataType"] == "BINARY"
    assert info["Topic"] == "/sys/a1pk/${deviceName}/thing/event/property/post"
    no_topic = a.ok("CreateRule", Name="no_topic", Select="*")["RuleId"]
    assert a.ok("GetRule", RuleId=no_topic)["RuleInfo"]["topicType"] == -1
    # Project B's key sees none of project A's rules.
    b.fails("GetRule", "iot.rule.NotFoundRule", RuleId=rule)
    assert b.ok("ListRule", PageSize=10, CurrentPage=1)["Data"] == []


def test_paging(server):
    endpoint, _ = server
    sdk = Sdk(endpoint)
    ids = [sdk.ok("CreateRule", Name=f"rule_{i:02}", Select="*")["RuleId"] for i in range(12)]
    page1 = sdk.ok("ListRule", PageSize=5, CurrentPage=1)
    page3 = sdk.ok("ListRule", PageSize=5, CurrentPage=3)
    assert [r["Id"] for r in page1["Data"]] == ids[:5]
    assert [r["Id"] for r in page3["Data"]] == ids[10:]
    assert (page3["Page"], page3["PageSize"], page3["Total"]) == (3, 5, 12)
    assert sdk.ok("ListRule", PageSize=5, CurrentPage=4)["Data"] == []
    default = sdk.ok("ListRule")  # PageSize 10, CurrentPage 1 by default
    assert len(default["Data"]) == 10 and default["Page"] == 1
    for size, page in ((0, 1), (101, 1), (10, 0), (10, 1001)):
        sdk.fails("ListRule", "iot.common.InvalidPageParams", PageSize=size, CurrentPage=page)


def test_limits_and_bad_input(server):
    endpoint, db = server
    sdk = Sdk(endpoint)
    for name in ("abc", "a" * 31, "bad-name", "with space"):
        sdk.fails("CreateRule", "iot.rule.CreateRuleException", Name=name, Select="*")
    sdk.ok("CreateRule", Name="abcd", Select="*")
    sdk.ok("CreateRule", Name="a" * 30, Select="*")
    sdk.fails("CreateRule", "iot.rule.RuleNameIsAlreadyExisted", Name="abcd")
    sdk.fails("CreateRule", "iot.rule.CreateRuleException", Name="dtype", DataType="XML")
    sdk.fails("CreateRule", "iot.messagebroker.IncorrectRuleSql", Name="badsql",
              Select="a,,b")
    sdk.fails("CreateRule", "iot.ruleng.IncorrectSysTopic", Name="sys_topic", ProductKey="pk",
              ShortTopic="dev/user/x", TopicType=0)
    rule = sdk.ok("CreateRule", Name="actions_rule", Select="*")["RuleId"]
    empty = sdk.ok("CreateRule", Name="no_sql")["RuleId"]
    sdk.fails("StartRule", "iot.rule.NullSqlForRule", RuleId=empty)
    sdk.fails("GetRule", "iot.rule.NotFoundRule", RuleId=999999)
    before = stored(db)

    for cloud in ("MNS", "FC", "OTS"):
        body = sdk.fails("CreateRuleAction", "iot.rule.IncorrentRuleActionType", RuleId=rule,
                         Type=cloud, Configuration='{"themeName": "t"}')
        assert "REPUBLISH" in body["ErrorMessage"] and "HTTP" in body["ErrorMessage"]
    sdk.fails("CreateRuleAction", "iot.ruleng.RuleActionConfigurationIsNotJson", RuleId=rule,
              Type="HTTP", Configuration="{not json")
    body = sdk.fails("CreateRuleAction", "iot.rule.ParseRuleActionConfigError", RuleId=rule,
                     Type="HTTP", Configuration='{"uri": "http://x"}')
    assert "url" in body["ErrorMessage"]
    sdk.fails("CreateRuleAction", "iot.messagebroker.NullTopicName", RuleId=rule,
              Type="REPUBLISH", Configuration='{"topicType": 1}')
    sdk.fails("CreateRuleAction", "iot.rule.NotFoundRule", RuleId=424242, Type="HTTP",
              Configuration=json.dumps({"url": "http://127.0.0.1:9/x"}))
    assert stored(db) == before  # nothing written by a refusal

    for i in range(10):
        sdk.ok("CreateRuleAction", RuleId=rule, Type="HTTP",
               Configuration=json.dumps({"url": f"http://127.0.0.1:9/{i}"}))
    sdk.fails("CreateRuleAction", "iot.rule.TooManyRuleAction", RuleId=rule, Type="HTTP",
              Configuration=json.dumps({"url": "http://127.0.0.1:9/11"}))
    same = json.dumps({"url": "http://127.0.0.1:9/0"})
    sdk.ok("CreateRuleAction", RuleId=empty, Type="HTTP", Configuration=same)
    sdk.fails("CreateRuleAction", "iot.rule.RuleActionIsAlreadyCreated", RuleId=empty,
              Type="HTTP", Configuration=same)
    assert len(sdk.ok("ListRuleActions", RuleId=rule)["RuleActionList"]) == 10
