"""Topic route tables (seed §2.7.5–§2.7.8): messages a device publishes on a
source topic are also published, as they arrived, on each of its target
topics, through the worker's MQTT broker.

Stored per project as kind `aliyun_routes`, one record per source topic:
`{"Id", "SrcTopic", "DstTopics": [...]}`. Workers run each as an ordinary
rule and actions (`mapping.route_items`), so a forward is delivered, retried,
backlogged and counted like any other (rule `aliyun-route-<Id>`).

Topics are custom topics of a device, `/{ProductKey}/{DeviceName}/user/…`,
without wildcards (the seed: "only supports … user topics"). A target that
would make a message go round in a loop (back to its own source, directly
or through other routes) is refused, in `FailureTopics` as Alibaba answers
a target it cannot add; so is one already routed. At most
`MAX_TARGETS` targets per source: each runs as one action with one broker
connection.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from engine.api.aliyun.errors import AliyunError
from engine.api.aliyun.mapping import ROUTES
from engine.api.aliyun.operations import next_id
from engine.api.storage import Delete, Op, Put, Store, Stored
from engine.config.limits import ApiLimits

Params = Mapping[str, str]
Operation = Callable[[Store, str, Params, ApiLimits], Awaitable[dict[str, Any]]]

MAX_TARGETS = 10
MAX_PARAMS = 100     # DstTopic.1 … DstTopic.100 are read
# /{ProductKey}/{DeviceName}/user/{one or more levels}: no wildcards, no
# empty level, nothing a topic template (`${`) would read.
_USER_TOPIC = re.compile(r"/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/user(/[^/+#$\x00]+)+")


def is_user_topic(topic: str) -> bool:
    return len(topic) <= 256 and _USER_TOPIC.fullmatch(topic) is not None


def _source(params: Params, name: str = "SrcTopic") -> str:
    topic = params.get(name, "")
    if not topic:
        code = "iot.messagebroker.NullSrcTopicName" if name == "SrcTopic" else \
            "iot.messagebroker.NullTopicName"
        raise AliyunError(code, f"{name} cannot be empty.")
    if not is_user_topic(topic):
        code = "iot.messagebroker.InvalidFormattedSrcTopicName" if name == "SrcTopic" else \
            "iot.messagebroker.InvalidFormattedTopicName"
        raise AliyunError(code, f"{name} must be a custom topic of a device, "
                          "/${ProductKey}/${DeviceName}/user/…, without wildcards.")
    return topic


def _targets(params: Params) -> list[str]:
    """DstTopic.1, DstTopic.2, … as the SDK sends a list (first of each)."""
    out: list[str] = []
    for i in range(1, MAX_PARAMS + 1):
        topic = params.get(f"DstTopic.{i}")
        if topic is None:
            break
        if topic and topic not in out:
            out.append(topic)
    if not out:
        raise AliyunError("iot.messagebroker.NoneElementDestTopicNameInArray",
                          "Target topic list cannot be empty.")
    return out


def _routes(records: list[Stored]) -> dict[str, Stored]:
    return {r.body["SrcTopic"]: r for r in records if r.kind == ROUTES}


def _reaches(routes: dict[str, Stored], start: str, goal: str) -> bool:
    """Whether a message on `start` ends up on `goal` through `routes`."""
    seen, todo = {start}, [start]
    while todo:
        topic = todo.pop()
        if topic == goal:
            return True
        record = routes.get(topic)
        for nxt in record.body["DstTopics"] if record is not None else ():
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


async def create_topic_route_table(store: Store, project: str, params: Params,
                                   limits: ApiLimits) -> dict[str, Any]:
    src = _source(params)
    wanted = _targets(params)
    failures: list[str] = []

    def plan(records: list[Stored]) -> list[Op]:
        failures.clear()
        routes = _routes(records)
        old = routes.get(src)
        targets = list(old.body["DstTopics"]) if old is not None else []
        for dst in wanted:
            # A target that is not a user topic, is already routed, or would
            # bring the message back to `src` cannot be added.
            if not is_user_topic(dst) or dst in targets or _reaches(routes, dst, src):
                failures.append(dst)
            else:
                targets.append(dst)
        if len(targets) > MAX_TARGETS:
            raise AliyunError("iot.messagebroker.DestTopicNameArraySizeIsLarge",
                              f"A source topic has at most {MAX_TARGETS} target topics "
                              f"(this would make {len(targets)}).")
        if old is not None and targets == old.body["DstTopics"]:
            return []
        if not targets:
            return []
        if old is not None:
            return [Put(ROUTES, old.id, {**old.body, "DstTopics": targets})]
        counter, bump = next_id(records)
        return [bump, Put(ROUTES, str(counter),
                          {"Id": counter, "SrcTopic": src, "DstTopics": targets})]

    await store.change(project, plan)
    if len(failures) == len(wanted):
        raise AliyunError("iot.messagebroker.CreateTopicRouteFailed",
                          "Failed to create the route between the specified topics: "
                          f"{', '.join(failures)[:512]} (not a device's user topic, already "
                          "routed, or routed back to the source).")
    return {"FailureTopics": failures}


async def delete_topic_route_table(store: Store, project: str, params: Params,
                                   limits: ApiLimits) -> dict[str, Any]:
    src = _source(params)
    wanted = _targets(params)
    failures: list[str] = []

    def plan(records: list[Stored]) -> list[Op]:
        failures.clear()
        old = _routes(records).get(src)
        targets = list(old.body["DstTopics"]) if old is not None else []
        for dst in wanted:
            if dst in targets:
                targets.remove(dst)
            else:
                failures.append(dst)
        if old is None or targets == old.body["DstTopics"]:
            return []
        if not targets:
            return [Delete(ROUTES, old.id)]
        return [Put(ROUTES, old.id, {**old.body, "DstTopics": targets})]

    await store.change(project, plan)
    if len(failures) == len(wanted):
        raise AliyunError("iot.messagebroker.DeleteTopicRouteFailed",
                          f"No route from {src} to {', '.join(failures)[:512]}.")
    return {"FailureTopics": failures}


async def query_topic_route_table(store: Store, project: str, params: Params,
                                  limits: ApiLimits) -> dict[str, Any]:
    topic = _source(params, "Topic")
    record = _routes(await store.load(project)).get(topic)
    return {"DstTopics": list(record.body["DstTopics"]) if record is not None else []}


async def query_topic_reverse_route_table(store: Store, project: str, params: Params,
                                          limits: ApiLimits) -> dict[str, Any]:
    topic = _source(params, "Topic")
    routes = sorted(_routes(await store.load(project)).values(), key=lambda r: r.seq)
    return {"SrcTopics": [r.body["SrcTopic"] for r in routes if topic in r.body["DstTopics"]]}


OPERATIONS: dict[str, Operation] = {
    "CreateTopicRouteTable": create_topic_route_table,
    "DeleteTopicRouteTable": delete_topic_route_table,
    "QueryTopicRouteTable": query_topic_route_table,
    "QueryTopicReverseRouteTable": query_topic_reverse_route_table,
}
