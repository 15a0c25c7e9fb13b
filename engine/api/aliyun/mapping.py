"""Stored Alibaba rules and actions, and how they map onto the engine's own
rule model (so workers run them through the same effective configuration
as the IoTDA objects).

Stored per project, in the API store, as three kinds (not rule-file
sections: `engine export`/`import` do not carry them):

- `aliyun_rules`: `{"Id", "Name", "ProductKey", "ShortTopic", "TopicType",
  "Select", "Where", "RuleDesc", "DataType", "Status", "Created", "Modified"}`
- `aliyun_actions`: `{"Id", "RuleId", "Type", "Configuration", "ErrorActionFlag"}`
- `aliyun_ids`: one counter, the next numeric id (rule and action ids share it)

Mapping (`engine_items`): a rule becomes engine rule `aliyun-<Id>`, active
while its Status is RUNNING, subject `device.property/report` for a system
topic (TopicType 0) and `device.message/report` otherwise, with its Select
and Where as rule text; each action of an engine channel becomes action
`aliyun-<ActionId>` of that channel, `Configuration` as its channel_detail.
REPUBLISH actions, error actions (ErrorActionFlag) and the topic filter are
stored but not run (see docs/api-alibaba.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from engine.api.storage import ALIYUN_KINDS, Stored

KINDS = ALIYUN_KINDS
RULES, ACTIONS, IDS = KINDS
PREFIX = "aliyun-"

# Action Type -> engine channel. The short names are the engine's channels as
# an Alibaba script would name them; the engine's own channel names work too.
ENGINE_TYPES = {
    "HTTP": "HTTP_FORWARDING",
    "AMQP": "AMQP_FORWARDING",
    "KAFKA": "DMS_KAFKA_FORWARDING",
    "MYSQL": "MYSQL_FORWARDING",
    "INFLUXDB": "INFLUXDB_FORWARDING",
    "POSTGRESQL": "POSTGRESQL_FORWARDING",
}
STORED_ONLY_TYPES = frozenset({"REPUBLISH"})  # run once the MQTT source exists
# Alibaba Cloud services a self-hosted engine cannot reach (seed §2.9.2, §2.9.6).
CLOUD_ONLY_TYPES = frozenset({"MNS", "FC", "OTS", "ONS", "HITSDB", "DATAHUB", "RDS", "TSDB",
                              "DATAV", "LINDORM", "SLS"})

SYSTEM_TOPIC, CUSTOM_TOPIC, NO_TOPIC = 0, 1, -1
SUBJECTS = {
    SYSTEM_TOPIC: {"resource": "device.property", "event": "report"},
    CUSTOM_TOPIC: {"resource": "device.message", "event": "report"},
    NO_TOPIC: {"resource": "device.message", "event": "report"},
}


def channel_of(action_type: str) -> str | None:
    """The engine channel an action Type runs on, None for stored-only types."""
    upper = action_type.upper()
    if upper in ENGINE_TYPES:
        return ENGINE_TYPES[upper]
    if upper in ENGINE_TYPES.values():
        return upper
    return None


def engine_rule(rule: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {
        "rule_id": f"{PREFIX}{rule['Id']}",
        "rule_name": rule["Name"],
        "subject": SUBJECTS[rule.get("TopicType", NO_TOPIC)],
        "active": rule["Status"] == "RUNNING",
    }
    if rule.get("RuleDesc"):
        item["description"] = rule["RuleDesc"][:256]
    if rule.get("Select"):
        item["select"] = rule["Select"]
    if rule.get("Where"):
        item["where"] = rule["Where"]
    return item


def engine_action(action: dict[str, Any]) -> dict[str, Any] | None:
    from engine.config import channels

    channel = channel_of(action["Type"])
    if channel is None or action.get("ErrorActionFlag"):
        # An error action receives only failed forwards; the engine has no such
        # destination per rule yet, so running it as an action would send it every match.
        return None
    sink = channels.registry()[channel]
    return {"action_id": f"{PREFIX}{action['Id']}", "rule_id": f"{PREFIX}{action['RuleId']}",
            "channel": channel,
            "channel_detail": {sink.detail_key: orjson.loads(action["Configuration"])}}


def engine_items(records: Iterable[Stored]) -> dict[str, list[dict[str, Any]]]:
    """The project's Alibaba rules as rule-file sections (`rules`, `actions`)."""
    rules, actions = [], []
    for record in sorted(records, key=lambda r: r.seq):
        if record.kind == RULES:
            rules.append(engine_rule(record.body))
        elif record.kind == ACTIONS:
            item = engine_action(record.body)
            if item is not None:
                actions.append(item)
    return {"rules": rules, "actions": actions}
