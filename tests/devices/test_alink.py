"""Alibaba device topics -> notifications (engine.sources.alink), no broker."""

from __future__ import annotations

import orjson
import pytest

from engine.sources.alink import BothUplinks
from engine.sources.device_registry import Registry, RegistryConfig
from engine.sources.uplink import Uplink
from tests.devices.test_uplink import H_THERMO, NOW, NOW_C, REGISTRY

MS = int(NOW * 1000)


@pytest.fixture
def both() -> BothUplinks:
    return BothUplinks(Uplink(Registry(RegistryConfig.model_validate(REGISTRY))))


def convert(both: BothUplinks, topic: str, payload) -> tuple[list[dict], str | None]:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    items, reason = both.convert(topic, raw, NOW)
    return [orjson.loads(x) for x in items], reason


def test_property_post_becomes_the_rules_engine_format(both):
    alink = {"id": "123", "version": "1.0", "method": "thing.event.property.post",
             "params": {"temp": 21.5, "power": {"value": "on", "time": 1524448722000}}}
    (n,), reason = convert(both, "/sys/thermo/n1/thing/event/property/post", alink)
    assert reason is None
    assert (n["resource"], n["event"], n["event_time"], n["request_id"]) == \
        ("device.message", "report", NOW_C, "123")
    assert n["notify_data"]["header"] == H_THERMO   # ProductKey/DeviceName -> the registry
    body = n["notify_data"]["body"]
    assert body["topic"] == "/sys/thermo/n1/thing/event/property/post"
    assert body["content"] == {
        "iotId": "thermo_n1", "requestId": "123", "productKey": "thermo", "deviceName": "n1",
        "gmtCreate": MS, "items": {"temp": {"value": 21.5, "time": MS},
                                   "power": {"value": "on", "time": 1524448722000}}}
    assert body["properties"] == {"temp": 21.5, "power": "on"}


def test_event_post(both):
    alink = {"id": "7", "params": {"value": {"level": 3}, "time": 1524448722000}}
    (n,), _ = convert(both, "/sys/thermo/n1/thing/event/Alarm/post", alink)
    content = n["notify_data"]["body"]["content"]
    assert content["identifier"] == "Alarm" and content["value"] == {"level": 3}
    assert content["time"] == 1524448722000 and content["iotId"] == "thermo_n1"


@pytest.mark.parametrize("payload,content,binary", [
    ({"temp": 30}, {"temp": 30}, False), ([1, 2], [1, 2], False),
    (b"\x00\xffraw", "AP9yYXc=", True), (b"plain text", "cGxhaW4gdGV4dA==", True)])
def test_custom_topics_carry_the_payload(both, payload, content, binary):
    (n,), _ = convert(both, "/thermo/n1/user/update", payload)
    body = n["notify_data"]["body"]
    assert body["content"] == content and body.get("binary", False) is binary
    assert body["topic"] == "/thermo/n1/user/update"


@pytest.mark.parametrize("topic,payload,reason", [
    ("/thermo/nobody/user/x", {}, "unknown device 'nobody' of product 'thermo'"),
    ("/sys/thermo/n1/thing/event/property/post", b"nope", "payload is not Alink JSON"),
    ("/sys/thermo/n1/thing/event/property/post", {"params": [1]}, "'params' must be an object"),
    ("/thermo/n1", {}, "not an Alibaba device topic"),
    ("//n1/user/x", {}, "not an Alibaba device topic"),
])
def test_rejections_name_the_cause(both, topic, payload, reason):
    items, why = convert(both, topic, payload)
    assert items == [] and reason in why


def test_frozen_and_unknown_accepted_devices():
    registry = Registry(RegistryConfig.model_validate({**REGISTRY, "devices": [
        *REGISTRY["devices"],
        {"device_id": "ice", "node_id": "ice", "product_id": "thermo", "frozen": True}],
        "unknown_devices": "accept"}))
    both = BothUplinks(Uplink(registry))
    assert "frozen" in convert(both, "/thermo/ice/user/x", {})[1]
    (n,), _ = convert(both, "/thermo/new1/user/x", {})
    assert n["notify_data"]["header"] == {"device_id": "thermo_new1", "product_id": "thermo",
                                          "node_id": "new1", "gateway_id": "thermo_new1"}


def test_iotda_topics_still_go_to_the_iotda_uplink(both):
    (n,), _ = convert(both, "$oc/devices/thermo_n1/sys/messages/up", {"a": 1})
    assert n["notify_data"]["body"]["topic"] == "$oc/devices/thermo_n1/sys/messages/up"
