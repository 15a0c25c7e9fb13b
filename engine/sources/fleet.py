"""A simulated IoTDA tenant: a fleet of devices producing notifications of
all 12 kinds (docs/notifications.md shows one of each).

`Fleet(seed, devices).notification(t)` returns the next notification (a dict)
at simulated time `t` (epoch seconds). The sequence is a pure function of the
seed, the fleet size and the times passed in: the same inputs give the same
notifications, byte for byte once encoded.

What makes it realistic rather than random: devices belong to products
(thermometers, water meters, trackers, gateways) with typed services; their
properties evolve (batteries drain and get replaced, temperatures drift with
occasional spikes); a device that is offline first reports coming online;
deleted devices stop reporting until re-created; products created at run time
are the ones later updated or deleted; batch tasks move through their states.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

# Notification kinds as (resource, event), in the spec's order, with the share
# of traffic each gets: telemetry dominates, lifecycle events are rare.
KINDS: dict[tuple[str, str], float] = {
    ("device.status", "update"): 0.06,
    ("device.property", "report"): 0.70,
    ("device.message.status", "update"): 0.04,
    ("batchtask", "update"): 0.02,
    ("device.message", "report"): 0.08,
    ("device", "create"): 0.0075,   # as many as deletions: the fleet size stays put
    ("device", "update"): 0.015,
    ("device", "delete"): 0.0075,
    ("product", "create"): 0.0025,
    ("product", "update"): 0.005,
    ("product", "delete"): 0.0025,
    ("device.command.status", "update"): 0.05,
}

APPS = [("a1b2c3d4e5f60718293a4b5c", "smart-building"), ("f0e1d2c3b4a5968778695a4b", "water-utility")]

# Product templates: services -> properties (name -> data_type, unit).
PRODUCTS: dict[str, dict[str, Any]] = {
    "Thermometer": {
        "protocol_type": "MQTT", "device_type": "Thermometer", "industry": "smartBuilding",
        "services": {
            "Temperature": {"temperature": ("decimal", "centigrade"), "humidity": ("int", "%")},
            "Battery": {"batteryLevel": ("int", "%"), "voltage": ("decimal", "V")},
        },
    },
    "WaterMeter": {
        "protocol_type": "CoAP", "device_type": "WaterMeter", "industry": "smartCity",
        "services": {
            "WaterMeter": {"flow": ("decimal", "L/min"), "totalVolume": ("decimal", "m3"),
                           "valveState": ("string", None)},
            "Battery": {"batteryLevel": ("int", "%"), "voltage": ("decimal", "V")},
        },
    },
    "Tracker": {
        "protocol_type": "MQTT", "device_type": "Tracker", "industry": "logistics",
        "services": {
            "Location": {"latitude": ("decimal", "deg"), "longitude": ("decimal", "deg"),
                         "speed": ("decimal", "km/h")},
            "Battery": {"batteryLevel": ("int", "%"), "voltage": ("decimal", "V")},
        },
    },
    "EdgeGateway": {
        "protocol_type": "MQTT", "device_type": "Gateway", "industry": "smartBuilding",
        "services": {
            "Connectivity": {"signalStrength": ("int", "dBm"), "subDevices": ("int", None)},
        },
    },
}

SITES = ["plant-1", "plant-2", "hq", "warehouse-7"]


def compact_time(t: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))


def ms_time(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


@dataclass(slots=True)
class Product:
    product_id: str
    name: str
    app: tuple[str, str]
    template: str


@dataclass(slots=True)
class Device:
    device_id: str
    node_id: str
    name: str
    product: Product
    gateway_id: str
    tags: list[dict[str, str]]
    created: float
    online: bool = True
    deleted: bool = False
    sw_version: str = "1.0.0"
    state: dict[str, Any] = field(default_factory=dict)


class Fleet:
    def __init__(self, seed: int = 0, devices: int = 100, start: float = 1.7e9,
                 kinds: list[tuple[str, str]] | None = None) -> None:
        """`kinds`: generate only these (resource, event) pairs, keeping their
        relative shares; default all 12."""
        if devices < 1:
            raise ValueError("a fleet needs at least one device")
        unknown = set(kinds or ()) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown notification kinds: {sorted(unknown)}")
        self.rng = random.Random(seed)
        self._kinds = list(kinds or KINDS)
        self._weights = [KINDS[k] for k in self._kinds]
        self.products = {name: self._new_product(name, APPS[i % len(APPS)])
                         for i, name in enumerate(PRODUCTS)}
        self.extra_products: list[Product] = []  # created at run time
        self.devices: list[Device] = []
        gateways: list[Device] = []
        for i in range(devices):
            template = "EdgeGateway" if i % 10 == 0 else self.rng.choice(
                ["Thermometer", "WaterMeter", "Tracker"])
            dev = self._new_device(self.products[template], start - 86400 * self.rng.random())
            # Water meters hang behind the nearest gateway (sub-devices).
            if template == "EdgeGateway":
                gateways.append(dev)
            elif template == "WaterMeter" and gateways:
                dev.gateway_id = gateways[-1].device_id
                gateways[-1].state["subDevices"] += 1
            self.devices.append(dev)
        self.tasks: list[dict[str, Any]] = []

    # -- identities -----------------------------------------------------------

    def _hex(self, n: int) -> str:
        return f"{self.rng.getrandbits(4 * n):0{n}x}"

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _new_product(self, template: str, app: tuple[str, str]) -> Product:
        return Product(self._hex(24), template, app, template)

    def _new_device(self, product: Product, created: float) -> Device:
        rng = self.rng
        if product.template == "Tracker":
            node_id = f"{rng.randrange(10**14, 10**15)}"  # IMEI
        else:
            node_id = ":".join(f"{rng.randrange(256):02X}" for _ in range(6))  # MAC
        device_id = f"{product.product_id}_{node_id.replace(':', '')}"
        tags = [{"tag_key": "site", "tag_value": rng.choice(SITES)}]
        if rng.random() < 0.5:
            tags.append({"tag_key": "floor", "tag_value": str(rng.randrange(1, 9))})
        dev = Device(device_id, node_id, f"{product.name.lower()}-{node_id[-5:]}", product,
                     device_id, tags, created)
        dev.state = {"batteryLevel": rng.randrange(20, 101), "temperature": 21.0,
                     "totalVolume": round(rng.uniform(0, 500), 3),
                     "latitude": 48.1 + rng.random(), "longitude": 11.5 + rng.random(),
                     "subDevices": 0}
        return dev

    def _header(self, d: Device) -> dict[str, Any]:
        return {"app_id": d.product.app[0], "device_id": d.device_id, "node_id": d.node_id,
                "product_id": d.product.product_id, "gateway_id": d.gateway_id, "tags": d.tags}

    # -- notifications --------------------------------------------------------

    def notification(self, t: float) -> dict[str, Any]:
        resource, event = self.rng.choices(self._kinds, self._weights)[0]
        body_of = getattr(self, "_" + resource.replace(".", "_") + "_" + event)
        out = body_of(t)
        msg: dict[str, Any] = {"resource": out.pop("resource", resource),
                               "event": out.pop("event", event),
                               "event_time": compact_time(t), "event_time_ms": ms_time(t),
                               "request_id": self._uuid(), "notify_data": out}
        return msg

    def _live_device(self) -> Device:
        for _ in range(8):  # deletions are rare: a few tries find a live device
            d = self.rng.choice(self.devices)
            if not d.deleted:
                return d
        live = [d for d in self.devices if not d.deleted]
        if live:
            return live[0]
        d.deleted = False  # a tiny fleet entirely deleted: bring one back
        return d

    def _device_status_update(self, t: float, d: Device | None = None) -> dict[str, Any]:
        d = d or self._live_device()
        last_online = t if d.online else t - self.rng.uniform(60, 7200)
        if d.online and self.rng.random() < 0.1:
            status = "ABNORMAL"
        else:
            d.online = not d.online
            status = "ONLINE" if d.online else "OFFLINE"
        return {"resource": "device.status", "event": "update", "header": self._header(d),
                "body": {"status": status, "last_online_time": compact_time(last_online),
                         "status_update_time": ms_time(t)}}

    def _device_property_report(self, t: float) -> dict[str, Any]:
        d = self._live_device()
        if not d.online:  # a device reports its coming online before its data
            return self._device_status_update(t, d)
        rng, s = self.rng, d.state
        services = list(PRODUCTS[d.product.template]["services"])
        chosen = services if rng.random() < 0.3 else [rng.choice(services)]
        out = []
        for sid in chosen:
            if sid == "Battery":
                s["batteryLevel"] -= rng.random() < 0.3
                if s["batteryLevel"] < 5:
                    s["batteryLevel"] = 100  # battery replaced
                props = {"batteryLevel": s["batteryLevel"],
                         "voltage": round(3.0 + s["batteryLevel"] * 0.012, 2)}
            elif sid == "Temperature":
                s["temperature"] += rng.gauss(0, 0.3) - (s["temperature"] - 21) * 0.05
                temp = s["temperature"] + (rng.uniform(15, 25) if rng.random() < 0.02 else 0)
                props = {"temperature": round(temp, 1), "humidity": rng.randrange(30, 70)}
            elif sid == "WaterMeter":
                flow = round(max(0.0, rng.gauss(4, 3)), 2)
                s["totalVolume"] = round(s["totalVolume"] + flow / 1000, 3)
                props = {"flow": flow, "totalVolume": s["totalVolume"],
                         "valveState": "OPEN" if flow > 0 else "CLOSED"}
            elif sid == "Location":
                s["latitude"] += rng.gauss(0, 0.001)
                s["longitude"] += rng.gauss(0, 0.001)
                props = {"latitude": round(s["latitude"], 6), "longitude": round(s["longitude"], 6),
                         "speed": round(abs(rng.gauss(30, 20)), 1)}
            else:
                props = {"signalStrength": rng.randrange(-110, -50),
                         "subDevices": s["subDevices"]}
            # Devices report either second or millisecond precision.
            when = ms_time(t) if d.product.template == "Tracker" else compact_time(t)
            out.append({"service_id": sid, "properties": props, "event_time": when})
        return {"header": self._header(d), "body": {"services": out}}

    def _device_message_status_update(self, t: float) -> dict[str, Any]:
        d = self._live_device()
        body: dict[str, Any] = {"message_id": self._uuid(), "name": "config-push",
                                "topic": f"$oc/devices/{d.device_id}/user/config"}
        r = self.rng.random()
        if d.online and r < 0.85:
            body["status"] = "DELIVERED"
        elif r < 0.9:
            body["status"] = "PENDING"
        else:
            body["status"] = "TIMEOUT" if not d.online else "FAILED"
            body["error_info"] = (
                {"error_code": "IOTDA.014016", "error_msg": "Operation not allowed. The device is not online."}
                if not d.online else
                {"error_code": "IOTDA.014112",
                 "error_msg": "Send to device failed, device not subscribe topic."})
        body["timestamp"] = compact_time(t)
        return {"header": self._header(d), "body": body}

    def _batchtask_update(self, t: float) -> dict[str, Any]:
        rng = self.rng
        if not self.tasks or rng.random() < 0.3:
            self.tasks.append({"app_id": rng.choice(APPS)[0], "task_id": self._hex(24),
                               "task_type": rng.choice(["firmwareUpgrade", "softwareUpgrade"]),
                               "status": "Waiting", "status_desc": "task created"})
            return {"body": dict(self.tasks[-1])}
        task = rng.choice(self.tasks)
        if task["status"] == "Waiting":
            task["status"], task["status_desc"] = "Processing", "upgrading devices"
        else:
            task["status"] = rng.choices(["Success", "PartialSuccess", "Fail", "Stopped"],
                                         [0.7, 0.15, 0.1, 0.05])[0]
            task["status_desc"] = {"Success": "all devices upgraded",
                                   "PartialSuccess": "some devices failed to upgrade",
                                   "Fail": "package verification failed",
                                   "Stopped": "stopped by user"}[task["status"]]
            self.tasks.remove(task)
        return {"body": dict(task)}

    def _device_message_report(self, t: float) -> dict[str, Any]:
        d, rng = self._live_device(), self.rng
        body: dict[str, Any] = {"topic": f"$oc/devices/{d.device_id}/sys/messages/up"}
        if rng.random() < 0.7:
            body["content"] = {"temperature": round(d.state["temperature"] + rng.gauss(0, 8), 1),
                               "humidity": rng.randrange(20, 90)}
        else:
            body["content"] = rng.choice(["heartbeat", "door-open", "tamper-alarm", "reboot"])
        if rng.random() < 0.3:
            body["properties"] = {
                "response_topic": f"$oc/devices/{d.device_id}/sys/messages/down",
                "content_type": "application/json", "correlation_data": self._hex(8),
                "user_properties": [{"prop_key": "fw", "prop_value": d.sw_version}]}
        return {"header": self._header(d), "body": body}

    def _device_body(self, d: Device, status: str) -> dict[str, Any]:
        p = d.product
        return {"app_id": p.app[0], "app_name": p.app[1], "device_id": d.device_id,
                "node_id": d.node_id, "gateway_id": d.gateway_id, "device_name": d.name,
                "node_type": "GATEWAY" if p.template == "EdgeGateway" else "ENDPOINT",
                "description": f"{p.name} at {d.tags[0]['tag_value']}",
                "fw_version": "2.3.1", "sw_version": d.sw_version, "device_sdk_version": "C_v0.5.0",
                "auth_info": {"auth_type": "SECRET", "secure_access": True, "timeout": 300},
                "product_id": p.product_id, "product_name": p.name, "status": status,
                "create_time": compact_time(d.created), "tags": d.tags,
                "extension_info": {"batch": "2024-Q1", "installer": "acme"}}

    def _device_create(self, t: float) -> dict[str, Any]:
        gone = [d for d in self.devices if d.deleted]
        if gone:  # re-provision a deleted device
            d = gone[0]
            d.deleted, d.online, d.created = False, False, t
        else:  # a new device joins the fleet
            template = self.rng.choice(["Thermometer", "WaterMeter", "Tracker"])
            d = self._new_device(self.products[template], t)
            d.online = False
            self.devices.append(d)
        return {"body": self._device_body(d, "INACTIVE")}

    def _device_update(self, t: float) -> dict[str, Any]:
        d = self._live_device()
        if self.rng.random() < 0.5:
            major, minor, _ = d.sw_version.split(".")
            d.sw_version = f"{major}.{int(minor) + 1}.0"
        return {"body": self._device_body(d, "ONLINE" if d.online else "OFFLINE")}

    def _device_delete(self, t: float) -> dict[str, Any]:
        d = self._live_device()
        d.deleted = True
        return {"header": self._header(d)}

    def _product_body(self, p: Product) -> dict[str, Any]:
        tpl = PRODUCTS[p.template]
        caps = []
        for sid, props in tpl["services"].items():
            caps.append({
                "service_id": sid, "service_type": sid, "description": sid, "option": "Mandatory",
                "properties": [{"property_name": n, "data_type": dt, "method": "RE", "required": True,
                                **({"unit": unit} if unit else {})} for n, (dt, unit) in props.items()],
                "commands": [{"command_name": "reboot",
                              "paras": [{"para_name": "delay", "data_type": "int", "required": False,
                                         "min": "0", "max": "3600", "unit": "s"}],
                              "responses": [{"response_name": "ACK", "paras": [
                                  {"para_name": "result", "data_type": "string", "required": True}]}]}],
                "events": []})
        return {"app_id": p.app[0], "app_name": p.app[1], "product_id": p.product_id,
                "name": p.name, "device_type": tpl["device_type"],
                "protocol_type": tpl["protocol_type"], "data_format": "json",
                "manufacturer_name": "Acme Sensors", "industry": tpl["industry"],
                "description": f"{p.name} product model", "create_time": compact_time(1.69e9),
                "service_capabilities": caps}

    def _product_create(self, t: float) -> dict[str, Any]:
        template = self.rng.choice(list(PRODUCTS))
        p = self._new_product(template, self.rng.choice(APPS))
        p.name = f"{template}-v{len(self.extra_products) + 2}"
        self.extra_products.append(p)
        return {"body": self._product_body(p)}

    def _product_update(self, t: float) -> dict[str, Any]:
        p = self.rng.choice(self.extra_products or list(self.products.values()))
        return {"body": self._product_body(p)}

    def _product_delete(self, t: float) -> dict[str, Any]:
        if self.extra_products:  # products in use by the fleet are never deleted
            p = self.extra_products.pop(0)
        else:  # an unused product that was created before the simulation began
            p = self._new_product(self.rng.choice(list(PRODUCTS)), self.rng.choice(APPS))
        return {"body": {"app_id": p.app[0], "product_id": p.product_id, "name": p.name}}

    def _device_command_status_update(self, t: float) -> dict[str, Any]:
        d, rng = self._live_device(), self.rng
        created = t - rng.uniform(1, 30)
        body: dict[str, Any] = {"command_id": self._uuid(), "created_time": compact_time(created)}
        if d.online:
            status = rng.choices(["SUCCESSFUL", "DELIVERED", "SENT", "FAILED"], [0.8, 0.1, 0.05, 0.05])[0]
            body["sent_time"] = compact_time(created + 0.5)
            if status in ("SUCCESSFUL", "DELIVERED", "FAILED"):
                body["delivered_time"] = compact_time(created + 1)
            if status in ("SUCCESSFUL", "FAILED"):
                body["response_time"] = compact_time(t)
                body["result"] = ({"result_code": 0, "result": "rebooted"} if status == "SUCCESSFUL"
                                  else {"result_code": 1, "error": "busy"})
        else:
            status = rng.choice(["PENDING", "EXPIRED", "TIMEOUT"])
        body["status"] = status
        return {"header": self._header(d), "body": body}
