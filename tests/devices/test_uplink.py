"""Device uplink topics -> notifications (engine.sources.uplink), no broker."""

from __future__ import annotations

import orjson
import pytest

from engine.sources.device_registry import Registry, RegistryConfig
from engine.sources.uplink import ConnectionStatus, Uplink, device_times

NOW = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z
NOW_C, NOW_MS = "20231114T221320Z", "2023-11-14T22:13:20.250Z"

REGISTRY = {
    "products": [{"product_id": "thermo", "name": "Thermometer", "app_id": "app1"},
                 {"product_id": "gw", "app_id": "app1"}],
    "devices": [
        {"device_id": "thermo_n1", "node_id": "n1", "product_id": "thermo",
         "tags": [{"tag_key": "site", "tag_value": "north"}]},
        {"device_id": "gw_1", "node_id": "g1", "product_id": "gw"},
        {"device_id": "child_a", "node_id": "ca", "product_id": "thermo", "gateway_id": "gw_1",
         "app_id": "app2"},
        {"device_id": "cold", "product_id": "thermo", "frozen": True},
    ],
}
H_THERMO = {"device_id": "thermo_n1", "product_id": "thermo", "app_id": "app1", "node_id": "n1",
            "gateway_id": "thermo_n1", "tags": [{"tag_key": "site", "tag_value": "north"}]}
H_GW = {"device_id": "gw_1", "product_id": "gw", "app_id": "app1", "node_id": "g1",
        "gateway_id": "gw_1"}
H_CHILD = {"device_id": "child_a", "product_id": "thermo", "app_id": "app2", "node_id": "ca",
           "gateway_id": "gw_1"}


@pytest.fixture
def uplink() -> Uplink:
    return Uplink(Registry(RegistryConfig.model_validate(REGISTRY)))


def convert(uplink: Uplink, topic: str, payload, props=None):
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    items, reason = uplink.convert(topic, raw, NOW, props)
    return [orjson.loads(x) for x in items], reason


def test_property_report_keeps_device_time_and_fills_missing_ones(uplink):
    payload = {"services": [
        {"service_id": "Temperature", "properties": {"value": 57}, "event_time": "20151212T121212Z"},
        {"service_id": "Battery", "properties": {"level": 80}}]}
    (n,), reason = convert(uplink, "$oc/devices/thermo_n1/sys/properties/report", payload)
    assert reason is None
    rid = n.pop("request_id")
    assert len(rid) == 36
    assert n == {"resource": "device.property", "event": "report",
                 "event_time": "20151212T121212Z", "event_time_ms": "2015-12-12T12:12:12.000Z",
                 "notify_data": {"header": H_THERMO, "body": {"services": [
                     payload["services"][0],
                     {"service_id": "Battery", "properties": {"level": 80},
                      "event_time": NOW_C}]}}}


def test_property_report_without_times_uses_receipt_time(uplink):
    (n,), _ = convert(uplink, "$oc/devices/thermo_n1/sys/properties/report",
                      {"services": [{"service_id": "s", "properties": {},
                                     "event_time": "2020-08-12T12:12:12.333Z"}]})
    assert (n["event_time"], n["event_time_ms"]) == ("20200812T121212Z",
                                                     "2020-08-12T12:12:12.333Z")
    (n,), _ = convert(uplink, "$oc/devices/thermo_n1/sys/properties/report",
                      {"services": [{"service_id": "s", "properties": {}, "event_time": "bad"}]})
    assert (n["event_time"], n["event_time_ms"]) == (NOW_C, NOW_MS)
    assert n["notify_data"]["body"]["services"][0]["event_time"] == NOW_C


def test_gateway_batch_report_is_one_notification_per_child(uplink):
    payload = {"devices": [
        {"device_id": "child_a", "services": [{"service_id": "analog",
                                              "properties": {"PhV_phsA": "1"},
                                              "event_time": "20190606T121212Z"}]},
        {"device_id": "child_a", "services": [{"service_id": "analog",
                                              "properties": {"PhV_phsA": "3"}}]}]}
    ns, reason = convert(uplink, "$oc/devices/gw_1/sys/gateway/sub_devices/properties/report",
                         payload)
    assert reason is None
    assert [n["notify_data"]["header"] for n in ns] == [H_CHILD, H_CHILD]
    assert [n["event_time"] for n in ns] == ["20190606T121212Z", NOW_C]
    assert ns[0]["notify_data"]["body"] == {"services": payload["devices"][0]["services"]}
    # A device that is not this gateway's child refuses the whole report.
    payload["devices"][1]["device_id"] = "thermo_n1"
    ns, reason = convert(uplink, "$oc/devices/gw_1/sys/gateway/sub_devices/properties/report",
                         payload)
    assert ns == [] and "not a child device of gateway 'gw_1'" in reason


@pytest.mark.parametrize("payload, content", [
    (b"hello!", "hello!"),
    ({"temperature": 40}, {"temperature": 40}),
    ({"object_device_id": "thermo_n1", "name": None, "id": "m-1", "content": "hello!"}, "hello!"),
    (b"\xff\x00\x01", "/wAB"),  # not UTF-8: base64
])
def test_message_report(uplink, payload, content):
    (n,), reason = convert(uplink, "$oc/devices/thermo_n1/sys/messages/up?request_id=r-9",
                           payload)
    assert reason is None
    assert n == {"resource": "device.message", "event": "report", "event_time": NOW_C,
                 "event_time_ms": NOW_MS, "request_id": "r-9",
                 "notify_data": {"header": H_THERMO, "body": {
                     "topic": "$oc/devices/thermo_n1/sys/messages/up", "content": content}}}


def test_custom_topic_message_with_mqtt5_properties(uplink):
    props = {"content_type": "text/plain",
             "user_properties": [{"prop_key": "k", "prop_value": "v"}]}
    (n,), _ = convert(uplink, "$oc/devices/thermo_n1/user/telemetry/raw", b'{"a": 1}', props)
    assert n["notify_data"]["body"] == {"topic": "$oc/devices/thermo_n1/user/telemetry/raw",
                                        "content": {"a": 1}, "properties": props}


def test_child_status_event_and_version_report(uplink):
    ns, reason = convert(uplink, "$oc/devices/gw_1/sys/events/up", {"services": [
        {"service_id": "$sub_device_manager", "event_type": "sub_device_update_status",
         "event_time": "20151212T121212Z",
         "paras": {"device_statuses": [{"device_id": "child_a", "status": "ONLINE"}]}},
        {"service_id": "$ota", "event_type": "version_report",
         "paras": {"sw_version": "v1.0", "fw_version": "v2.0"}},
        {"service_id": "$time_sync", "event_type": "time_sync_request", "paras": {}}]})
    assert reason is None
    status, update = ns
    assert (status["resource"], status["event"]) == ("device.status", "update")
    assert status["notify_data"] == {"header": H_CHILD, "body": {
        "status": "ONLINE", "last_online_time": "20151212T121212Z",
        "status_update_time": "2015-12-12T12:12:12.000Z"}}
    assert (update["resource"], update["event"], update["event_time"]) == (
        "device", "update", NOW_C)
    assert update["notify_data"] == {"body": {**H_GW, "status": "ONLINE",
                                              "sw_version": "v1.0", "fw_version": "v2.0"}}


def test_command_response(uplink):
    (n,), _ = convert(uplink, "$oc/devices/thermo_n1/sys/commands/response/request_id=c-7",
                      {"result_code": 1, "paras": {"result": "busy"}})
    assert (n["resource"], n["event"]) == ("device.command.status", "update")
    assert n["notify_data"] == {"header": H_THERMO, "body": {
        "command_id": "c-7", "response_time": NOW_C, "status": "FAILED",
        "result": {"result_code": 1, "paras": {"result": "busy"}}}}


@pytest.mark.parametrize("topic, payload, reason", [
    ("$oc/devices/nobody/sys/properties/report", {"services": []}, "unknown device 'nobody'"),
    ("$oc/devices/cold/sys/messages/up", b"x", "device 'cold' is frozen"),
    ("$oc/devices/thermo_n1/sys/properties/report", b"{not json", "payload is not JSON"),
    ("$oc/devices/thermo_n1/sys/properties/report", [1], "must be a JSON object"),
    ("$oc/devices/thermo_n1/sys/properties/report", {"services": [{"service_id": "s"}]},
     "services[0] needs service_id and properties"),
    ("$oc/devices/thermo_n1/sys/nonsense", {}, "unknown device topic 'sys/nonsense'"),
    ("sensors/thermo_n1", {}, "not an IoTDA device topic"),
])
def test_rejections_name_the_cause(uplink, topic, payload, reason):
    ns, why = convert(uplink, topic, payload)
    assert ns == [] and reason in why


def test_topics_without_a_notification_kind_are_ignored(uplink):
    for path in ("sys/properties/set/response/request_id=1", "sys/shadow/get/request_id=2",
                 "sys/messages/down"):
        assert convert(uplink, f"$oc/devices/thermo_n1/{path}", {}) == ([], None)


def test_unknown_devices_accepted_with_a_bare_header():
    uplink = Uplink(Registry(RegistryConfig(unknown_devices="accept")))
    (n,), _ = convert(uplink, "$oc/devices/stranger/sys/messages/up", b"hi")
    assert n["notify_data"]["header"] == {"device_id": "stranger", "gateway_id": "stranger"}


def test_registry_references_are_checked():
    with pytest.raises(ValueError, match="product_id nope is not registered"):
        RegistryConfig.model_validate({"devices": [{"device_id": "a", "product_id": "nope"}]})
    with pytest.raises(ValueError, match="gateway_id gw is not registered"):
        RegistryConfig.model_validate({"products": [{"product_id": "p"}], "devices": [
            {"device_id": "a", "product_id": "p", "gateway_id": "gw"}]})


def test_device_times():
    assert device_times("20151212T121212Z") == ("20151212T121212Z", "2015-12-12T12:12:12.000Z")
    assert device_times("2015-12-12T12:12:12.5Z") is None
    assert device_times(None) is None


def _statuses(lines: list[str]) -> list[tuple[str, str, str]]:
    status = ConnectionStatus(Registry(RegistryConfig.model_validate(REGISTRY)))
    out = []
    for line in lines:
        for n in status.convert(line.encode(), NOW):
            d = orjson.loads(n)
            body = d["notify_data"]["body"]
            assert d["event_time"] == body["last_online_time"] == NOW_C
            assert body["status_update_time"] == NOW_MS
            out.append((d["notify_data"]["header"]["device_id"], body["status"], d["resource"]))
    return out


def test_connection_log_lines_become_device_status():
    got = _statuses([
        "1: New connection from 127.0.0.1:5 on port 1883.",
        "1: New client connected from 127.0.0.1:5 as thermo_n1_0_0_2026120404 (p2, c1, k60, "
        "u'thermo_n1').",
        "1: New client connected from 127.0.0.1:6 as gw_1 (p5, c1, k60).",
        "1: New client connected from 127.0.0.1:7 as whatever (p5, c0, k30, u'child_a').",
        # not devices of the registry, or frozen: nothing
        "1: New client connected from 127.0.0.1:8 as iot-engine-host (p5, c0, k30).",
        "1: New client connected from 127.0.0.1:9 as cold (p4, c1, k60, u'cold').",
        # a takeover is not a disconnect
        "1: Client gw_1 already connected, closing old connection.",
        "1: Client thermo_n1_0_0_2026120404 disconnected.",
        "1: Client gw_1 has exceeded timeout, disconnecting.",
        "1: Client whatever disconnected due to protocol error.",
        "1: Client iot-engine-host closed its connection.",
        "1: Client child_a closed its connection.",   # never seen connecting: its own id
        "garbage",
    ])
    assert got == [("thermo_n1", "ONLINE", "device.status"), ("gw_1", "ONLINE", "device.status"),
                   ("child_a", "ONLINE", "device.status"),
                   ("thermo_n1", "OFFLINE", "device.status"),
                   ("gw_1", "OFFLINE", "device.status"), ("child_a", "OFFLINE", "device.status"),
                   ("child_a", "OFFLINE", "device.status")]


def test_connection_log_ignores_clients_even_when_unknown_devices_are_accepted():
    status = ConnectionStatus(Registry(RegistryConfig(unknown_devices="accept")))
    assert status.convert(b"1: New client connected from 127.0.0.1:8 as iot-engine-host "
                          b"(p5, c0, k30).", NOW) == []
