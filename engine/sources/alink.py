"""Alibaba IoT device topics -> notifications (what Alibaba rules read).

A device of Alibaba's IoT Platform publishes Alink JSON on
`/sys/{ProductKey}/{DeviceName}/thing/…` or free-form payloads on custom
topics `/{ProductKey}/{DeviceName}/user/…`. Each message becomes one
`device.message`/`report` notification whose body holds the topic and, in
`content`, what Alibaba's rules engine hands a rule for that topic (the
payload an Alibaba rule's field paths read, docs/language-alibaba.md):

| topic                                   | `content`                                       |
| --------------------------------------- | ----------------------------------------------- |
| `/sys/pk/dn/thing/event/property/post`  | `{iotId, requestId, productKey, deviceName,     |
|                                         | gmtCreate, items: {name: {value, time}}}`; the  |
|                                         | body also has `properties: {name: value}`       |
| `/sys/pk/dn/thing/event/{id}/post`      | `{iotId, requestId, productKey, deviceName,     |
|                                         | gmtCreate, identifier, value, time}`            |
| other `/sys/…`, `/pk/dn/…` (custom)     | the payload: its JSON value, or (not JSON) its  |
|                                         | bytes in base64 with `binary: true` in the body |

The header comes from the registry: ProductKey is a product_id, DeviceName
a node_id of that product (`Registry.named_header`). IoTDA-dialect rules on
`device.message`/`report` see these notifications too (`notify_data.body.topic`
tells them apart).
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from engine.sources.device_registry import Registry
from engine.sources.uplink import Rejected, Result, Uplink, _next_request_id, receipt_times

PROPERTY_POST = "thing/event/property/post"
# What an MQTT source with `alibaba_topics` subscribes to besides IoTDA's.
ALIBABA_TOPICS = ["/sys/+/+/thing/event/+/post", "/+/+/user/#"]


class BothUplinks:
    """IoTDA's device topics (`Uplink`) and Alibaba's (topics starting '/')."""

    def __init__(self, uplink: Uplink) -> None:
        self.uplink = uplink
        self.registry = uplink.registry

    def convert(self, topic: str, payload: bytes | bytearray, received: float,
                properties: dict[str, Any] | None = None) -> Result:
        if not topic.startswith("/"):
            return self.uplink.convert(topic, payload, received, properties)
        try:
            return [orjson.dumps(convert(self.registry, topic, payload, received))], None
        except Rejected as e:
            return [], str(e)


def convert(registry: Registry, topic: str, payload: bytes | bytearray,
            received: float) -> dict[str, Any]:
    """The notification for one message on an Alibaba topic; raises
    Rejected with the reason when it cannot be one."""
    levels = topic.split("/")
    system = len(levels) > 1 and levels[1] == "sys"
    names = levels[2:4] if system else levels[1:3]
    if len(names) < 2 or not all(names) or len(levels) < (5 if system else 4):
        raise Rejected("not an Alibaba device topic (/sys/{ProductKey}/{DeviceName}/… or "
                       "/{ProductKey}/{DeviceName}/…)")
    product_key, device_name = names
    header = registry.named_header(product_key, device_name)
    if isinstance(header, str):
        raise Rejected(header)
    rest = "/".join(levels[4:]) if system else ""
    now = receipt_times(received)
    ms = int(received * 1000)
    body: dict[str, Any] = {"topic": topic}
    request_id = None
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        if system:
            raise Rejected(f"{rest or 'system topic'}: payload is not Alink JSON") from None
        body["content"] = base64.b64encode(payload).decode()
        body["binary"] = True
    else:
        if system and type(value) is dict and rest.startswith("thing/event/") \
                and rest.endswith("/post"):
            request_id = value.get("id") if type(value.get("id")) is str else None
            value = _event(rest, value, header, product_key, device_name, ms, body)
        body["content"] = value
    return {"resource": "device.message", "event": "report", "event_time": now[0],
            "event_time_ms": now[1], "request_id": request_id or _next_request_id(),
            "notify_data": {"header": header, "body": body}}


def _event(rest: str, alink: dict[str, Any], header: dict[str, Any], product_key: str,
           device_name: str, ms: int, body: dict[str, Any]) -> dict[str, Any]:
    """Alink `thing/event/…/post` -> the rules engine's data format."""
    params = alink.get("params")
    out: dict[str, Any] = {"iotId": header["device_id"], "requestId": alink.get("id"),
                           "productKey": product_key, "deviceName": device_name,
                           "gmtCreate": ms}
    if rest == PROPERTY_POST:
        if type(params) is not dict:
            raise Rejected("property post: 'params' must be an object")
        items, flat = {}, {}
        for name, v in params.items():
            # A property is `value` or `{value, time}` (time in epoch ms).
            if type(v) is dict and "value" in v:
                items[name] = {"value": v["value"], "time": v.get("time", ms)}
            else:
                items[name] = {"value": v, "time": ms}
            flat[name] = items[name]["value"]
        out["items"] = items
        body["properties"] = flat
        return out
    identifier = rest[len("thing/event/"):-len("/post")]
    event = params if type(params) is dict else {}
    out.update({"identifier": identifier,
                "value": event.get("value", params), "time": event.get("time", ms)})
    return out
