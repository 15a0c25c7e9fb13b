"""Topic route tables (seed §2.7.5-§2.7.8) through Alibaba's official SDK:
against `engine api` (the table: answers, refusals, loops), and against a
running worker with an MQTT source (real Mosquitto, paho device and
subscriber): a message on the source topic arrives on every target topic
byte for byte, and no more once the route is deleted."""

from __future__ import annotations

import json
import time

import pytest

from engine.api.aliyun.mapping import engine_items
from engine.api.storage import Stored
from engine.config import validate_config_dict
from tests.api.conftest import free_port
from tests.api_aliyun.conftest import Sdk, stored
from tests.api_aliyun.test_devices_live import Subscriber, _worker
from tests.api_aliyun.test_lifecycle import until
from tests.devices.support import BROKER, Device, port_open

PK = "a1route"


def _t(device: str, leaf: str = "get") -> str:
    return f"/{PK}/{device}/user/{leaf}"


def test_route_table_answers_and_refusals(server):
    endpoint, db = server
    sdk = Sdk(endpoint)
    src = _t("dev1", "update")
    answer = sdk.ok("CreateTopicRouteTable", SrcTopic=src, DstTopics=[_t("dev2"), _t("dev3")])
    assert answer["FailureTopics"] == []
    assert sdk.ok("QueryTopicRouteTable", Topic=src)["DstTopics"] == [_t("dev2"), _t("dev3")]
    assert sdk.ok("QueryTopicReverseRouteTable", Topic=_t("dev3"))["SrcTopics"] == [src]
    assert sdk.ok("QueryTopicRouteTable", Topic=_t("dev9"))["DstTopics"] == []

    # One target added, one already there, one not a user topic, one that
    # would bring messages back to their source (dev3/get -> dev1/update).
    answer = sdk.ok("CreateTopicRouteTable", SrcTopic=src,
                    DstTopics=[_t("dev4"), _t("dev2"), f"/sys/{PK}/dev5/thing/x"])
    assert answer["FailureTopics"] == [_t("dev2"), f"/sys/{PK}/dev5/thing/x"]
    loop = sdk.fails("CreateTopicRouteTable", "iot.messagebroker.CreateTopicRouteFailed",
                     SrcTopic=_t("dev3"), DstTopics=[src])
    assert src in loop["ErrorMessage"]
    assert sdk.ok("QueryTopicRouteTable", Topic=src)["DstTopics"] == \
        [_t("dev2"), _t("dev3"), _t("dev4")]

    before = stored(db)
    sdk.fails("CreateTopicRouteTable", "iot.messagebroker.NullSrcTopicName", DstTopics=[_t("d")])
    sdk.fails("CreateTopicRouteTable", "iot.messagebroker.InvalidFormattedSrcTopicName",
              SrcTopic=f"/{PK}/+/user/update", DstTopics=[_t("dev2")])
    sdk.fails("CreateTopicRouteTable", "iot.messagebroker.NoneElementDestTopicNameInArray",
              SrcTopic=src)
    sdk.fails("CreateTopicRouteTable", "iot.messagebroker.DestTopicNameArraySizeIsLarge",
              SrcTopic=src, DstTopics=[_t(f"many{i}") for i in range(8)])
    sdk.fails("QueryTopicRouteTable", "iot.messagebroker.NullTopicName")
    sdk.fails("DeleteTopicRouteTable", "iot.messagebroker.DeleteTopicRouteFailed",
              SrcTopic=src, DstTopics=[_t("nope")])
    assert stored(db) == before

    answer = sdk.ok("DeleteTopicRouteTable", SrcTopic=src, DstTopics=[_t("dev2"), _t("nope")])
    assert answer["FailureTopics"] == [_t("nope")]
    sdk.ok("DeleteTopicRouteTable", SrcTopic=src, DstTopics=[_t("dev3"), _t("dev4")])
    assert sdk.ok("QueryTopicRouteTable", Topic=src)["DstTopics"] == []
    assert not [row for row in stored(db) if row[1] == "aliyun_routes"]


def test_a_route_runs_as_a_valid_rule_with_one_action_per_target():
    route = Stored("aliyun_routes", "1000", 1,
                   {"Id": 1000, "SrcTopic": _t("a", "up"), "DstTopics": [_t("b"), _t("c")]})
    assert engine_items([route]) == {"rules": [], "actions": []}   # no broker: left out
    items = engine_items([route], "mqtt://127.0.0.1:1883")
    config = validate_config_dict(items, "routes")
    (rule,) = config.rules
    assert rule.rule_id == "aliyun-route-1000" and rule.topic == _t("a", "up")
    assert [a.channel_detail["mqtt_forwarding"].topic for a in config.actions] \
        == [_t("b"), _t("c")]
    assert {a.channel_detail["mqtt_forwarding"].message for a in config.actions} == {"content"}


@pytest.mark.timeout(120)
def test_messages_are_forwarded_as_they_arrived_until_the_route_is_deleted(tmp_path):
    assert port_open(BROKER), "Mosquitto must run on 127.0.0.1:1883 (scripts/services.sh up)"
    api = free_port()
    proc = _worker(tmp_path, api)
    device = Device()
    targets = None
    try:
        until(lambda: port_open(("127.0.0.1", api)), 30)
        sdk = Sdk(f"127.0.0.1:{api}")
        pk = sdk.ok("CreateProduct", ProductName="routed", NodeType=0)["ProductInfo"]["ProductKey"]
        for name in ("dev1", "dev2", "dev3"):
            sdk.ok("RegisterDevice", ProductKey=pk, DeviceName=name)
        src = f"/{pk}/dev1/user/update"
        dsts = [f"/{pk}/dev2/user/get", f"/{pk}/dev3/user/get"]
        targets = Subscriber(f"/{pk}/+/user/get")
        sdk.ok("CreateTopicRouteTable", SrcTopic=src, DstTopics=dsts)
        binary = b"\x00\xff raw \x80"
        text = '{"b": [1, 2.50], "a": "x"}'

        def by_topic() -> dict[str, list[bytes]]:
            got: dict[str, list[bytes]] = {}
            for topic, payload in list(targets.raw):
                got.setdefault(topic, []).append(payload)
            return got

        def forwarded() -> bool:
            device.publish_all([(src, binary), (src, text)])
            return all(len(by_topic().get(dst, [])) >= 2 for dst in dsts)
        until(forwarded, 45)
        # Bytes as sent; JSON as the same value (published compact). (A
        # round published while the worker took the route in may be cut.)
        for dst in dsts:
            payloads = by_topic()[dst]
            assert binary in payloads
            assert all(p == binary or json.loads(p) == json.loads(text) for p in payloads)
            assert any(p != binary for p in payloads)

        sdk.ok("DeleteTopicRouteTable", SrcTopic=src, DstTopics=dsts)

        def stopped() -> bool:
            n = len(targets.raw)
            device.publish_all([(src, b"after")])
            time.sleep(1.5)
            return len(targets.raw) == n
        until(stopped, 30)
    finally:
        device.close()
        if targets is not None:
            targets.close()
        proc.terminate()
        proc.wait(30)
