"""Devices -> Mosquitto -> MQTT source -> rules -> HTTP (real broker, real
clients): the notifications rules see, dead letters, at-least-once across
kill -9, and shared-subscription scale-out."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import orjson
import pytest

from engine.config import validate_config_dict
from engine.runtime.worker import Worker
from engine.sources.mqtt import MqttOptions, MqttSource, MqttStartError
from tests.devices.support import (
    BROKER,
    Device,
    Mosquitto,
    drop_session,
    port_open,
    user_properties,
)
from tests.runtime.e2e import EngineProcess, Receiver, free_port, wait_ready, write_config
from tests.runtime.support import by_label, scrape

pytestmark = pytest.mark.services

KINDS = [("device.property", "report"), ("device.message", "report"),
         ("device.status", "update"), ("device", "update"),
         ("device.command.status", "update")]


@pytest.fixture
def broker() -> str:
    if not port_open(BROKER):
        pytest.fail("Mosquitto is not running on 127.0.0.1:1883 (run `bash scripts/services.sh up`)")
    return "mqtt://127.0.0.1:1883"


@pytest.fixture
def private_broker(tmp_path):
    m = Mosquitto(tmp_path).start()
    try:
        yield m
    finally:
        m.stop()


def _config(url: str, client_id: str, rx_url: str, registry: dict, dead: str, **mqtt) -> dict:
    return {
        "sources": [{"mqtt": {"url": url, "client_id": client_id, **mqtt}}],
        "registry": registry,
        "dead_letter": {"file": dead},
        "rules": [{"rule_id": f"r{i}", "subject": {"resource": r, "event": e}}
                  for i, (r, e) in enumerate(KINDS)],
        "actions": [{"action_id": f"a{i}", "rule_id": f"r{i}", "channel": "HTTP_FORWARDING",
                     "channel_detail": {"http_forwarding": {"url": rx_url}}}
                    for i in range(len(KINDS))],
    }


async def test_each_uplink_topic_becomes_its_notification_with_registry_header(broker, tmp_path):
    u = uuid.uuid4().hex[:8]
    thermo, gw, child = f"thermo_{u}", f"gw_{u}", f"child_{u}"
    registry = {
        "products": [{"product_id": "thermo", "name": "Thermometer", "app_id": "app1"}],
        "devices": [
            {"device_id": thermo, "node_id": "n1", "product_id": "thermo",
             "tags": [{"tag_key": "site", "tag_value": "north"}]},
            {"device_id": gw, "product_id": "thermo"},
            {"device_id": child, "node_id": "c1", "product_id": "thermo", "gateway_id": gw}]}
    h_thermo = {"device_id": thermo, "product_id": "thermo", "app_id": "app1", "node_id": "n1",
                "gateway_id": thermo, "tags": [{"tag_key": "site", "tag_value": "north"}]}
    h_child = {"device_id": child, "product_id": "thermo", "app_id": "app1", "node_id": "c1",
               "gateway_id": gw}
    t = "20151212T121212Z"
    services = [{"service_id": "Battery", "properties": {"level": 80}, "event_time": t}]
    client_id = f"test-{u}"
    dead = tmp_path / "dead.jsonl"
    async with Receiver() as rx:
        config = validate_config_dict(_config(broker, client_id, rx.url, registry, str(dead)))
        worker = Worker.from_config(config, serve_metrics=False)
        run = asyncio.create_task(worker.run())
        try:
            while not worker.sources[0]._connected or not worker.sources[0]._connected.done():
                await asyncio.sleep(0.05)
            dev = Device()
            p = f"$oc/devices/{thermo}/"
            await asyncio.to_thread(dev.publish_all, [
                (p + "sys/properties/report", orjson.dumps({"services": services})),
                (f"$oc/devices/{gw}/sys/gateway/sub_devices/properties/report",
                 orjson.dumps({"devices": [{"device_id": child, "services": services}]})),
                (p + "sys/messages/up?request_id=m1", b"hello!"),
                (f"$oc/devices/{gw}/sys/events/up", orjson.dumps({"services": [
                    {"service_id": "$sub_device_manager", "event_type": "sub_device_update_status",
                     "event_time": t,
                     "paras": {"device_statuses": [{"device_id": child, "status": "OFFLINE"}]}}]})),
                (p + "sys/commands/response/request_id=c9", orjson.dumps({"result_code": 0})),
                # Rejected: bad JSON, and a device the registry does not know.
                (p + "sys/properties/report", b"{oops"),
                (f"$oc/devices/stranger_{u}/sys/messages/up", b"hi"),
            ])
            info = dev.publish(p + "user/raw", b'{"a": 1}',
                               properties=user_properties(k="v"))
            await asyncio.to_thread(info.wait_for_publish, 10)
            dev.close()
            await rx.wait_for(6, timeout=20)
        finally:
            worker.stop()
            await run
            drop_session(client_id)
    got = sorted(rx.bodies, key=lambda n: (n["resource"], n["notify_data"].get("body", {})
                                           .get("topic", "")))
    for n in got:
        assert len(n.pop("request_id")) >= 2
    times = {"event_time": t, "event_time_ms": "2015-12-12T12:12:12.000Z"}
    recv = [(n["event_time"], n["event_time_ms"]) for n in got
            if n["resource"] in ("device.message", "device.command.status")]
    assert all(len(a) == 16 and len(b) == 24 for a, b in recv)
    for n in got:  # receipt times checked above
        if n["resource"] in ("device.message", "device.command.status"):
            n.update(times)
    assert got[0]["notify_data"]["body"].pop("response_time") == recv[0][0]
    assert _canonical(got) == _canonical([
        {"resource": "device.command.status", "event": "update", **times,
         "notify_data": {"header": h_thermo, "body": {
             "command_id": "c9", "status": "SUCCESSFUL",
             "result": {"result_code": 0}}}},
        {"resource": "device.message", "event": "report", **times,
         "notify_data": {"header": h_thermo, "body": {"topic": p + "sys/messages/up",
                                                      "content": "hello!"}}},
        {"resource": "device.message", "event": "report", **times,
         "notify_data": {"header": h_thermo, "body": {
             "topic": p + "user/raw", "content": {"a": 1},
             "properties": {"user_properties": [{"prop_key": "k", "prop_value": "v"}]}}}},
        {"resource": "device.property", "event": "report", **times,
         "notify_data": {"header": h_child, "body": {"services": services}}},
        {"resource": "device.property", "event": "report", **times,
         "notify_data": {"header": h_thermo, "body": {"services": services}}},
        {"resource": "device.status", "event": "update", **times,
         "notify_data": {"header": h_child, "body": {
             "status": "OFFLINE", "last_online_time": t,
             "status_update_time": "2015-12-12T12:12:12.000Z"}}},
    ])
    totals = worker.metrics.totals  # the rejected messages count as malformed input
    assert (totals.malformed, totals.dead_lettered) == (2, 2)
    entries = [orjson.loads(x) for x in dead.read_bytes().splitlines()]
    assert [(e["source"], e["topic"], e["payload"]) for e in entries] == [
        ("mqtt", p + "sys/properties/report", "{oops"),
        ("mqtt", f"$oc/devices/stranger_{u}/sys/messages/up", "hi")]
    assert "payload is not JSON" in entries[0]["reason"]
    assert f"unknown device 'stranger_{u}'" in entries[1]["reason"]


def _canonical(notifications: list[dict]) -> list[bytes]:
    return sorted(orjson.dumps(n, option=orjson.OPT_SORT_KEYS) for n in notifications)


async def test_start_fails_clearly_when_no_broker_answers():
    src = MqttSource(MqttOptions(url=f"mqtt://127.0.0.1:{free_port()}"))
    with pytest.raises(MqttStartError, match="cannot connect to 127.0.0.1"):
        await src.start()


def _registry(devices: list[str]) -> dict:
    return {"products": [{"product_id": "p"}],
            "devices": [{"device_id": d, "product_id": "p"} for d in devices]}


def _messages(devices: list[str], start: int, n: int,
              prefix: str = "$oc/devices/") -> list[tuple[str, bytes]]:
    return [(f"{prefix}{devices[i % len(devices)]}/sys/messages/up",
             orjson.dumps({"content": {"seq": i}})) for i in range(start, start + n)]


def _seqs(rx: Receiver) -> list[int]:
    return [b["seq"] for b in rx.bodies]


def _seq_config(url: str, client_id: str, rx_url: str, devices: list[str], metrics: int,
                **mqtt) -> dict:
    return {
        "sources": [{"mqtt": {"url": url, "client_id": client_id, **mqtt}}],
        "registry": _registry(devices),
        "metrics": {"listen": f"127.0.0.1:{metrics}"},
        "rules": [{"rule_id": "seq", "subject": {"resource": "device.message", "event": "report"},
                   "select": "notify_data.body.content.seq AS seq"}],
        "actions": [{"action_id": "hook", "rule_id": "seq", "channel": "HTTP_FORWARDING",
                     "channel_detail": {"http_forwarding": {"url": rx_url}}}],
    }


async def _publish_slowly(dev: Device, messages, per_round: int = 50, pause: float = 0.02):
    for i in range(0, len(messages), per_round):
        await asyncio.to_thread(dev.publish_all, messages[i:i + per_round])
        await asyncio.sleep(pause)


async def test_kill9_while_devices_publish_loses_nothing(private_broker, tmp_path):
    url = f"mqtt://127.0.0.1:{private_broker.port}"
    devices = [f"d{i}" for i in range(10)]
    n = 3000
    messages = _messages(devices, 0, n)
    # The HTTP receiver is slow: batches are in flight (not acked) when the
    # worker is killed.
    async with Receiver(delay=0.002) as rx:
        metrics = free_port()
        config = write_config(tmp_path / "rules.yaml",
                              _seq_config(url, "worker-1", rx.url, devices, metrics))
        dev = Device(private_broker.port)
        with EngineProcess(config) as engine:
            await wait_ready(metrics, engine)
            publishing = asyncio.create_task(_publish_slowly(dev, messages))
            await rx.wait_for(300, timeout=30)
            engine.proc.send_signal(signal.SIGKILL)
            engine.proc.wait(10)
            seen_at_kill = len(rx.bodies)
            await publishing  # the rest is published while no worker runs
        assert seen_at_kill < n
        with EngineProcess(config) as engine:
            await wait_ready(metrics, engine)
            deadline = time.monotonic() + 60
            while set(_seqs(rx)) != set(range(n)) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            code, err = engine.stop()
        dev.close()
    seqs = _seqs(rx)
    assert set(seqs) == set(range(n)), f"missing: {sorted(set(range(n)) - set(seqs))[:20]}"
    duplicates = len(seqs) - n
    print(f"kill -9: {seen_at_kill} delivered before the kill, {duplicates} duplicate(s)")
    assert code == 0, err


async def test_shared_group_splits_the_stream_and_survives_a_worker(private_broker, tmp_path):
    url = f"mqtt://127.0.0.1:{private_broker.port}"
    devices = [f"d{i}" for i in range(10)]
    n = 2000
    # Mosquitto 2.0 does not deliver `$`-topics to shared subscriptions: the
    # devices of this test publish under a prefix without `$`.
    messages = _messages(devices, 0, n, "oc/devices/")
    async with Receiver(delay=0.001) as rx:
        ports = [free_port(), free_port()]
        configs = [write_config(tmp_path / f"w{i}.yaml", _seq_config(
            url, f"worker-{i}", rx.url, devices, ports[i], shared_group="engines",
            topic_prefix="oc/devices/"))
            for i in range(2)]
        for c in configs:  # one state directory each
            (c.parent / c.stem).mkdir()
        dev = Device(private_broker.port)
        with EngineProcess(configs[0], cwd=tmp_path / "w0") as a, \
                EngineProcess(configs[1], cwd=tmp_path / "w1") as b:
            await wait_ready(ports[0], a)
            await wait_ready(ports[1], b)
            await _publish_slowly(dev, messages[:n // 2])
            await rx.wait_for(n // 4, timeout=30)
            assert len(rx.bodies) >= n // 4
            # The broker splits the stream between the two workers.
            for port in ports:
                received = by_label(await scrape(f"http://127.0.0.1:{port}/metrics"),
                                    "engine_source_received_total", "source")
                assert sum(received.values()) > 0
            a.proc.send_signal(signal.SIGKILL)  # one worker dies ...
            a.proc.wait(10)
            before = len(rx.bodies)
            await _publish_slowly(dev, messages[n // 2:])
            # ... the other carries on with the new messages.
            deadline = time.monotonic() + 30
            while len(rx.bodies) < before + n // 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert len(rx.bodies) >= before + n // 4
            # The dead worker's session kept what it held; it gets it on restart.
            with EngineProcess(configs[0], cwd=tmp_path / "w0") as a2:
                await wait_ready(ports[0], a2)
                deadline = time.monotonic() + 60
                while set(_seqs(rx)) != set(range(n)) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                a2.stop()
            b.stop()
        dev.close()
    seqs = _seqs(rx)
    assert set(seqs) == set(range(n)), f"missing: {sorted(set(range(n)) - set(seqs))[:20]}"


async def test_broker_restart_mid_stream_loses_nothing(tmp_path):
    """The broker goes down while batches are in flight: the source
    reconnects to its persisted session, acks of the old connection are
    dropped, and the broker re-sends what was not acknowledged."""
    (tmp_path / "persist").mkdir()
    broker = Mosquitto(tmp_path, extra=f"persistence true\n"
                                       f"persistence_location {tmp_path / 'persist'}/\n")
    broker.start()
    url = f"mqtt://127.0.0.1:{broker.port}"
    devices = [f"d{i}" for i in range(5)]
    n = 1000
    messages = _messages(devices, 0, n)
    try:
        async with Receiver(delay=0.002) as rx:
            config = validate_config_dict(_seq_config(url, "restart-1", rx.url, devices,
                                                      free_port()))
            worker = Worker.from_config(config, serve_metrics=False)
            run = asyncio.create_task(worker.run())
            try:
                source = worker.sources[0]
                while source._connected is None or not source._connected.done():
                    await asyncio.sleep(0.05)
                dev = Device(broker.port)
                await _publish_slowly(dev, messages[:n // 2])
                dev.close()
                await rx.wait_for(100, timeout=30)
                broker.stop()  # with batches in flight
                await asyncio.sleep(1)
                broker.start()
                dev = Device(broker.port)
                await _publish_slowly(dev, messages[n // 2:])
                dev.close()
                deadline = time.monotonic() + 60
                while set(_seqs(rx)) != set(range(n)) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                assert source._generation >= 2  # it did reconnect
            finally:
                worker.stop()
                await run
    finally:
        broker.stop()
    seqs = _seqs(rx)
    assert set(seqs) == set(range(n)), f"missing: {sorted(set(range(n)) - set(seqs))[:20]}"


async def test_device_status_from_mosquitto_connection_log(tmp_path):
    """A broker that logs to $SYS/broker/log/N: a registered device's
    connect and disconnect (clean or dropped) become ONLINE and OFFLINE;
    other clients (unregistered, the engine's own) become nothing."""
    import paho.mqtt.client as mqtt

    broker = Mosquitto(tmp_path, extra="log_dest topic\nlog_type notice\n").start()
    u = uuid.uuid4().hex[:8]
    dev_a, dev_b = f"a_{u}", f"b_{u}"
    registry = {"products": [{"product_id": "p", "app_id": "app1"}],
                "devices": [{"device_id": dev_a, "product_id": "p"},
                            {"device_id": dev_b, "product_id": "p", "node_id": "nb"}]}

    def connect(client_id: str, username: str | None = None) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv311)
        if username:
            c.username_pw_set(username, "secret")
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        return c

    try:
        async with Receiver() as rx:
            config = validate_config_dict(_config(
                f"mqtt://127.0.0.1:{broker.port}", f"engine-{u}", rx.url, registry,
                str(tmp_path / "dead.jsonl"), device_status="mosquitto-log"))
            worker = Worker.from_config(config, serve_metrics=False)
            run = asyncio.create_task(worker.run())
            try:
                while not worker.sources[0]._connected or not worker.sources[0]._connected.done():
                    await asyncio.sleep(0.05)
                # IoTDA style: user name = device id, client id {device_id}_0_0_{YYYYMMDDHH}
                a = await asyncio.to_thread(connect, f"{dev_a}_0_0_2026120404", dev_a)
                b = await asyncio.to_thread(connect, dev_b)   # client id = device id
                stranger = await asyncio.to_thread(connect, f"stranger_{u}")
                await rx.wait_for(2, timeout=20)
                await asyncio.to_thread(a.disconnect)          # clean DISCONNECT
                b._sock.close()                                 # dropped connection
                await asyncio.to_thread(stranger.disconnect)
                await rx.wait_for(4, timeout=20)
                for c in (a, b, stranger):
                    c.loop_stop()
                await asyncio.sleep(0.5)   # nothing more arrives
            finally:
                worker.stop()
                await run
    finally:
        broker.stop()
    got = [(n["notify_data"]["header"]["device_id"], n["notify_data"]["body"]["status"])
           for n in rx.bodies]
    assert sorted(got[:2]) == [(dev_a, "ONLINE"), (dev_b, "ONLINE")]
    assert sorted(got[2:]) == [(dev_a, "OFFLINE"), (dev_b, "OFFLINE")]
    for n in rx.bodies:
        assert (n["resource"], n["event"]) == ("device.status", "update")
        assert n["notify_data"]["header"]["app_id"] == "app1"   # from the registry
        body = n["notify_data"]["body"]
        assert len(body["last_online_time"]) == 16 and len(body["status_update_time"]) == 24
