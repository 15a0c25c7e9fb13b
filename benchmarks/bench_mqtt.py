"""MQTT -> engine (selective rule, counting action), side by side with a
plain paho-mqtt subscriber that only counts the messages.

A private Mosquitto (ephemeral port, `max_queued_messages` raised) is
started for the run. Each round, for each consumer in turn:

1. a persistent MQTT 5 session subscribes (QoS 1) to the device uplink
   topics and disconnects;
2. N simulated device messages (`engine simulate`'s stream: property
   reports, one message report in ten, 100 devices) are published at QoS 1
   and queued by the broker for that session;
3. the consumer resumes the session and takes all N; messages/s counts from
   the first message to the N-th.

Consumers: the engine's MqttSource (manual acks after the pipeline acked
each batch, topic -> notification conversion, registry headers) feeding a
`Worker` with the selective rule `GET_SERVICE_PROPERTY('Battery', 'level') < 10`
(~10 % of the property reports) and a counting action; and a paho client
(same receive maximum, automatic acks) whose on_message only counts.

    .venv/bin/python -m pytest benchmarks/bench_mqtt.py -s -p no:cacheprovider
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel

from engine import RuleSpec, compile_ruleset
from engine.app import device_simulator as sim
from engine.destinations.base import Record, Sink, WriteResult
from engine.runtime.actions import ActionRunner
from engine.runtime.deadletter import DeadLetters
from engine.runtime.metrics import Metrics
from engine.runtime.worker import Worker
from engine.sources.device_registry import Registry, RegistryConfig
from engine.sources.mqtt import UPLINK_TOPICS, MqttOptions, MqttSource
from tests.devices.support import Mosquitto

N = int(os.environ.get("BENCH_N", "30000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
RECEIVE_MAXIMUM = 1000
RULE = RuleSpec("r", "notify_data.header.device_id AS device_id, "
                     "GET_SERVICE_PROPERTY('Battery', 'level') AS level",
                "GET_SERVICE_PROPERTY('Battery', 'level') < 10",
                resource="device.property", event="report")


class _NoConfig(BaseModel):
    pass


class CountingSink(Sink):
    channel = "COUNT"
    detail_key = "count"
    Config = _NoConfig

    def __init__(self) -> None:
        super().__init__(_NoConfig())
        self.count = 0

    async def write(self, records: Sequence[Record]) -> WriteResult:
        self.count += len(records)
        return WriteResult()


class TimedMqttSource(MqttSource):
    """Notes when the first message arrives; stops after the N-th."""

    def __init__(self, total: int, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.total = total
        self.first: float | None = None

    async def batches(self):
        async for batch in super().batches():
            if self.first is None:
                self.first = time.perf_counter()
            if self.messages >= self.total:
                self.stop()
            yield batch


def _session(port: int, client_id: str) -> None:
    """Create the persistent session (subscribed at QoS 1) and leave."""
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.on_subscribe = lambda *_a: done.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, clean_start=True, properties=props)
    c.loop_start()
    c.subscribe([(t, 1) for t in UPLINK_TOPICS])
    assert done.wait(10)
    c.disconnect()
    c.loop_stop()


def _publish(port: int, stream, n: int) -> None:
    client = sim.connect(f"mqtt://127.0.0.1:{port}")
    try:
        infos = [client.publish(t, p, qos=1) for t, p in itertools.islice(stream, n)]
        for info in infos:
            info.wait_for_publish(60)
    finally:
        client.disconnect()
        client.loop_stop()


async def _engine(port: int, client_id: str, registry: Registry) -> dict:
    metrics = Metrics()
    sink = CountingSink()
    source = TimedMqttSource(N, MqttOptions(
        url=f"mqtt://127.0.0.1:{port}", client_id=client_id, receive_maximum=RECEIVE_MAXIMUM,
        max_batch=1000), registry=registry)
    runner = ActionRunner("count", "r", sink, metrics=metrics, dead_letters=DeadLetters(),
                          batch_size=2000, linger=0.005)
    worker = Worker(compile_ruleset([RULE]), [runner], [source], metrics=metrics,
                    rule_keys=["r"])
    await worker.run(freeze_gc=True)  # as `engine run` does
    end = time.perf_counter()
    assert source.messages >= N and source.dead_lettered == 0
    return {"msgs_per_s": round(N / (end - source.first)), "matched": sink.count}


def _plain(port: int, client_id: str) -> dict:
    count = 0
    first = end = 0.0
    done = threading.Event()

    def on_message(_c, _u, _m) -> None:
        nonlocal count, first, end
        count += 1
        if count == 1:
            first = time.perf_counter()
        if count == N:
            end = time.perf_counter()
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    assert done.wait(300)
    c.disconnect()
    c.loop_stop()
    return {"msgs_per_s": round(N / (end - first))}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    m = Mosquitto(Path(tmp_path_factory.mktemp("mosquitto"))).start()
    yield m
    m.stop()


@pytest.mark.timeout(1800)
def test_mqtt_ingest_vs_plain_subscriber(broker):
    devices = 100
    registry = Registry(RegistryConfig.model_validate(sim.registry(devices)))
    stream = sim.payloads(devices, seed=1)
    results: dict[str, list[dict]] = {"engine": [], "plain": []}
    for _ in range(ROUNDS):
        for kind in ("engine", "plain"):
            client_id = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
            _session(broker.port, client_id)
            _publish(broker.port, stream, N)
            if kind == "engine":
                results[kind].append(asyncio.run(_engine(broker.port, client_id, registry)))
            else:
                results[kind].append(_plain(broker.port, client_id))
    best = {k: max(r["msgs_per_s"] for r in v) for k, v in results.items()}
    print(f"\nMQTT ingest, {N} messages per round, {ROUNDS} rounds (messages/s):")
    for kind, rounds in results.items():
        print(f"  {kind:7s} {[r['msgs_per_s'] for r in rounds]} best {best[kind]}")
    print(f"  engine matched {results['engine'][0]['matched']} per round; "
          f"engine / plain (best) = {best['engine'] / best['plain']:.2f}")
