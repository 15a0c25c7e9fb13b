"""Stored Alibaba rules and actions, and how they map onto the engine's own
rule model (so workers run them through the same effective configuration
as the IoTDA objects).

Stored per project, in the API store, as three kinds (not rule-file
sections: `engine export`/`import` do not carry them):

- `aliyun_rules`: `{"Id", "Name", "ProductKey", "ShortTopic", "TopicType",
  "Select", "Where", "RuleDesc", "DataType", "Status", "Created", "Modified"}`
- `aliyun_actions`: `{"Id", "RuleId", "Type", "Configuration", "ErrorActionFlag"}`
- `aliyun_ids`: one counter, the next numeric id (rule, action and route ids share it)
- `aliyun_routes`: `{"Id", "SrcTopic", "DstTopics"}`, a topic route table (`routes`)

Mapping (`engine_items`): a rule becomes engine rule `aliyun-<Id>` in the
Alibaba dialect (docs/language-alibaba.md), active while its Status is
RUNNING, on `device.message/report` (what Alibaba topics become,
engine.sources.alink), bound to its topic (`topic_of`: `/sys/{pk}/{short}`
for a system topic, `/{pk}/{short}` for a custom one), with its Select and
Where as rule text; each action of an engine channel becomes action
`aliyun-<ActionId>` of that channel, `Configuration` as its channel_detail.
A REPUBLISH action becomes an MQTT_FORWARDING action on the broker the
worker's MQTT source reads (`broker`; without one it cannot run and is left
out). An error action (ErrorActionFlag) becomes an action with
`error_action: true`: it receives the dead letters of the rule's other
actions (engine.runtime.worker).

A topic route (`route_items`) becomes rule `aliyun-route-<Id>` on its
source topic, selecting the message as it arrived (`content`, `binary`),
with one MQTT_FORWARDING action per target topic that publishes that
message (`message: content`) on the worker's broker; without a broker it
cannot run and is left out.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

import orjson

from engine.api.storage import ALIYUN_KINDS, Stored

KINDS = ALIYUN_KINDS
RULES, ACTIONS, IDS, ROUTES = KINDS
PREFIX = "aliyun-"
ROUTE_PREFIX = "aliyun-route-"

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
REPUBLISH = "REPUBLISH"   # runs on MQTT_FORWARDING, on the worker's broker
# Alibaba Cloud services a self-hosted engine cannot reach (seed §2.9.2, §2.9.6).
CLOUD_ONLY_TYPES = frozenset({"MNS", "FC", "OTS", "ONS", "HITSDB", "DATAHUB", "RDS", "TSDB",
                              "DATAV", "LINDORM", "SLS"})

SYSTEM_TOPIC, CUSTOM_TOPIC, NO_TOPIC = 0, 1, -1
SUBJECT = {"resource": "device.message", "event": "report"}


def topic_of(rule: dict[str, Any]) -> str | None:
    """The topic filter a stored rule applies to (None: no ShortTopic, every topic)."""
    short = rule.get("ShortTopic")
    if not short:
        return None
    if rule.get("TopicType") == SYSTEM_TOPIC:
        return f"/sys/{rule['ProductKey']}/{short}"
    return f"/{rule['ProductKey']}/{short}"


def channel_of(action_type: str) -> str | None:
    """The engine channel an action Type runs on (REPUBLISH: None, it is
    mapped apart), None for types the engine cannot run."""
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
        "dialect": "aliyun",
        "subject": SUBJECT,
        "active": rule["Status"] == "RUNNING",
    }
    if (topic := topic_of(rule)) is not None:
        item["topic"] = topic
    if rule.get("RuleDesc"):
        item["description"] = rule["RuleDesc"][:256]
    if rule.get("Select"):
        item["select"] = rule["Select"]
    if rule.get("Where"):
        item["where"] = rule["Where"]
    return item


def engine_action(action: dict[str, Any], broker: Any = None) -> dict[str, Any] | None:
    """The engine action of a stored one; None when it cannot run here
    (REPUBLISH without a `broker`: the url of the worker's MQTT source)."""
    from engine.config import channels

    ids: dict[str, Any] = {"action_id": f"{PREFIX}{action['Id']}",
                           "rule_id": f"{PREFIX}{action['RuleId']}"}
    if action.get("ErrorActionFlag"):
        # It receives what the rule's other actions could not deliver.
        ids["error_action"] = True
    config = orjson.loads(action["Configuration"])
    if action["Type"].upper() == REPUBLISH:
        if broker is None:
            return None
        # topicType only says which kind the (full) topic is: nothing to map.
        return {**ids, "channel": "MQTT_FORWARDING",
                "channel_detail": {"mqtt_forwarding": {"topic": config["topic"], "url": broker,
                                                       "qos": 1}}}
    channel = channel_of(action["Type"])
    if channel is None:
        return None
    sink = channels.registry()[channel]
    return {**ids, "channel": channel, "channel_detail": {sink.detail_key: config}}


def route_items(route: dict[str, Any], broker: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The rule and actions a topic route runs as."""
    rule_id = f"{ROUTE_PREFIX}{route['Id']}"
    rule = {"rule_id": rule_id, "subject": SUBJECT, "topic": route["SrcTopic"],
            "description": f"topic route from {route['SrcTopic']}"[:256],
            "select": "notify_data.body.content AS content, notify_data.body.binary AS binary"}
    actions = [{"action_id": f"{rule_id}-{zlib.crc32(dst.encode()):08x}", "rule_id": rule_id,
                "channel": "MQTT_FORWARDING",
                "channel_detail": {"mqtt_forwarding": {"topic": dst, "url": broker, "qos": 1,
                                                       "message": "content"}}}
               for dst in route["DstTopics"]]
    return rule, actions


def engine_items(records: Iterable[Stored], broker: Any = None) -> dict[str, list[dict[str, Any]]]:
    """The project's Alibaba rules and topic routes as rule-file sections
    (`rules`, `actions`). `broker`: where REPUBLISH actions and routes
    publish (None: they are left out)."""
    rules, actions = [], []
    for record in sorted(records, key=lambda r: r.seq):
        if record.kind == RULES:
            rules.append(engine_rule(record.body))
        elif record.kind == ACTIONS:
            item = engine_action(record.body, broker)
            if item is not None:
                actions.append(item)
        elif record.kind == ROUTES and broker is not None:
            rule, targets = route_items(record.body, broker)
            rules.append(rule)
            actions.extend(targets)
    return {"rules": rules, "actions": actions}
