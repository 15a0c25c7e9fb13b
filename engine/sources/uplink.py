"""IoTDA device uplink topics -> the notifications IoTDA pushes for them.

A device speaks the device-side MQTT API (seed §2): it publishes on
`$oc/devices/{device_id}/sys/...` or on a custom `$oc/devices/{device_id}/user/...`
topic. `Uplink.convert` turns one such message into the notifications a rule
sees (spec/notifications.md), with the header filled from the registry:

| topic (after `$oc/devices/{device_id}/`)      | notification(s)                                |
| --------------------------------------------- | ---------------------------------------------- |
| `sys/properties/report`                       | `device.property`/`report` (`services`)        |
| `sys/gateway/sub_devices/properties/report`   | one `device.property`/`report` per child       |
| `sys/messages/up`, `user/...`                 | `device.message`/`report` (`topic`, `content`) |
| `sys/events/up`, `$sub_device_manager`        | one `device.status`/`update` per child status  |
|   `sub_device_update_status` service          |                                                |
| `sys/events/up`, `$ota`/`version_report`      | `device`/`update` (versions)                   |
| `sys/commands/response/request_id={id}`       | `device.command.status`/`update`               |

Other uplink topics (property set/get responses, shadow queries, the other
events: time sync, file upload, logs, ...) have no notification kind in IoTDA's
data forwarding: they are counted as ignored. A payload that does not parse,
a device the registry does not know (unless it accepts unknown devices), a
frozen device, or a topic that is not a device topic is rejected with its
reason (the source dead-letters it).

`event_time` comes from the payload (a service's or event's `event_time`, in
either IoTDA format) when present, else the receipt time.
"""

from __future__ import annotations

import base64
import itertools
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from engine.sources.device_registry import Registry

_COMPACT = re.compile(r"\d{8}T\d{6}Z")
_MILLIS = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{3})Z")

# Device-to-platform topics that IoTDA does not forward as notifications,
# and platform-to-device topics (seen when a source subscribes to `#`).
_IGNORED = re.compile(
    r"properties/(set|get)/response/.*|shadow/get/.*|messages/down|events/down"
    r"|commands/request_id=.*|properties/(set|get)/request_id=.*")


def receipt_times(now: float) -> tuple[str, str]:
    """(compact, millisecond) UTC renderings of a receipt time."""
    second = int(now)
    cached = _second_cache
    if cached[0] != second:  # one strftime pair per second, not per message
        t = time.gmtime(second)
        cached[:] = [second, time.strftime("%Y%m%dT%H%M%SZ", t),
                     time.strftime("%Y-%m-%dT%H:%M:%S.", t)]
    return cached[1], f"{cached[2]}{int(now * 1000) % 1000:03d}Z"


_second_cache: list = [None, "", ""]


def request_ids():
    """Request ids for messages that name none: UUID-shaped, a random
    per-process prefix and a counter (a uuid4 per message costs more)."""
    head = str(uuid.uuid4())[:24]
    for n in itertools.count():
        yield f"{head}{n & 0xFFFFFFFFFFFF:012x}"


_next_request_id = request_ids().__next__


def device_times(value: Any) -> tuple[str, str] | None:
    """(compact, millisecond) forms of a device-given event_time in either
    IoTDA format; None when absent or malformed."""
    if type(value) is not str:
        return None
    if _COMPACT.fullmatch(value):
        v = value
        return v, f"{v[0:4]}-{v[4:6]}-{v[6:8]}T{v[9:11]}:{v[11:13]}:{v[13:15]}.000Z"
    m = _MILLIS.fullmatch(value)
    if m:
        y, mo, d, h, mi, s, _ = m.groups()
        return f"{y}{mo}{d}T{h}{mi}{s}Z", value
    return None


class Rejected(ValueError):
    """The message cannot become a notification; the text says why."""


Result = tuple[list[bytes], str | None]
"""(notifications as JSON, reject reason or None). No notifications and no
reason: a topic without a notification kind (ignored)."""


class Uplink:
    """Converts device messages to notifications, enriched from `registry`."""

    def __init__(self, registry: Registry | None = None, *, prefix: str = "$oc/devices/") -> None:
        self.registry = registry or Registry()
        self.prefix = prefix
        self._routes: dict[str, Callable[..., list[dict[str, Any]]]] = {
            "sys/properties/report": self._properties,
            "sys/gateway/sub_devices/properties/report": self._gateway_properties,
            "sys/messages/up": self._message,
            "sys/events/up": self._events,
        }

    def convert(self, topic: str, payload: bytes | bytearray, received: float,
                properties: dict[str, Any] | None = None) -> Result:
        """The notifications for one message received at `received` (epoch
        seconds). `properties`: MQTT 5 publish properties (message reports
        carry them in `body.properties`)."""
        try:
            return [orjson.dumps(n) for n in self._convert(topic, payload, received,
                                                          properties)], None
        except Rejected as e:
            return [], str(e)

    def _convert(self, topic: str, payload: bytes | bytearray, received: float,
                 properties: dict[str, Any] | None) -> list[dict[str, Any]]:
        if not topic.startswith(self.prefix):
            raise Rejected(f"not an IoTDA device topic (expected {self.prefix}{{device_id}}/...)")
        device_id, _, rest = topic[len(self.prefix):].partition("/")
        if not device_id or not rest:
            raise Rejected("topic names no device")
        path, _, query = rest.partition("?")
        request_id = query[len("request_id="):] if query.startswith("request_id=") else None
        handler = self._routes.get(path)
        if handler is None:
            if path.startswith("user/"):
                handler = self._message
            elif path.startswith("sys/commands/response/request_id="):
                request_id = path[len("sys/commands/response/request_id="):]
                handler = self._command_response
            elif _IGNORED.fullmatch(path[4:]) and path.startswith("sys/"):
                return []
            else:
                raise Rejected(f"unknown device topic {path!r}")
        header = self.registry.header(device_id)
        if type(header) is str:
            raise Rejected(header)
        return handler(device_id, header, topic, path, payload,
                       receipt_times(received), request_id, properties)

    # -- one handler per topic kind ---------------------------------------------------

    def _properties(self, device_id, header, topic, path, payload, now, request_id, _props):
        body = _json_object(payload, "property report")
        services, times = _services(body.get("services"), now)
        return [_notification("device.property", "report", header, {"services": services},
                              times, request_id)]

    def _gateway_properties(self, gateway_id, _header, topic, path, payload, now, request_id,
                            _props):
        body = _json_object(payload, "gateway property report")
        devices = body.get("devices")
        if type(devices) is not list or not devices:
            raise Rejected("gateway property report: 'devices' must be a non-empty list")
        out = []
        for i, d in enumerate(devices):
            if type(d) is not dict or type(d.get("device_id")) is not str:
                raise Rejected(f"gateway property report: devices[{i}] has no device_id")
            header = self.registry.child_header(gateway_id, d["device_id"])
            if type(header) is str:
                raise Rejected(f"gateway property report: {header}")
            services, times = _services(d.get("services"), now, f"devices[{i}].")
            out.append(_notification("device.property", "report", header,
                                     {"services": services}, times, request_id))
        return out

    def _message(self, device_id, header, topic, path, payload, now, request_id, props):
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError:
            value = None
            try:
                content = payload.decode()
            except UnicodeDecodeError:  # binary: base64, as IoTDA's codec-less forwarding does
                content = base64.b64encode(payload).decode()
        else:
            content = value
        if type(value) is dict and "content" in value and path == "sys/messages/up":
            # The system format: {object_device_id, name, id, content}.
            content = value["content"]
            child = value.get("object_device_id")
            if type(child) is str and child and child != device_id:
                header = self.registry.child_header(device_id, child)
                if type(header) is str:
                    raise Rejected(f"message report: {header}")
            if type(value.get("id")) is str and request_id is None:
                request_id = value["id"]
        body = {"topic": topic.partition("?")[0], "content": content}
        if props:
            body["properties"] = props
        return [_notification("device.message", "report", header, body, now, request_id)]

    def _events(self, device_id, header, topic, path, payload, now, request_id, _props):
        body = _json_object(payload, "event report")
        services = body.get("services")
        if type(services) is not list:
            raise Rejected("event report: 'services' must be a list")
        target = body.get("object_device_id")
        out = []
        for i, s in enumerate(services):
            if type(s) is not dict:
                raise Rejected(f"event report: services[{i}] is not an object")
            times = device_times(s.get("event_time")) or now
            paras = s.get("paras")
            kind = (s.get("service_id"), s.get("event_type"))
            if kind == ("$sub_device_manager", "sub_device_update_status"):
                statuses = paras.get("device_statuses") if type(paras) is dict else None
                if type(statuses) is not list:
                    raise Rejected(f"event report: services[{i}].paras.device_statuses "
                                   "must be a list")
                for st in statuses:
                    if type(st) is not dict or type(st.get("device_id")) is not str \
                            or st.get("status") not in ("ONLINE", "OFFLINE"):
                        raise Rejected("event report: a device status needs device_id and "
                                       "status ONLINE or OFFLINE")
                    child = self.registry.child_header(device_id, st["device_id"])
                    if type(child) is str:
                        raise Rejected(f"event report: {child}")
                    out.append(_notification("device.status", "update", child, {
                        "status": st["status"], "last_online_time": times[0],
                        "status_update_time": times[1]}, times, request_id))
            elif kind == ("$ota", "version_report") and type(paras) is dict:
                subject, subject_header = device_id, header
                if type(target) is str and target and target != device_id:
                    subject_header = self.registry.child_header(device_id, target)
                    if type(subject_header) is str:
                        raise Rejected(f"event report: {subject_header}")
                    subject = target
                out.append(_notification("device", "update", None, self._device_body(
                    subject, subject_header, paras), times, request_id))
            # Other events have no notification kind: ignored.
        return out

    def _device_body(self, device_id: str, header: dict[str, Any],
                     paras: dict[str, Any]) -> dict[str, Any]:
        """QueryDeviceBase of a device whose versions were just reported."""
        body = dict(header)
        device = self.registry.devices.get(device_id)
        if device is not None:
            product = self.registry.products[device.product_id]
            if device.device_name:
                body["device_name"] = device.device_name
            if product.name:
                body["product_name"] = product.name
        body["status"] = "ONLINE"
        for key in ("fw_version", "sw_version"):
            if type(paras.get(key)) is str:
                body[key] = paras[key]
        return body

    def _command_response(self, device_id, header, topic, path, payload, now, request_id,
                          _props):
        body = _json_object(payload, "command response")
        code = body.get("result_code", 0)
        if type(code) is not int:
            raise Rejected("command response: result_code must be an integer")
        return [_notification("device.command.status", "update", header, {
            "command_id": request_id, "response_time": now[0],
            "status": "SUCCESSFUL" if code == 0 else "FAILED", "result": body}, now, None)]


# -- helpers ------------------------------------------------------------------------


def _json_object(payload: bytes | bytearray, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise Rejected(f"{what}: payload is not JSON ({e})") from None
    if type(value) is not dict:
        raise Rejected(f"{what}: payload must be a JSON object")
    return value


def _services(services: Any, now: tuple[str, str],
              where: str = "") -> tuple[list[dict[str, Any]], tuple[str, str]]:
    """Checked service list and the notification's times (the first
    service's own, else `now`); a missing or malformed service event_time
    becomes the receipt time (seed §2.7.1)."""
    first = None
    if type(services) is not list or not services:
        raise Rejected(f"property report: '{where}services' must be a non-empty list")
    out = []
    for i, s in enumerate(services):
        if type(s) is not dict or type(s.get("service_id")) is not str \
                or type(s.get("properties")) is not dict:
            raise Rejected(f"property report: {where}services[{i}] needs service_id and "
                           "properties (an object)")
        times = device_times(s.get("event_time"))
        if times is None:
            s = {**s, "event_time": now[0]}
        elif first is None:
            first = times
        out.append(s)
    return out, first or now


def _notification(resource: str, event: str, header: dict[str, Any] | None,
                  body: dict[str, Any], times: tuple[str, str],
                  request_id: str | None) -> dict[str, Any]:
    notify: dict[str, Any] = {"header": header, "body": body} if header is not None \
        else {"body": body}
    return {"resource": resource, "event": event, "event_time": times[0],
            "event_time_ms": times[1], "request_id": request_id or _next_request_id(),
            "notify_data": notify}


# -- device status from the broker's connection log ------------------------------------
#
# Mosquitto reports each client's connect and disconnect only in its log;
# with `log_dest topic` and `log_type notice` it publishes every log line
# on $SYS/broker/log/N (QoS 0: lines logged while no worker is subscribed
# are not kept for it), e.g.
#   1796359737: New client connected from 127.0.0.1:52562 as d1_0_0_2024120401 (p2, c1, k60, u'd1').
#   1796359737: Client d1_0_0_2024120401 disconnected.
# ("closed its connection.", "has exceeded timeout, disconnecting.", and
# "disconnected due to …" end a connection too; "already connected, closing
# old connection" does not: the device is back at once.)

MOSQUITTO_LOG_TOPIC = "$SYS/broker/log/N"
_CONNECTED = re.compile(r"New client connected from \S+ as (\S+) \([^)]*?(?:, u'([^']*)')?\)\.$")
_DISCONNECTED = re.compile(
    r"Client (\S+) (?:disconnected|closed its connection|has exceeded timeout)")
_IOTDA_CLIENT_ID = re.compile(r"(.+)_0_[01]_\d{10}")   # {device_id}_0_{sign type}_{YYYYMMDDHH}


class ConnectionStatus:
    """`device.status`/`update` ONLINE and OFFLINE for registered devices
    from the broker's connection log. The device is the connection's user
    name (IoTDA devices log in with their device id), else the device id in
    an IoTDA client id, else the client id itself; other clients (the
    engine's own, unregistered or frozen devices) are ignored, also when
    the registry accepts unknown devices' traffic."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._clients: dict[str, tuple[str, str]] = {}  # client id -> (device, online since)

    def _device(self, client_id: str, username: str | None) -> str | None:
        m = _IOTDA_CLIENT_ID.fullmatch(client_id)
        for candidate in (username, m.group(1) if m else None, client_id):
            if candidate and candidate in self.registry.devices:
                return candidate
        return None

    def convert(self, payload: bytes | bytearray, received: float) -> list[bytes]:
        line = bytes(payload).decode("utf-8", "replace").rstrip()
        _, _, line = line.partition(": ")   # "<epoch seconds>: " first
        times = receipt_times(received)
        if (m := _CONNECTED.search(line)) is not None:
            device = self._device(m.group(1), m.group(2))
            if device is None:
                return []
            self._clients[m.group(1)] = (device, times[0])
            status, since = "ONLINE", times[0]
        elif (m := _DISCONNECTED.match(line)) is not None:
            known = self._clients.pop(m.group(1), None)
            device = known[0] if known else self._device(m.group(1), None)
            if device is None:
                return []
            status, since = "OFFLINE", known[1] if known else times[0]
        else:
            return []
        header = self.registry.header(device)
        if not isinstance(header, dict):   # frozen
            return []
        return [orjson.dumps(_notification("device.status", "update", header, {
            "status": status, "last_online_time": since, "status_update_time": times[1]},
            times, None))]
