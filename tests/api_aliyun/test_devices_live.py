"""Alibaba's official SDK against a running `engine run` with an MQTT
source on Alibaba topics (real Mosquitto, paho devices and subscriber, a
real HTTP receiver): CreateProduct and RegisterDevice make the device known
to the worker; a topic rule in Alibaba's dialect forwards to HTTP and
REPUBLISHes to a topic; Pub publishes to a device topic; a system-topic rule reads a property post in the
rules engine's format; StopRule stops it; DeleteRule removes it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.api.conftest import api_section, free_port, start_worker
from tests.api_aliyun.conftest import Sdk
from tests.api_aliyun.test_lifecycle import Receiver, until
from tests.devices.support import BROKER, Device, port_open

REPO = Path(__file__).resolve().parents[2]


def _worker(tmp_path: Path, api: int) -> subprocess.Popen:
    return start_worker(tmp_path, f"""\
sources:
  - mqtt: {{url: "mqtt://{BROKER[0]}:{BROKER[1]}", client_id: "ali-{os.getpid()}-{api}",
            session_expiry: 0, alibaba_topics: true}}
worker: {{state_dir: "{tmp_path / 'state'}"}}
""" + api_section(tmp_path, api))


class Subscriber:
    """A paho client recording (topic, JSON payload) of what it receives."""

    def __init__(self, topic: str) -> None:
        self.received: list[tuple[str, dict]] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"sub-{uuid.uuid4().hex[:8]}")
        self.raw: list[tuple[str, bytes]] = []
        self.client.on_message = lambda c, u, m: (
            self.raw.append((m.topic, m.payload)),
            self.received.append((m.topic, json.loads(m.payload))) if m.payload[:1] == b"{"
            else None)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.connect(*BROKER)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert self.ready.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.timeout(150)
def test_sdk_topic_rule_forwards_republishes_stops_and_deletes(tmp_path):
    assert port_open(BROKER), "Mosquitto must run on 127.0.0.1:1883 (scripts/services.sh up)"
    receiver = Receiver()
    api = free_port()
    proc = _worker(tmp_path, api)
    device = Device()
    alerts = None
    try:
        until(lambda: port_open(("127.0.0.1", api)), 30)
        sdk = Sdk(f"127.0.0.1:{api}")
        pk = sdk.ok("CreateProduct", ProductName="sensors", NodeType=0)["ProductInfo"]["ProductKey"]
        sdk.ok("RegisterDevice", ProductKey=pk, DeviceName="dev1")
        alerts = Subscriber(f"/{pk}/+/user/alerts")
        hot = sdk.ok("CreateRule", Name="hot_devices", ProductKey=pk,
                     ShortTopic="+/user/update", TopicType=1,
                     Select="deviceName() AS deviceName, temp, topic(2) AS dn",
                     Where="temp > 30")["RuleId"]
        sdk.ok("CreateRuleAction", RuleId=hot, Type="HTTP",
               Configuration=json.dumps({"url": f"{receiver.url}/hot"}))
        sdk.ok("CreateRuleAction", RuleId=hot, Type="REPUBLISH",
               Configuration=json.dumps({"topic": f"/{pk}/${{deviceName}}/user/alerts",
                                         "topicType": 1}))
        props = sdk.ok("CreateRule", Name="properties", ProductKey=pk,
                       ShortTopic="+/thing/event/property/post",
                       Select="items.temp.value AS t, thingPropertyFlatMapNotify() AS flat, "
                              "messageId() AS id")["RuleId"]
        sdk.ok("CreateRuleAction", RuleId=props, Type="HTTP",
               Configuration=json.dumps({"url": f"{receiver.url}/props"}))
        rule = sdk.ok("GetRule", RuleId=hot)["RuleInfo"]
        assert rule["Topic"] == f"/{pk}/+/user/update" and rule["Status"] == "STOP"
        sdk.ok("StartRule", RuleId=hot)
        sdk.ok("StartRule", RuleId=props)

        def send(temp: int) -> None:
            device.publish_all([(f"/{pk}/dev1/user/update", json.dumps({"temp": temp})),
                                (f"/{pk}/dev1/user/update", json.dumps({"temp": 1}))])

        until(lambda: (send(35), "/hot" in receiver.paths())[1], 30)
        hot_rows = [b for p, b in receiver.received if p == "/hot"]
        assert hot_rows[0] == {"deviceName": "dev1", "temp": 35, "dn": "dev1"}
        assert all(row["temp"] == 35 for row in hot_rows)   # WHERE temp > 30
        until(lambda: alerts.received, 15)
        assert alerts.received[0] == (f"/{pk}/dev1/user/alerts", hot_rows[0])

        post = {"id": "42", "version": "1.0", "method": "thing.event.property.post",
                "params": {"temp": {"value": 21.5, "time": 1524448722000}, "hum": 40}}
        device.publish_all([(f"/sys/{pk}/dev1/thing/event/property/post", json.dumps(post))])
        until(lambda: [b for p, b in receiver.received if p == "/props"], 15)
        row = [b for p, b in receiver.received if p == "/props"][0]
        assert row == {"t": 21.5, "flat": {"temp": 21.5, "hum": 40}, "id": "42"}

        # Pub (§2.10.1): to a device topic, through the same broker.
        downlink = Subscriber(f"/{pk}/dev1/user/get")
        try:
            answer = sdk.ok("Pub", ProductKey=pk, TopicFullName=f"/{pk}/dev1/user/get",
                            MessageContent=base64.b64encode(b"\x00open valve").decode(), Qos=1)
            assert answer["MessageId"].isdigit()
            until(lambda: downlink.raw, 15)
            assert downlink.raw == [(f"/{pk}/dev1/user/get", b"\x00open valve")]
        finally:
            downlink.close()
        sdk.fails("Pub", "iot.messagebroker.InvalidFormattedTopicName", ProductKey=pk,
                  TopicFullName="/otherpk/dev1/user/get", MessageContent="aGk=")
        sdk.fails("Pub", "iot.messagebroker.MessageContentIsNotBase64Encode", ProductKey=pk,
                  TopicFullName=f"/{pk}/dev1/user/get", MessageContent="not base64!")

        sdk.ok("StopRule", RuleId=hot)
        assert sdk.ok("GetRule", RuleId=hot)["RuleInfo"]["Status"] == "STOP"

        def stopped() -> bool:
            before = receiver.paths().count("/hot")
            send(36)
            device.publish_all([(f"/sys/{pk}/dev1/thing/event/property/post", json.dumps(post))])
            n = receiver.paths().count("/props")
            until(lambda: receiver.paths().count("/props") > n, 15)   # processed since
            return receiver.paths().count("/hot") == before

        until(stopped, 30)
        sdk.ok("DeleteRule", RuleId=hot)
        sdk.fails("GetRule", "iot.rule.NotFoundRule", RuleId=hot)
        assert sdk.ok("ListRuleActions", RuleId=props)["RuleActionList"][0]["Type"] == "HTTP"
    finally:
        device.close()
        if alerts is not None:
            alerts.close()
        proc.terminate()
        proc.wait(timeout=30)
        receiver.server.shutdown()
    assert proc.returncode == 0, (tmp_path / "engine.log").read_text()[-3000:]
