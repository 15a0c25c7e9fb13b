"""MQTT_FORWARDING against real Mosquitto brokers: a subscriber receives
exactly the forwarded records; a broker outage goes through the backlog."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from engine.config import validate_config_dict
from engine.destinations.base import Record
from engine.destinations.mqtt import MqttForwarding, MqttSink
from engine.runtime.worker import Worker
from engine.sources.simulator import SimulatorSource
from tests.devices.support import BROKER, Mosquitto, port_open
from tests.runtime.support import ListSource

pytestmark = pytest.mark.services


class HeldSource(ListSource):
    """A ListSource that stays open until stopped (a finite source would end
    the worker, and with it the backlog's drain)."""

    async def batches(self):
        async for batch in super().batches():
            yield batch
        while not self._stopped:
            await asyncio.sleep(0.05)


class Subscriber:
    """A paho subscriber (persistent QoS 1 session) that keeps (topic, payload, retain)."""

    def __init__(self, port: int, topic: str) -> None:
        self.got: list[tuple[str, dict, bool]] = []
        self.raw: list[bytes] = []
        self.topic = topic
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"sub-{uuid.uuid4().hex[:10]}", protocol=mqtt.MQTTv5)
        def on_message(_c, _u, m) -> None:
            self.raw.append(m.payload)
            self.got.append((m.topic, orjson.loads(m.payload), bool(m.retain)))

        self.client.on_message = on_message
        self.subscribed = False
        self.client.on_subscribe = lambda *_a: setattr(self, "subscribed", True)
        self.client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect("127.0.0.1", port, clean_start=True, properties=props)
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not self.subscribed and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.subscribed

    async def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker_port() -> int:
    if not port_open(BROKER):
        pytest.fail("Mosquitto is not running on 127.0.0.1:1883 (run `bash scripts/services.sh up`)")
    return BROKER[1]


async def test_subscriber_receives_exactly_the_forwarded_records(broker_port):
    base = f"fwd-{uuid.uuid4().hex[:8]}"
    sub = Subscriber(broker_port, f"{base}/#")
    sink = MqttSink(MqttForwarding(topic=base + "/${device_id}/${kind}", qos=1))
    await sink.open()
    try:
        records = [Record({"kind": "temp", "v": i}, f"dev{i % 3}") for i in range(200)]
        bad = [Record({"v": -1}, "dev9"), Record({"kind": "a/b"}, "dev9")]
        result = await sink.write(records[:100] + bad + records[100:])
        await sub.wait_for(200)
        await asyncio.sleep(0.2)  # nothing more arrives
    finally:
        await sink.close()
        sub.close()
    assert set(result.failures) == {100, 101}
    assert not any(f.retryable for f in result.failures.values())
    assert "has no string or number 'kind'" in result.failures[100].reason
    assert sorted(sub.got, key=lambda g: g[1]["v"]) == [
        (f"{base}/dev{i % 3}/temp", {"kind": "temp", "v": i}, False) for i in range(200)]


async def test_whole_notification_is_published_as_it_arrived(broker_port):
    # A record forwarded whole (`raw`) is published as its input bytes, not re-encoded.
    topic = f"fwd-{uuid.uuid4().hex[:8]}/${{device_id}}"
    raw = b'{"kind": "t", "v": 1.50, "w": 1E3}'
    sub = Subscriber(broker_port, topic.split("/")[0] + "/#")
    sink = MqttSink(MqttForwarding(topic=topic, qos=1))
    await sink.open()
    try:
        assert (await sink.write([Record(orjson.loads(raw), "dev1", raw=raw)])).ok
        await sub.wait_for(1)
    finally:
        await sink.close()
        sub.close()
    assert sub.raw == [raw]


async def test_retain_and_qos0(broker_port):
    topic = f"fwd-{uuid.uuid4().hex[:8]}/state"
    sink = MqttSink(MqttForwarding(topic=topic, qos=0, retain=True))
    await sink.open()
    try:
        assert (await sink.write([Record({"on": True})])).ok
        await asyncio.sleep(0.3)
        sub = Subscriber(broker_port, topic)  # subscribes after the publish: retained
        await sub.wait_for(1, timeout=10)
        sub.close()
        assert sub.got == [(topic, {"on": True}, True)]
    finally:
        clear = MqttSink(MqttForwarding(topic=topic, qos=1, retain=True))
        await clear.open()
        clear._client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        await clear.close()
        await sink.close()


async def test_broker_down_backlog_then_delivered_after_recovery(tmp_path):
    # Persistence keeps the subscriber's session across the broker's restart.
    (tmp_path / "persist").mkdir()
    broker = Mosquitto(tmp_path, extra=f"persistence true\n"
                                       f"persistence_location {tmp_path / 'persist'}/\n")
    broker.start()
    base = f"out-{uuid.uuid4().hex[:8]}"
    sub = Subscriber(broker.port, f"{base}/#")
    items = SimulatorSource(rate=1000, devices=20, seed=5, start=1.7e9,
                            kinds=[("device.property", "report")]).make(300)
    config = validate_config_dict({
        "rules": [{"rule_id": "props", "subject": {"resource": "device.property",
                                                    "event": "report"},
                   "select": "notify_data.header.device_id AS device, request_id AS id"}],
        "actions": [{"action_id": "republish", "rule_id": "props", "channel": "MQTT_FORWARDING",
                     "channel_detail": {"mqtt_forwarding": {
                         "url": f"mqtt://127.0.0.1:{broker.port}",
                         "topic": base + "/${device_id}", "timeout_s": 2}}}],
        "worker": {"state_dir": str(tmp_path / "state"), "batch_size": 50},
    })
    broker.stop()  # the broker goes down before anything is forwarded
    sub_got_before = len(sub.got)
    source = HeldSource([items[i:i + 50] for i in range(0, 300, 50)])
    worker = Worker.from_config(config, sources=[source], serve_metrics=False)
    run = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + 20
        while len(source.acked) < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # Every batch acked: the records wait in the durable backlog.
        assert len(source.acked) == 6
        t = worker.metrics.totals
        assert worker.metrics.totals.matched == 300 and t.inflight == 0
        assert os.path.getsize(tmp_path / "state" / "backlog.db") > 0
        broker.start()  # recovery (same port, the subscriber's session restored)
        await sub.wait_for(300, timeout=60)
    finally:
        worker.stop()
        await run
        sub.close()
        broker.stop()
    expected = sorted((f"{base}/{e['notify_data']['header']['device_id']}",
                       e["notify_data"]["header"]["device_id"], e["request_id"])
                      for e in map(orjson.loads, items))
    got = sorted({(topic, p["device"], p["id"]) for topic, p, _ in sub.got})
    assert sub_got_before == 0
    assert got == expected
