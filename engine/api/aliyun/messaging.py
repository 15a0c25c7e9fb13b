"""Alibaba's `Pub` (seed §2.10.1): publish a message to a device topic,
through the MQTT broker the worker's devices use.

The broker is the first `mqtt` source of the rule files (the one REPUBLISH
actions publish to, engine.api.effective.republish_broker); without one,
`Pub` answers `iot.messagebroker.PublishMessageFailed` saying so. Each call
opens one connection (paho-mqtt, as the MQTT source and sink), publishes
with the asked QoS (QoS 1 waits for the broker's PUBACK) and closes: `Pub`
is a management call, not a data path.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from engine.api.aliyun.errors import AliyunError

TIMEOUT = 10.0
_ids = itertools.count(int(time.time() * 1000) << 8)


def _publish(url: str, topic: str, payload: bytes, qos: int) -> None:
    parts = urlsplit(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"iot-engine-pub-{uuid.uuid4().hex[:12]}")
    if parts.username:
        client.username_pw_set(unquote(parts.username),
                               unquote(parts.password) if parts.password else None)
    if parts.scheme == "mqtts":
        client.tls_set()
    client.connect(parts.hostname or "127.0.0.1",
                   parts.port or (8883 if parts.scheme == "mqtts" else 1883),
                   keepalive=30)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=qos)
        info.wait_for_publish(TIMEOUT)
        if not info.is_published():
            raise TimeoutError(f"no acknowledgement within {TIMEOUT:g}s")
    finally:
        client.disconnect()
        client.loop_stop()


async def pub(broker: str | None, project: str, params: Mapping[str, str]) -> dict[str, Any]:
    key = params.get("ProductKey", "")
    if not key:
        raise AliyunError("iot.prod.InvalidFormattedProductkey", "ProductKey cannot be empty.")
    topic = params.get("TopicFullName", "")
    if not topic:
        raise AliyunError("iot.messagebroker.NullTopicName", "TopicFullName cannot be empty.")
    if "+" in topic or "#" in topic or not topic.startswith(f"/{key}/"):
        raise AliyunError("iot.messagebroker.InvalidFormattedTopicName",
                          f"TopicFullName must be a topic of the product: /{key}/${{deviceName}}"
                          "/… (no wildcards; not a /sys/ topic).")
    content = params.get("MessageContent", "")
    if not content:
        raise AliyunError("iot.messagebroker.NullMessageContent",
                          "Message content cannot be empty.")
    try:
        payload = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise AliyunError("iot.messagebroker.MessageContentIsNotBase64Encode",
                          "MessageContent must be Base64-encoded.") from None
    qos = params.get("Qos") or "0"
    if qos not in ("0", "1"):
        raise AliyunError("iot.ruleng.IncorrectType", "Qos must be 0 or 1.")
    if broker is None:
        raise AliyunError("iot.messagebroker.PublishMessageFailed",
                          "No MQTT broker: the rule files have no mqtt source to publish through.")
    try:
        await asyncio.to_thread(_publish, broker, topic, payload, int(qos))
    except Exception as e:
        raise AliyunError("iot.messagebroker.PublishMessageFailed",
                          f"Failed to publish message: {type(e).__name__}: {e}") from None
    return {"MessageId": str(next(_ids))}
