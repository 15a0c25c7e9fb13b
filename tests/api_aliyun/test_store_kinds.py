"""The Alibaba kinds in both stores (SQLite and PostgreSQL): operations
write atomically, ids are unique under concurrency, changes are announced,
and the effective configuration runs started rules with their engine-channel
actions and error actions (REPUBLISH only on a worker with an MQTT source)."""

from __future__ import annotations

import asyncio
import json

from engine.api.aliyun.errors import AliyunError
from engine.api.aliyun.operations import OPERATIONS
from engine.api.effective import effective_config
from engine.config import EngineConfig
from engine.config.limits import ApiLimits
from tests.api.test_storage import backend  # noqa: F401 - the SQLite/PostgreSQL fixture

LIMITS = ApiLimits()
HTTP = json.dumps({"url": "http://127.0.0.1:9/hook"})


async def call(store, action: str, project: str = "proj-a", **params) -> dict:
    return await OPERATIONS[action](store, project, {k: str(v) for k, v in params.items()},
                                    LIMITS)


async def test_concurrent_creates_get_distinct_ids(backend):  # noqa: F811
    store, _ = backend
    results = await asyncio.gather(*(call(store, "CreateRule", Name=f"rule_{i}", Select="*")
                                     for i in range(8)))
    ids = [r["RuleId"] for r in results]
    assert len(set(ids)) == 8
    listed = await call(store, "ListRule", PageSize=100)
    assert sorted(r["Id"] for r in listed["Data"]) == sorted(ids)


async def test_effective_config_runs_started_rules_only(backend):  # noqa: F811
    store, make_another = backend
    heard: asyncio.Queue = asyncio.Queue()
    async with make_another() as other:
        other.subscribe(heard.put_nowait)
        rule = (await call(store, "CreateRule", Name="hot_rule", Select="a AS a",
                           Where="a > 1"))["RuleId"]
        http = (await call(store, "CreateRuleAction", RuleId=rule, Type="HTTP",
                           Configuration=HTTP))["ActionId"]
        await call(store, "CreateRuleAction", RuleId=rule, Type="REPUBLISH",
                   Configuration='{"topic": "/pk/dev/user/get", "topicType": 1}')
        errors = (await call(store, "CreateRuleAction", RuleId=rule, Type="HTTP",
                             ErrorActionFlag="true",
                             Configuration=json.dumps({"url": "http://127.0.0.1:9/errors"}))
                  )["ActionId"]
        event = await asyncio.wait_for(heard.get(), 5)  # another instance hears it
        assert event.project == "proj-a" and event.kind.startswith("aliyun_")

        config = await effective_config(EngineConfig(), store)
        (engine_rule,) = config.rules
        assert engine_rule.rule_id == f"proj-a/aliyun-{rule}" and engine_rule.active is False
        assert [(a.action_id, a.error_action) for a in config.actions] == [
            (f"proj-a/aliyun-{http}", False), (f"proj-a/aliyun-{errors}", True)]

        await call(store, "StartRule", RuleId=rule)
        config = await effective_config(EngineConfig(), store)
        assert config.rules[0].active is True
        assert (config.rules[0].select, config.rules[0].where) == ("a AS a", "a > 1")

        await call(store, "DeleteRule", RuleId=rule)
        config = await effective_config(EngineConfig(), store)
        assert config.rules == () or list(config.rules) == []
        assert [r.kind for r in await store.load("proj-a")] == ["aliyun_ids"]


async def test_a_refused_operation_writes_nothing(backend):  # noqa: F811
    store, _ = backend
    rule = (await call(store, "CreateRule", Name="one_rule", Select="*"))["RuleId"]
    before = await store.load("proj-a")
    for action, params, code in (
        ("CreateRule", {"Name": "one_rule"}, "iot.rule.RuleNameIsAlreadyExisted"),
        ("UpdateRule", {"RuleId": rule, "Name": "x"}, "iot.rule.UpdateRuleFailed"),
        ("UpdateRule", {"RuleId": rule, "Name": "renamed", "Where": "a >"},
         "iot.messagebroker.IncorrectRuleSql"),
        ("CreateRuleAction", {"RuleId": rule, "Type": "FC", "Configuration": "{}"},
         "iot.rule.IncorrentRuleActionType"),
        ("DeleteRule", {"RuleId": 77}, "iot.rule.NotFoundRule"),
        ("DeleteRuleAction", {"ActionId": "x1"}, "iot.rule.IncorrentRuleActionId"),
    ):
        try:
            await call(store, action, **params)
            raise AssertionError(f"{action} {params} was accepted")
        except AliyunError as err:
            assert err.code == code, (action, err)
    assert await store.load("proj-a") == before
