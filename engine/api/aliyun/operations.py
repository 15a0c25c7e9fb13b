"""The rules-engine actions of Alibaba's IoT API (seed §2.9), on the API store.

Each operation takes the request's parameters (strings, as the RPC API
sends them) and returns the fields of a successful response besides
`RequestId` and `Success`; a refusal raises an `AliyunError` with the
seed's code (§2.8). Writes go through `Store.change`, so the check and the
write happen under the project's lock, and every write is a change event
that workers reload from (see `mapping` for what they run).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from engine.api.aliyun import mapping
from engine.api.aliyun.errors import AliyunError
from engine.api.aliyun.mapping import ACTIONS, IDS, RULES
from engine.api.storage import Delete, Op, Put, Store, Stored
from engine.config import ConfigError, channels, validate_config_dict
from engine.config.errors import pydantic_message
from engine.config.limits import ApiLimits
from engine.config.secrets import is_secret_key

Params = Mapping[str, str]
Operation = Callable[[Store, str, Params, ApiLimits], Awaitable[dict[str, Any]]]

FIRST_ID = 1000
MAX_ACTIONS_PER_RULE = 10  # seed §2.9.2
PAGE_SIZE_MAX, PAGE_SIZE_DEFAULT = 100, 10  # seed §2.9.7
PAGE_MAX = 1000
_NAME = re.compile(r"[\w]+")
MASK = "**********"


def _now() -> str:
    return datetime.now(UTC).strftime("%a %b %d %H:%M:%S UTC %Y")  # the seed's format


# ------------------------------------------------------------------ parameters


def _long(params: Params, name: str, code: str) -> int:
    value = params.get(name, "")
    if not value:
        raise AliyunError(code, f"{name} is required.")
    if not value.isdigit() or len(value) > 18:
        raise AliyunError(code, f"{name} must be a positive integer, got {value[:40]!r}.")
    return int(value)


def _name(value: str | None, code: str) -> str:
    # 4-30 characters: letters, digits, underscores; a Chinese character counts as two.
    if not value:
        raise AliyunError(code, "Name is required.")
    width = sum(1 if ord(c) < 128 else 2 for c in value)
    if not _NAME.fullmatch(value) or not 4 <= width <= 30:
        raise AliyunError(code, "Name must be 4 to 30 characters: letters, digits and "
                          "underscores (a Chinese character counts as two).")
    return value


def _rule_fields(params: Params, code: str, old: dict[str, Any] | None) -> dict[str, Any]:
    """The rule's fields from CreateRule/UpdateRule parameters (UpdateRule: a
    parameter not sent keeps its stored value)."""
    body = dict(old or {})
    body["Name"] = _name(params.get("Name"), code)
    for name in ("ProductKey", "ShortTopic", "Select", "Where", "RuleDesc"):
        if name in params:
            body[name] = params[name]
    if "WHERE" in params and "Where" not in params:  # the seed's table spells it so
        body["Where"] = params["WHERE"]
    if len(body.get("RuleDesc") or "") > 100:
        raise AliyunError(code, "RuleDesc must be at most 100 characters.")
    if "DataType" in params or old is None:
        data_type = (params.get("DataType") or "JSON").upper()
        if data_type not in ("JSON", "BINARY"):
            raise AliyunError(code, "DataType must be JSON or BINARY.")
        body["DataType"] = data_type
    topic_type = params.get("TopicType")
    if topic_type:
        if topic_type not in ("0", "1"):
            raise AliyunError("iot.ruleng.IncorrectType",
                              "TopicType must be 0 (system topic) or 1 (custom topic).")
        body["TopicType"] = int(topic_type)
    elif body.get("ShortTopic") and (old is None or "ShortTopic" in params):
        # Not given (the seed's CreateRule has no TopicType): a system topic is
        # recognised by its /thing/ level, as in ${deviceName}/thing/event/property/post.
        body["TopicType"] = (mapping.SYSTEM_TOPIC if "/thing/" in body["ShortTopic"]
                             else mapping.CUSTOM_TOPIC)
    short = body.get("ShortTopic")
    if not short:
        body["TopicType"] = mapping.NO_TOPIC
    elif body["TopicType"] == mapping.SYSTEM_TOPIC and "/thing/" not in short:
        raise AliyunError("iot.ruleng.IncorrectSysTopic",
                          "A system topic (TopicType 0) is ${deviceName}/thing/...; "
                          f"got {short[:100]!r}.")
    if short and (short.startswith("/") or len(short) > 200):
        raise AliyunError("iot.messagebroker.InvalidFormattedTopicName",
                          "ShortTopic is ${deviceName}/topicShortName (no leading /, at most "
                          "200 characters).")
    if short and not body.get("ProductKey"):
        raise AliyunError("iot.prod.NullProductKey", "ProductKey cannot be empty with a "
                          "ShortTopic.")
    return body


def _check_sql(rule: dict[str, Any], code: str) -> None:
    """Refuse Select/Where text the engine cannot compile (the check runs the
    rule through the same validator workers load it with)."""
    if not rule.get("Select") and not rule.get("Where"):
        return
    try:
        candidate = {"Id": 0, "Status": "STOP", **rule}  # before the id is given
        validate_config_dict({"rules": [mapping.engine_rule(candidate)]}, "rule")
    except ConfigError as err:
        detail = "; ".join(f"{i.path}: {i.message}" if i.path else i.message for i in err.issues)
        fields = {i.path.rsplit(".", 1)[-1] for i in err.issues}
        if "topic" in fields:
            raise AliyunError("iot.messagebroker.InvalidFormattedTopicName", detail) from None
        sql = bool(fields & {"select", "where"})
        raise AliyunError("iot.messagebroker.IncorrectRuleSql" if sql else code,
                          detail) from None


def _configuration(action_type: str, raw: str) -> str:
    """The Configuration JSON, checked against the channel's model."""
    try:
        config = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise AliyunError("iot.ruleng.RuleActionConfigurationIsNotJson",
                          "The rule action configuration is not in JSON format.") from None
    if not isinstance(config, dict):
        raise AliyunError("iot.ruleng.RuleActionConfigurationIsNotJson",
                          "The rule action configuration must be a JSON object.")
    if action_type == "REPUBLISH":
        topic = config.get("topic")
        if not isinstance(topic, str) or not topic:
            raise AliyunError("iot.messagebroker.NullTopicName", "topic cannot be empty.")
        if not topic.startswith("/") or "#" in topic or "+" in topic:
            raise AliyunError("iot.messagebroker.InvalidFormattedTopicName",
                              "topic must be a full topic name starting with / (no wildcards).")
        if config.get("topicType", 1) not in (0, 1):
            raise AliyunError("iot.ruleng.IncorrectType", "topicType must be 0 or 1.")
        if config.get("topicType") == 0 and not topic.startswith("/sys/"):
            raise AliyunError("iot.ruleng.IncorrectSysTopic",
                              "A system topic (topicType 0) starts with /sys/.")
        return raw
    channel = mapping.channel_of(action_type)
    assert channel is not None
    try:
        channels.validate_detail(channel, {channels.registry()[channel].detail_key: config})
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {pydantic_message(e)}"
                           for e in exc.errors())
        raise AliyunError("iot.rule.ParseRuleActionConfigError",
                          f"Configuration is not valid for {channel}: {detail}") from None
    return raw


def _action_type(params: Params) -> str:
    given = params.get("Type", "")
    if not given:
        raise AliyunError("iot.ruleng.NullRuleActionType", "Rule action type cannot be empty.")
    upper = given.upper()
    if upper == mapping.REPUBLISH or mapping.channel_of(upper) is not None:
        return upper
    supported = ", ".join(["REPUBLISH", *mapping.ENGINE_TYPES])
    where = ("an Alibaba Cloud service this self-hosted engine cannot reach"
             if upper in mapping.CLOUD_ONLY_TYPES else "not a rule action type")
    raise AliyunError("iot.rule.IncorrentRuleActionType",
                      f"Type {given[:40]!r} is {where}; supported: {supported}.")


# ------------------------------------------------------------------ reading


def _of(records: list[Stored], kind: str) -> list[Stored]:
    return [r for r in records if r.kind == kind]


def _find(records: list[Stored], kind: str, object_id: int) -> Stored:
    for record in records:
        if record.kind == kind and record.id == str(object_id):
            return record
    if kind == RULES:
        raise AliyunError("iot.rule.NotFoundRule", "The specified rule is not found.")
    raise AliyunError("iot.rule.NotFoundRuleAction", "The specified rule action is not found.")


def _user_id(project: str) -> int:
    return zlib.crc32(project.encode())  # stable per project: the "account" of its rules


def rule_info(rule: dict[str, Any], project: str) -> dict[str, Any]:
    """RuleInfo (seed Table 2-46): unset optional fields left out."""
    info: dict[str, Any] = {"CreateUserId": _user_id(project), "Created": rule["Created"],
                            "DataType": rule["DataType"], "Id": rule["Id"],
                            "Modified": rule["Modified"], "Name": rule["Name"],
                            "Status": rule["Status"], "topicType": rule["TopicType"]}
    for name in ("ProductKey", "RuleDesc", "Select", "ShortTopic", "Where"):
        if rule.get(name):
            info[name] = rule[name]
    topic = mapping.topic_of(rule)
    if topic is not None:
        info["Topic"] = topic
    return info


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: MASK if is_secret_key(k) and isinstance(v, str) else _masked(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def action_info(action: dict[str, Any]) -> dict[str, Any]:
    """RuleActionInfo (seed Table 2-47), plus ErrorActionFlag as the newer SDK
    sends it. Secrets in the Configuration (passwords, tokens) are masked, as
    the IoTDA side masks them; a Configuration without any is returned as sent."""
    raw = action["Configuration"]
    config = orjson.loads(raw)
    masked = _masked(config)
    return {"Id": action["Id"], "RuleId": action["RuleId"], "Type": action["Type"],
            "Configuration": raw if masked == config else orjson.dumps(masked).decode(),
            "ErrorActionFlag": action.get("ErrorActionFlag", False)}


# ------------------------------------------------------------------ writing


def next_id(records: list[Stored]) -> tuple[int, Put]:
    counter = next((r.body["next"] for r in _of(records, IDS)), FIRST_ID)
    return counter, Put(IDS, "next", {"next": counter + 1})


async def create_rule(store: Store, project: str, params: Params, limits: ApiLimits
                      ) -> dict[str, Any]:
    body = _rule_fields(params, "iot.rule.CreateRuleException", None)
    _check_sql(body, "iot.rule.CreateRuleException")

    def plan(records: list[Stored]) -> list[Op]:
        rules = _of(records, RULES)
        if len(rules) >= limits.max_rules:
            raise AliyunError("iot.rule.RuleCountExceedMax",
                              f"The total number of rules exceeds the limit ({limits.max_rules}).")
        if any(r.body["Name"] == body["Name"] for r in rules):
            raise AliyunError("iot.rule.RuleNameIsAlreadyExisted", "The rule name already exists.")
        rule_id, counter = next_id(records)
        stamp = _now()
        body.update(Id=rule_id, Status="STOP", Created=stamp, Modified=stamp)
        return [counter, Put(RULES, str(rule_id), body)]

    await store.change(project, plan)
    return {"RuleId": body["Id"]}


async def update_rule(store: Store, project: str, params: Params, limits: ApiLimits
                      ) -> dict[str, Any]:
    rule_id = _long(params, "RuleId", "iot.rule.IncorrentRuleId")

    def plan(records: list[Stored]) -> list[Op]:
        old = _find(records, RULES, rule_id)
        body = _rule_fields(params, "iot.rule.UpdateRuleFailed", old.body)
        if any(r.body["Name"] == body["Name"] and r.id != old.id for r in _of(records, RULES)):
            raise AliyunError("iot.rule.RuleNameIsAlreadyExisted", "The rule name already exists.")
        _check_sql(body, "iot.rule.UpdateRuleFailed")
        body["Modified"] = _now()
        return [Put(RULES, old.id, body)]

    await store.change(project, plan)
    return {}


async def delete_rule(store: Store, project: str, params: Params, limits: ApiLimits
                      ) -> dict[str, Any]:
    rule_id = _long(params, "RuleId", "iot.rule.IncorrentRuleId")

    def plan(records: list[Stored]) -> list[Op]:
        old = _find(records, RULES, rule_id)
        # Alibaba deletes a rule together with its actions.
        ops: list[Op] = [Delete(ACTIONS, a.id) for a in _of(records, ACTIONS)
                         if a.body["RuleId"] == rule_id]
        return [*ops, Delete(RULES, old.id)]

    await store.change(project, plan)
    return {}


async def get_rule(store: Store, project: str, params: Params, limits: ApiLimits
                   ) -> dict[str, Any]:
    rule_id = _long(params, "RuleId", "iot.rule.IncorrentRuleId")
    rule = _find(await store.load(project), RULES, rule_id)
    return {"RuleInfo": rule_info(rule.body, project)}


def page_param(params: Params, name: str, default: int, most: int) -> int:
    value = params.get(name) or str(default)
    if not value.isdigit() or not 1 <= int(value) <= most:
        raise AliyunError("iot.common.InvalidPageParams",
                          f"{name} must be an integer from 1 to {most}.")
    return int(value)


async def list_rule(store: Store, project: str, params: Params, limits: ApiLimits
                    ) -> dict[str, Any]:
    size = page_param(params, "PageSize", PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)
    page = page_param(params, "CurrentPage", 1, PAGE_MAX)
    rules = _of(await store.load(project), RULES)  # oldest first, as the store orders them
    chunk = rules[(page - 1) * size: page * size]
    # Total: the number of rules. The seed's table says "number of pages", its
    # example fits either; a script that reads it as pages then asks for a few
    # empty pages, while the other reading would make it stop early.
    return {"Data": [rule_info(r.body, project) for r in chunk], "Page": page,
            "PageSize": size, "Total": len(rules),
            "PageCount": math.ceil(len(rules) / size)}


async def start_rule(store: Store, project: str, params: Params, limits: ApiLimits
                     ) -> dict[str, Any]:
    rule_id = _long(params, "RuleId", "iot.rule.IncorrentRuleId")

    def plan(records: list[Stored]) -> list[Op]:
        old = _find(records, RULES, rule_id)
        if old.body["Status"] == "RUNNING":
            raise AliyunError("iot.ruleng.RuleAlreadyIsStarted",
                              "The rule is already in a started status.")
        if not old.body.get("Select"):
            raise AliyunError("iot.rule.NullSqlForRule",
                              "SQL statement for the rule cannot be empty (set Select first).")
        return [Put(RULES, old.id, {**old.body, "Status": "RUNNING", "Modified": _now()})]

    await store.change(project, plan)
    return {}


async def stop_rule(store: Store, project: str, params: Params, limits: ApiLimits
                    ) -> dict[str, Any]:
    rule_id = _long(params, "RuleId", "iot.rule.IncorrentRuleId")

    def plan(records: list[Stored]) -> list[Op]:
        old = _find(records, RULES, rule_id)
        if old.body["Status"] == "STOP":
            return []  # already stopped: nothing to change, nothing to reload
        return [Put(RULES, old.id, {**old.body, "Status": "STOP", "Modified": _now()})]

    await store.change(project, plan)
    return {}


async def create_rule_action(store: Store, project: str, params: Params, limits: ApiLimits
                             ) -> dict[str, Any]:
    rule_id = _long(params, "RuleId", "iot.rule.IncorrentRuleId")
    action_type = _action_type(params)
    raw = params.get("Configuration", "")
    if not raw:
        raise AliyunError("iot.ruleng.NullRuleActionConfig",
                          "Rule action configuration cannot be empty.")
    configuration = _configuration(action_type, raw)
    error_flag = params.get("ErrorActionFlag", "false").lower() == "true"
    body: dict[str, Any] = {"RuleId": rule_id, "Type": action_type,
                            "Configuration": configuration, "ErrorActionFlag": error_flag}

    def plan(records: list[Stored]) -> list[Op]:
        _find(records, RULES, rule_id)
        siblings = [a for a in _of(records, ACTIONS) if a.body["RuleId"] == rule_id]
        most = min(MAX_ACTIONS_PER_RULE, limits.max_actions_per_rule)
        if len(siblings) >= most:
            raise AliyunError("iot.rule.TooManyRuleAction",
                              f"The number of rule actions exceeds the limit ({most}).")
        if any(a.body["Type"] == action_type and a.body["Configuration"] == configuration
               for a in siblings):
            raise AliyunError("iot.rule.RuleActionIsAlreadyCreated",
                              "The same rule action already exists.")
        action_id, counter = next_id(records)
        body["Id"] = action_id
        return [counter, Put(ACTIONS, str(action_id), body)]

    await store.change(project, plan)
    return {"ActionId": body["Id"]}


async def delete_rule_action(store: Store, project: str, params: Params, limits: ApiLimits
                             ) -> dict[str, Any]:
    action_id = _long(params, "ActionId", "iot.rule.IncorrentRuleActionId")

    def plan(records: list[Stored]) -> list[Op]:
        old = _find(records, ACTIONS, action_id)
        return [Delete(ACTIONS, old.id)]

    await store.change(project, plan)
    return {}


async def get_rule_action(store: Store, project: str, params: Params, limits: ApiLimits
                          ) -> dict[str, Any]:
    action_id = _long(params, "ActionId", "iot.rule.IncorrentRuleActionId")
    action = _find(await store.load(project), ACTIONS, action_id)
    return {"RuleActionInfo": action_info(action.body)}


async def list_rule_actions(store: Store, project: str, params: Params, limits: ApiLimits
                            ) -> dict[str, Any]:
    rule_id = _long(params, "RuleId", "iot.rule.IncorrentRuleId")
    records = await store.load(project)
    _find(records, RULES, rule_id)
    return {"RuleActionList": [action_info(a.body) for a in _of(records, ACTIONS)
                               if a.body["RuleId"] == rule_id]}


OPERATIONS: dict[str, Operation] = {
    "CreateRule": create_rule,
    "CreateRuleAction": create_rule_action,
    "DeleteRule": delete_rule,
    "DeleteRuleAction": delete_rule_action,
    "GetRule": get_rule,
    "GetRuleAction": get_rule_action,
    "ListRule": list_rule,
    "ListRuleActions": list_rule_actions,
    "StartRule": start_rule,
    "StopRule": stop_rule,
    "UpdateRule": update_rule,
}
