"""MQTT_FORWARDING: publish rule outputs to an MQTT broker (republish).

Not an IoTDA channel (IoTDA has no MQTT forwarding; Alibaba Cloud calls it
REPUBLISH, EMQX "republish"): an extension of the seed's channel list. Each
record is published as JSON on a topic made from a template, e.g.
`devices/${device_id}/telemetry`; `${name}` takes `device_id`, `rule_id` or
`action_id` of the record, else the top-level field `name` of the rule's
output (a string or number). A record that lacks a field of its template is
refused (dead-lettered, naming the field).

QoS 1: a record counts as forwarded only once the broker acknowledged it
(PUBACK); QoS 0: once handed to the connection. While the broker cannot be
reached, writes fail as retryable (the runtime's backlog keeps the records
and sends them after recovery); a publish not acknowledged within
`timeout_s` is retried (at-least-once: the broker may see it twice).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import ssl
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

import orjson
from pydantic import Field, SecretStr, field_validator

from engine.destinations.base import Failure, Record, Sink, SinkError, Unavailable, WriteResult
from engine.destinations.common import _Model
from engine.destinations.registry import register
from engine.schema import MqttUrl

if TYPE_CHECKING:  # paho (and the dnspython it loads) is imported when a sink opens
    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class MqttForwarding(_Model):
    """channel_detail.mqtt_forwarding (an extension: no IoTDA counterpart)."""

    topic: str = Field(min_length=1, max_length=1024)
    """Topic template: `${device_id}`, `${rule_id}`, `${action_id}` or a
    top-level field of the rule's output."""
    url: MqttUrl = SecretStr("mqtt://127.0.0.1:1883")
    """mqtt://[user:password@]host[:port] or mqtts://…; a secret (password)."""
    qos: Literal[0, 1] = 1
    retain: bool = False
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    """Default: a random one per connection."""
    username: str | None = None
    password: SecretStr | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    timeout_s: float = Field(default=15.0, gt=0, le=600)
    """Connect timeout and longest wait for a PUBACK."""
    message: Literal["output", "content"] = "output"
    """What is published: `output`, the rule's output as JSON; `content`, a
    device message as it arrived, from the output's `content` (with
    `binary: true`, base64 of the bytes; else the JSON value, published
    compact) — what a rule selecting `notify_data.body.content AS content,
    notify_data.body.binary AS binary` on MQTT-ingested messages gives, and
    how Alibaba topic routes forward."""

    @field_validator("topic")
    @classmethod
    def _template(cls, topic: str) -> str:
        if "+" in topic or "#" in topic:
            raise ValueError("a topic to publish on cannot hold the wildcards + or #")
        if "${" in _VARIABLE.sub("", topic):
            raise ValueError("'${' must start a ${name} variable (letters, digits, _)")
        return topic


def topic_maker(template: str):
    """record -> topic, or a str reason when a variable has no value. The
    template is split once; each record only fills the gaps."""
    parts = _VARIABLE.split(template)
    if len(parts) == 1:
        return lambda _rec: template, None
    literals, names = parts[0::2], parts[1::2]

    def make(rec: Record) -> str:
        out = [literals[0]]
        payload = rec.payload
        for name, literal in zip(names, literals[1:], strict=True):
            if name == "device_id" and rec.key is not None:
                value: Any = rec.key
            elif name in ("rule_id", "action_id"):
                value = getattr(rec, name)
            else:
                value = payload.get(name)
            if type(value) is not str and type(value) is not int and type(value) is not float:
                raise KeyError(name)
            value = str(value)
            if not value or "/" in value or "+" in value or "#" in value:
                raise ValueError(name)
            out.append(value)
            out.append(literal)
        return "".join(out)

    return make, names


@register
class MqttSink(Sink):
    channel = "MQTT_FORWARDING"
    detail_key = "mqtt_forwarding"
    Config = MqttForwarding
    config: MqttForwarding

    def __init__(self, config: MqttForwarding) -> None:
        super().__init__(config)
        self._topic, _ = topic_maker(config.topic)
        parts = urlsplit(config.url.get_secret_value())
        self.host = parts.hostname or ""
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.tls = parts.scheme == "mqtts"
        self._user = unquote(parts.username) if parts.username else config.username
        self._password = unquote(parts.password) if parts.password else (
            config.password.get_secret_value() if config.password else None)
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._refused: str | None = None
        self._waiting: dict[int, asyncio.Future[None]] = {}

    async def open(self) -> None:
        """Connect. A broker that is down is not an error here (writes
        report retryable failures; paho reconnects by itself); a refused
        login or unusable TLS settings raise SinkError."""
        import paho.mqtt.client as mqtt

        self._loop = asyncio.get_running_loop()
        c = self.config
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=c.client_id or f"engine-sink-{uuid.uuid4().hex[:12]}",
                             protocol=mqtt.MQTTv5)
        if self._user is not None:
            client.username_pw_set(self._user, self._password)
        if self.tls:
            try:
                client.tls_set(ca_certs=c.ca_file, certfile=c.cert_file, keyfile=c.key_file,
                               cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise SinkError(f"MQTT sink: TLS settings unusable: {e}") from None
        client.max_inflight_messages_set(65535)  # the broker's receive maximum still applies
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(0.2, 5)  # type: ignore[arg-type] # paho takes float s
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect_async(self.host, self.port, 30)
        client.loop_start()
        self._client = client
        try:
            await asyncio.wait_for(self._connected.wait(), c.timeout_s)
        except TimeoutError:
            log.warning("MQTT sink %s:%d: not connected yet; will retry on write",
                        self.host, self.port)
        if self._refused is not None:
            await self.close()
            raise SinkError(self._refused)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(Unavailable("MQTT sink closed"))
        self._waiting.clear()

    # -- paho callbacks (network thread) -----------------------------------------------

    def _soon(self, callback, *args) -> None:
        """Run `callback(*args)` on the event loop (from paho's thread)."""
        loop = self._loop
        if loop is not None:  # set by open(), before paho's thread starts
            loop.call_soon_threadsafe(callback, *args)

    def _on_connect(self, _client, _userdata, _flags, reason, _props) -> None:
        if reason.is_failure:
            if reason.value in (0x86, 0x87, 0x8C):  # bad user/password, not authorized, bad auth
                self._refused = f"MQTT broker refused the login: {reason}"
            self._soon(self._connected.set)
            return
        self._soon(self._connected.set)

    def _on_disconnect(self, _client, _userdata, _flags, reason, _props) -> None:
        if self._client is not None:
            log.warning("MQTT sink: disconnected from %s:%d (%s)", self.host, self.port, reason)
        self._soon(self._connected.clear)

    def _on_publish(self, _client, _userdata, mid, reason, _props) -> None:
        self._soon(self._published, mid, reason)

    def _published(self, mid: int, reason) -> None:
        fut = self._waiting.pop(mid, None)
        if fut is not None and not fut.done():
            if reason.is_failure:  # e.g. 0x87 not authorized for the topic
                fut.set_exception(SinkError(f"MQTT broker refused the message: {reason}"))
            else:
                fut.set_result(None)

    # -- writes --------------------------------------------------------------------------

    async def write(self, records: Sequence[Record]) -> WriteResult:
        client = self._client
        if client is None or not client.is_connected():
            return WriteResult.all_failed(len(records), f"MQTT broker {self.host}:{self.port} "
                                          "not connected", True)
        import paho.mqtt.client as mqtt

        c = self.config
        failures: dict[int, Failure] = {}
        waits: list[tuple[int, asyncio.Future[None]]] = []
        loop = asyncio.get_running_loop()
        for i, rec in enumerate(records):
            try:
                topic = self._topic(rec)
            except (KeyError, ValueError) as e:
                failures[i] = Failure(_template_reason(e, c.topic), False)
                continue
            # No await between publish() and registering its mid: the PUBACK
            # callback is scheduled on this loop, so it runs after this.
            data: bytes | None = rec.json_bytes() if c.message == "output" else _content(rec)
            if data is None:
                failures[i] = Failure("message: content needs the record's 'content' (with "
                                      "binary: true, base64 text)", False)
                continue
            info = client.publish(topic, data, qos=c.qos, retain=c.retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                failures[i] = Failure(f"MQTT publish failed: {mqtt.error_string(info.rc)}", True)
                continue
            fut = loop.create_future()
            self._waiting[info.mid] = fut
            waits.append((i, fut))
        if waits:
            done, pending = await asyncio.wait([f for _, f in waits], timeout=c.timeout_s)
            for i, fut in waits:
                if fut in pending:
                    fut.cancel()
                    failures[i] = Failure(f"MQTT broker did not acknowledge within "
                                          f"{c.timeout_s:g}s", True)
                elif (err := fut.exception()) is not None:
                    failures[i] = Failure(str(err), not isinstance(err, SinkError))
            for mid in [m for m, f in self._waiting.items() if f.cancelled()]:
                del self._waiting[mid]
        return WriteResult(failures)


def _content(rec: Record) -> bytes | None:
    """The device message a record carries (`message: content`), or None."""
    payload = rec.payload
    content = payload.get("content", _NONE) if type(payload) is dict else _NONE
    if content is _NONE:
        return None
    if payload.get("binary") is True:
        try:
            return base64.b64decode(content, validate=True) if type(content) is str else None
        except (binascii.Error, ValueError):
            return None
    return orjson.dumps(content)


_NONE = object()


def _template_reason(e: Exception, template: str) -> str:
    name = e.args[0] if e.args else "?"
    if isinstance(e, KeyError):
        return (f"topic template {template!r}: the record has no string or number "
                f"'{name}'")
    return f"topic template {template!r}: '{name}' is empty or holds /, + or #"
