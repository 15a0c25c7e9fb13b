"""Helpers for the device tests: a paho client acting as devices, a private
Mosquitto, session clean-up on the shared broker."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

BROKER = ("127.0.0.1", 1883)


def port_open(addr: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(addr, timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Device:
    """A paho MQTT 5 client publishing as devices (QoS 1, waits for PUBACKs)."""

    def __init__(self, port: int = 1883, client_id: str | None = None) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"dev-{uuid.uuid4().hex[:10]}",
                                  protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1,
                properties: Properties | None = None):
        return self.client.publish(topic, payload, qos=qos, properties=properties)

    def publish_all(self, messages, qos: int = 1, timeout: float = 30.0) -> None:
        infos = [self.publish(t, p, qos) for t, p in messages]
        for info in infos:
            info.wait_for_publish(timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def user_properties(**props: str) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = list(props.items())
    return p


def drop_session(client_id: str, port: int = 1883) -> None:
    """Discard a persistent session left on the broker by a test."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    try:
        c.connect("127.0.0.1", port, clean_start=True, properties=props)
        c.loop_start()
        time.sleep(0.2)
        c.disconnect()
        c.loop_stop()
    except OSError:
        pass


class Mosquitto:
    """A private broker on an ephemeral loopback port (stopped by its PID)."""

    def __init__(self, workdir: Path, port: int | None = None, extra: str = "") -> None:
        self.port = port or free_port()
        self.extra = extra  # more mosquitto.conf lines
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        # `user root`: when started as root, do not switch to the mosquitto
        # user (which could not write the persistence files here).
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser root\n"
                        "max_queued_messages 100000\nmax_inflight_messages 0\n" + self.extra)
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not port_open(("127.0.0.1", self.port)):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("mosquitto did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
