"""MQTT source: devices publishing on IoTDA's device topics to a broker.

The source subscribes (QoS 1 by default) to the device uplink topics, turns
each message into notifications (`engine.sources.uplink.Uplink`, header from
the registry, `registry:`) and hands them to the pipeline in batches. The
worker lends it the registry and its dead-letter store at build time
(`SourceContext`).

At-least-once: messages are acknowledged by hand (paho-mqtt's `manual_ack`):
the PUBACKs of a batch's messages are sent only when the pipeline acks the
batch, i.e. once every match is delivered or set aside; what a message could
not become (bad payload, unknown device) is dead-lettered before that and
counted as the source's malformed input. The
session is persistent (MQTT 5 session expiry, or clean_session false on
3.1.1), so the broker keeps what is published while the worker is down and
re-sends what was in flight when it died. Acks of messages received on an
earlier connection are not sent (a packet id belongs to one connection);
the broker re-sends those messages on the new one (duplicates, not loss).

Flow: the broker sends at most `receive_maximum` unacknowledged messages
(MQTT 5 Receive Maximum; Mosquitto's `max_inflight_messages`, default 20,
for 3.1.1 clients), which bounds what waits here and is the backpressure.

Scale-out: workers with the same `shared_group` subscribe to
`$share/GROUP/TOPIC` and the broker splits the messages between them. Each
needs its own `client_id` (the session is kept per client id).

paho-mqtt runs its network loop on a thread of its own; messages cross to the
event loop through a deque with a wake-up only when the consumer waits.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator

from engine.schema import MqttUrl
from engine.sources.alink import ALIBABA_TOPICS, BothUplinks
from engine.sources.base import Batch, DeadLetterWriter, Source, SourceContext, SourceOptions
from engine.sources.device_registry import Registry
from engine.sources.registry import register
from engine.sources.uplink import MOSQUITTO_LOG_TOPIC, ConnectionStatus, Uplink

if TYPE_CHECKING:  # paho (and the dnspython it loads) is imported when a source starts
    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

# The device-to-platform topics of seed §2.3 (`+` is the device id).
# `messages/#`: a message report may name its request id in the topic
# (`messages/up?request_id=…`, one topic level that `messages/up` does not match).
UPLINK_TOPICS = [
    "$oc/devices/+/sys/properties/report",
    "$oc/devices/+/sys/gateway/sub_devices/properties/report",
    "$oc/devices/+/sys/messages/#",
    "$oc/devices/+/sys/events/up",
    "$oc/devices/+/sys/commands/response/#",
    "$oc/devices/+/user/#",
]

# How long start() waits for the broker's CONNACK.
CONNECT_TIMEOUT = 15.0


class MqttOptions(SourceOptions):
    """`sources: [{mqtt: {...}}]`: subscribe to device topics on an MQTT broker."""

    url: MqttUrl = SecretStr("mqtt://127.0.0.1:1883")
    """mqtt://[user:password@]host[:port] or mqtts://… (TLS). A secret (it
    may hold the password)."""
    topics: list[str] | None = Field(default=None, min_length=1)
    """Topic filters (default: the uplink topics of seed §2.3 under `topic_prefix`)."""
    qos: Literal[0, 1] = 1
    """1: at-least-once (manual acks). 0: at-most-once, no acks."""
    client_id: str = Field(default_factory=lambda: f"iot-engine-{socket.gethostname()}",
                           min_length=1, max_length=128)
    """The broker keeps the session per client id: stable across restarts,
    distinct per worker."""
    username: str | None = None
    password: SecretStr | None = None
    shared_group: str | None = Field(default=None, min_length=1, pattern=r"^[^/+#]+$")
    """Subscribe as `$share/GROUP/TOPIC`: the workers of a group split the
    messages. (Mosquitto 2.0 delivers no `$`-prefixed topic, such as `$oc/…`,
    to shared subscriptions: there, use `topic_prefix` with device topics
    remapped by the broker, or a broker that does, e.g. EMQX.)"""
    device_status: Literal["mosquitto-log"] | None = None
    """Where device ONLINE/OFFLINE comes from. `mosquitto-log`: Mosquitto's
    connection log on `$SYS/broker/log/N` (the broker needs `log_dest topic`
    and `log_type notice`); each connect or disconnect of a registered
    device becomes a `device.status`/`update` notification. None: only
    gateways' sub-device status events."""
    alibaba_topics: bool = False
    """Also take Alibaba IoT device topics (`/sys/{ProductKey}/{DeviceName}/thing/…`,
    `/{ProductKey}/{DeviceName}/user/…`, engine.sources.alink), and subscribe
    to them when `topics` is not given: what Alibaba-dialect rules read."""
    topic_prefix: str = Field(default="$oc/devices/", min_length=1, pattern=r"/$")
    """What precedes `{device_id}/sys/…` in the device topics (IoTDA: `$oc/devices/`).
    The default `topics` follow it."""
    protocol: Literal["5", "3.1.1"] = "5"
    session_expiry: int = Field(default=86400, ge=0, le=4294967295)
    """Seconds the broker keeps the session (and queues messages) while the
    worker is away (MQTT 5). 0: a clean session (messages sent while the
    worker is down are lost: at-most-once across restarts)."""
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
    """Unacknowledged messages the broker may send ahead (MQTT 5)."""
    keepalive: int = Field(default=30, ge=5, le=3600)
    ca_file: str | None = None
    """mqtts: CA certificates to verify the broker with (default: the system's)."""
    cert_file: str | None = None
    """mqtts: client certificate (mutual TLS), with key_file."""
    key_file: str | None = None
    tls_insecure: bool = False
    """mqtts: skip host name verification (test brokers only)."""
    max_batch: int = Field(default=500, ge=1, le=100_000)

    @field_validator("topics")
    @classmethod
    def _topic_filters(cls, topics: list[str] | None) -> list[str] | None:
        for t in topics or ():
            levels = t.split("/")
            if not t or any(("#" in lv and (lv != "#" or i != len(levels) - 1))
                            or ("+" in lv and lv != "+") for i, lv in enumerate(levels)):
                raise ValueError(f"{t!r} is not a valid MQTT topic filter")
        return topics


class MqttStartError(RuntimeError):
    """The broker cannot be used: unreachable, login refused, bad TLS settings."""


@register
class MqttSource(Source):
    kind = "mqtt"
    Options = MqttOptions

    def __init__(self, options: MqttOptions, *, registry: Registry | None = None,
                 uplink: Uplink | None = None, dead_letters: DeadLetterWriter | None = None,
                 metrics: Any = None, name: str | None = None, linger: float = 0.005) -> None:
        """`registry`: the headers of the devices (default: none registered).
        `dead_letters`: where rejected messages go, stored before their ack
        (None: counted and logged only). `metrics` (a Metrics): counts them
        as this source's malformed input."""
        super().__init__(name)
        self.options = options
        self.uplink: Any = uplink or Uplink(registry, prefix=options.topic_prefix)
        if options.alibaba_topics:
            self.uplink = BothUplinks(self.uplink)
        self.linger = linger
        self.dead_letters = dead_letters
        self.metrics = metrics
        parts = urlsplit(options.url.get_secret_value())
        # The options' validator made sure there is a host.
        self.host: str = parts.hostname or ""
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.tls = parts.scheme == "mqtts"
        self._user = unquote(parts.username) if parts.username else options.username
        password = unquote(parts.password) if parts.password else (
            options.password.get_secret_value() if options.password else None)
        self._password = password
        topics = options.topics or [options.topic_prefix + t[len("$oc/devices/"):]
                                    for t in UPLINK_TOPICS]
        if options.alibaba_topics and not options.topics:
            topics = [*topics, *ALIBABA_TOPICS]
        self.topics = [f"$share/{options.shared_group}/{t}" if options.shared_group else t
                       for t in topics]
        self.status = None
        if options.device_status == "mosquitto-log":
            # Not shared: every worker would get every line (supervisor refuses it).
            self.topics.append(MOSQUITTO_LOG_TOPIC)
            self.status = ConnectionStatus(self.uplink.registry)
        if options.shared_group and (dollar := [t for t in topics if t.startswith("$")]):
            # Subscribing works, then nothing arrives: say so at start.
            log.warning("MQTT source: shared_group %r with $-prefixed topics (%s): Mosquitto "
                        "2.0 delivers none of these to a shared subscription; use topic_prefix "
                        "(docs/devices.md) or a broker that shares them (EMQX, HiveMQ)",
                        options.shared_group, ", ".join(dollar[:2]) + (", …" if dollar[2:] else ""))
        # Counters (the pipeline counts what it receives; these count what
        # never became a notification).
        self.messages = 0
        self.dead_lettered = 0
        self.ignored = 0
        self._pending: collections.deque[tuple[mqtt.MQTTMessage, int, float]] = \
            collections.deque()
        self._waiting = False
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._generation = 0  # connections so far: a packet id is only valid on its own
        self._connected: asyncio.Future[None] | None = None
        self._stopped = False
        self._last_warning = 0.0

    @classmethod
    def from_options(cls, options: MqttOptions, *, batch_size: int, metrics: Any = None,
                     context: SourceContext | None = None) -> MqttSource:
        # batch_size: the source has its own (max_batch)
        context = context or SourceContext()
        return cls(options, registry=context.registry, dead_letters=context.dead_letters,
                   metrics=metrics)

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        o = self.options
        self._loop = loop = asyncio.get_running_loop()
        v5 = o.protocol == "5"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=o.client_id,
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                             clean_session=None if v5 else o.session_expiry == 0,
                             manual_ack=o.qos > 0)
        if self._user is not None:
            client.username_pw_set(self._user, self._password)
        if self.tls:
            try:
                client.tls_set(ca_certs=o.ca_file, certfile=o.cert_file, keyfile=o.key_file,
                               cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise MqttStartError(f"mqtt source: TLS settings unusable: {e}") from None
            client.tls_insecure_set(o.tls_insecure)
        client.reconnect_delay_set(0.5, 10)  # type: ignore[arg-type] # paho takes float s
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._connected = loop.create_future()
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = o.session_expiry
            props.ReceiveMaximum = o.receive_maximum
        try:
            # MQTT 5: resume the session on every connect (paho's default
            # starts clean the first time); 3.1.1 uses clean_session above.
            client.connect_async(self.host, self.port, o.keepalive,
                                 clean_start=o.session_expiry == 0 if v5 else
                                 mqtt.MQTT_CLEAN_START_FIRST_ONLY, properties=props)
        except (OSError, ValueError) as e:
            raise MqttStartError(f"mqtt source: cannot connect to {self.host}:{self.port}: "
                                 f"{e}") from None
        self._client = client
        client.loop_start()
        try:
            await asyncio.wait_for(asyncio.shield(self._connected), CONNECT_TIMEOUT)
        except BaseException as e:
            client.loop_stop()
            self._client = None
            if isinstance(e, TimeoutError):
                raise MqttStartError(f"mqtt source: no answer from {self.host}:{self.port} "
                                     f"within {CONNECT_TIMEOUT:g}s") from None
            raise

    def stop(self) -> None:
        # Messages received but not yet yielded stay unacked: the broker
        # re-sends them on the next connection of this session.
        self._stopped = True
        self._wake.set()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)

    # -- paho callbacks (on paho's network thread) ------------------------------------

    def _on_connect(self, client, _userdata, _flags, reason, _props) -> None:
        if reason.is_failure:
            self._resolve(MqttStartError(f"mqtt source: {self.host}:{self.port} refused the "
                                         f"connection: {reason}"))
            if self._connected is not None and self._connected.done():
                log.warning("mqtt: reconnect refused: %s", reason)
            return
        self._generation += 1
        qos = self.options.qos
        # Subscribing again on a resumed session is harmless and covers a
        # session the broker expired meanwhile.
        client.subscribe([(t, qos) for t in self.topics])
        log.info("mqtt: connected to %s:%d as %s (session %s), subscribing to %d topic(s)",
                 self.host, self.port, self.options.client_id,
                 "resumed" if _flags.session_present else "new", len(self.topics))

    def _on_subscribe(self, _client, _userdata, _mid, reasons, _props) -> None:
        # start() returns once the subscriptions are in place: what devices
        # publish from then on reaches this session.
        refused = [f"{t} ({r})" for t, r in zip(self.topics, reasons, strict=False)
                   if r.is_failure]
        if refused:
            self._resolve(MqttStartError("mqtt source: subscription refused: "
                                         + ", ".join(refused)))
            log.error("mqtt: subscription refused: %s", ", ".join(refused))
        else:
            self._resolve(None)

    def _on_connect_fail(self, _client, _userdata) -> None:
        self._resolve(MqttStartError(f"mqtt source: cannot connect to {self.host}:{self.port}"))

    def _on_disconnect(self, _client, _userdata, _flags, reason, _props) -> None:
        if not self._stopped:
            log.warning("mqtt: disconnected from %s:%d (%s); reconnecting", self.host,
                        self.port, reason)

    def _resolve(self, error: BaseException | None) -> None:
        fut, loop = self._connected, self._loop
        if fut is None or loop is None:
            return

        def settle() -> None:
            if not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)

        loop.call_soon_threadsafe(settle)

    def _on_message(self, _client, _userdata, msg: mqtt.MQTTMessage) -> None:
        self._pending.append((msg, self._generation, time.time()))
        loop = self._loop
        if self._waiting and loop is not None:  # see batches(): set before the consumer looks
            self._waiting = False
            loop.call_soon_threadsafe(self._wake.set)

    # -- intake -----------------------------------------------------------------------

    async def batches(self) -> AsyncIterator[Batch]:
        pending, wake, size = self._pending, self._wake, self.options.max_batch
        convert, status = self.uplink.convert, self.status
        while not self._stopped:
            if not pending:
                self._waiting = True
                if not pending:
                    await wake.wait()
                    wake.clear()
                    continue
                self._waiting = False
            if len(pending) < size:
                # Messages trickle in one by one: waiting a moment once turns a
                # stream of tiny batches into a few full ones.
                await asyncio.sleep(self.linger)
            items: list[bytes] = []
            acks: list[tuple[int, int]] = []
            rejects: list[dict[str, Any]] = []
            n = min(size, len(pending))
            generation = self._generation
            for _ in range(n):
                msg, gen, received = pending.popleft()
                if status is not None and msg.topic == MOSQUITTO_LOG_TOPIC:
                    notifications, reason = status.convert(msg.payload, received), None
                else:
                    props = _publish_properties(msg) if msg.properties is not None else None
                    notifications, reason = convert(msg.topic, msg.payload, received, props)
                if notifications:
                    items.extend(notifications)
                elif reason is not None:
                    rejects.append({"reason": reason, "source": self.name, "topic": msg.topic,
                                    "payload": msg.payload.decode("utf-8", "replace")})
                else:
                    self.ignored += 1
                if msg.qos and gen == generation:
                    acks.append((msg.mid, msg.qos))
            self.messages += n
            if rejects:
                self._rejected(rejects)
                if self.dead_letters is not None:
                    # Stored durably before the messages are acked.
                    await self.dead_letters.write(rejects)
            yield Batch(items, self._acker(acks, generation))

    def _rejected(self, rejects: list[dict[str, Any]]) -> None:
        n = len(rejects)
        self.dead_lettered += n
        m = self.metrics
        if m is not None:  # counted like the pipeline's malformed inputs
            counts = m.flow.source(self.name)
            counts.received += n
            counts.malformed += n
        now = time.monotonic()
        if now - self._last_warning >= 10:  # one line per 10 s, not one per message
            self._last_warning = now
            log.warning("mqtt: %d message(s) dead-lettered (%d in all), e.g. %s: %s",
                        len(rejects), self.dead_lettered, rejects[0]["topic"], rejects[0]["reason"])

    def _acker(self, acks: list[tuple[int, int]], generation: int):
        async def ack() -> None:
            client = self._client
            if client is None or generation != self._generation:
                # Closed or reconnected since: the broker re-sends these.
                return
            _ack_all(client, acks)

        return ack


def _ack_all(client: mqtt.Client, acks: list[tuple[int, int]]) -> None:
    """PUBACK every message of a batch, in order. paho's `ack()` wakes its
    network thread once per message (a socket write, then a GIL hand-over
    each); here a batch's PUBACKs are queued together and the thread woken
    once - 1.3x more messages/s under load (benchmarks/README.md). Relies on
    paho 2.x internals (`_out_packet`, `_sockpairW`); without them, `ack()`."""
    import paho.mqtt.client as mqtt

    out = getattr(client, "_out_packet", None)
    wake = getattr(client, "_sockpairW", None)
    if out is None or wake is None or any(q != 1 for _, q in acks):
        for mid, qos in acks:
            client.ack(mid, qos)
        return
    pack = _PUBACK.pack
    for mid, _ in acks:
        out.append({"command": mqtt.PUBACK, "mid": mid, "qos": 1, "pos": 0, "to_process": 4,
                    "packet": pack(mqtt.PUBACK, 2, mid), "info": None})
    try:
        wake.send(b"0")
    except BlockingIOError:  # already woken and not yet drained
        pass


_PUBACK = struct.Struct("!BBH")


def _publish_properties(msg: mqtt.MQTTMessage) -> dict[str, Any] | None:
    """The MQTT 5 properties a message report carries (notifications.md 2.5)."""
    p = msg.properties
    out: dict[str, Any] = {}
    for attr, key in (("ResponseTopic", "response_topic"), ("ContentType", "content_type")):
        value = getattr(p, attr, None)
        if value is not None:
            out[key] = value
    data = getattr(p, "CorrelationData", None)
    if data is not None:
        out["correlation_data"] = data.decode("utf-8", "replace")
    users = getattr(p, "UserProperty", None)
    if users:
        out["user_properties"] = [{"prop_key": k, "prop_value": v} for k, v in users]
    return out or None
