"""`engine simulate --mqtt URL`: simulated devices publishing on IoTDA's
device topics (seed §2), for demos and benchmarks of the device path
(devices -> broker -> MQTT source -> rules -> sinks).

Each simulated device `sim-{product}-{n}` reports properties on
`$oc/devices/{id}/sys/properties/report` (services Battery and Temperature,
with the device's event_time) and, one message in `message_every`, a message
on `$oc/devices/{id}/sys/messages/up`. The devices share one MQTT connection
(a load generator, not a connection-count test). `registry()` is the
`registry:` section that makes the engine know them.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import paho.mqtt.client as mqtt


def device_ids(devices: int, product: str = "simthermo") -> list[str]:
    return [f"sim-{product}-{i}" for i in range(devices)]


def registry(devices: int, product: str = "simthermo", app_id: str = "simapp") -> dict[str, Any]:
    """The `registry:` section for the simulated devices."""
    return {
        "products": [{"product_id": product, "name": "Simulated thermometer", "app_id": app_id}],
        "devices": [{"device_id": d, "node_id": f"node-{i}", "product_id": product,
                     "tags": [{"tag_key": "zone", "tag_value": f"z{i % 4}"}]}
                    for i, d in enumerate(device_ids(devices, product))],
    }


def payloads(devices: int, seed: int = 0, product: str = "simthermo",
             message_every: int = 10, prefix: str = "$oc/devices/"):
    """An endless stream of (topic, payload) device messages."""
    rng = random.Random(seed)
    ids = device_ids(devices, product)
    n = 0
    while True:
        d = ids[n % devices]
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        if message_every and n % message_every == message_every - 1:
            yield (f"{prefix}{d}/sys/messages/up",
                   orjson.dumps({"content": {"seq": n, "alarm": rng.random() < 0.1}}))
        else:
            yield (f"{prefix}{d}/sys/properties/report", orjson.dumps({"services": [
                {"service_id": "Battery", "properties": {"level": rng.randint(0, 100)},
                 "event_time": stamp},
                {"service_id": "Temperature",
                 "properties": {"value": round(rng.uniform(-10, 45), 1), "seq": n},
                 "event_time": stamp}]}))
        n += 1


def connect(url: str, client_id: str | None = None) -> mqtt.Client:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"--mqtt must be an mqtt:// or mqtts:// URL, not {url!r}")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "",
                         protocol=mqtt.MQTTv5)
    if parts.username:
        client.username_pw_set(unquote(parts.username),
                               unquote(parts.password) if parts.password else None)
    if parts.scheme == "mqtts":
        client.tls_set()
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect(parts.hostname, parts.port or (8883 if parts.scheme == "mqtts" else 1883))
    client.loop_start()
    if not connected.wait(15):
        client.loop_stop()
        raise ConnectionError(f"no CONNACK from {parts.hostname}")
    return client


def run(url: str, *, devices: int, rate: float, duration: float | None = None,
        count: int | None = None, qos: int = 1, seed: int = 0,
        product: str = "simthermo") -> tuple[int, float]:
    """Publish at `rate` messages/s until `duration` or `count`; waits for
    the broker's acks (QoS 1). Returns (messages, seconds)."""
    client = connect(url)
    stream = payloads(devices, seed, product)
    sent = 0
    infos = []
    start = time.monotonic()
    try:
        while (count is None or sent < count) and (
                duration is None or time.monotonic() - start < duration):
            due = int((time.monotonic() - start) * rate) + 1 - sent
            if count is not None:
                due = min(due, count - sent)
            if due <= 0:
                time.sleep(min(0.01, 1 / rate))
                continue
            for _ in range(due):
                topic, payload = next(stream)
                infos.append(client.publish(topic, payload, qos=qos))
            sent += due
            if len(infos) > 5000:  # bound memory: wait for the oldest acks
                for info in infos[:-1000]:
                    info.wait_for_publish(30)
                infos = infos[-1000:]
        for info in infos:
            info.wait_for_publish(30)
        return sent, time.monotonic() - start
    finally:
        client.disconnect()
        client.loop_stop()
