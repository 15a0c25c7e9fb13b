"""The registry through the official Huawei SDK against a running `engine
run` with the management API and an MQTT source (real Mosquitto, paho as the
device, a real HTTP receiver):

- creating a product and a device sends `product`/`create` and
  `device`/`create` to a rule's HTTP action;
- the new device's traffic is accepted (the worker's registry is reloaded
  in place) and its notifications carry the registry's header;
- tags bound through the SDK reach the header rules read (GET_TAG);
- freezing it refuses its traffic; deleting it sends `device`/`delete`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.api.conftest import api_section, free_port, sdk_client, start_worker
from tests.api_aliyun.test_lifecycle import Receiver, until
from tests.devices.support import BROKER, Device, port_open

REPO = Path(__file__).resolve().parents[2]


def _worker(tmp_path: Path, receiver: Receiver, api: int) -> subprocess.Popen:
    return start_worker(tmp_path, f"""\
sources:
  - mqtt: {{url: "mqtt://{BROKER[0]}:{BROKER[1]}", client_id: "reg-{os.getpid()}-{api}",
            session_expiry: 0}}
rules:
  - {{rule_id: created, subject: {{resource: device, event: create}}}}
  - {{rule_id: deleted, subject: {{resource: device, event: delete}}}}
  - {{rule_id: products, subject: {{resource: product, event: create}}}}
  - rule_id: reports
    subject: {{resource: device.property, event: report}}
    select: "notify_data.header.device_id AS device, notify_data.header.product_id AS product,
             notify_data.header.app_id AS app, notify_data.body.services[0].properties.value AS v,
             GET_TAG('site') AS site"
actions:
  - {{action_id: a1, rule_id: created, channel: HTTP_FORWARDING,
      channel_detail: {{http_forwarding: {{url: "{receiver.url}/created"}}}}}}
  - {{action_id: a2, rule_id: deleted, channel: HTTP_FORWARDING,
      channel_detail: {{http_forwarding: {{url: "{receiver.url}/deleted"}}}}}}
  - {{action_id: a3, rule_id: products, channel: HTTP_FORWARDING,
      channel_detail: {{http_forwarding: {{url: "{receiver.url}/products"}}}}}}
  - {{action_id: a4, rule_id: reports, channel: HTTP_FORWARDING,
      channel_detail: {{http_forwarding: {{url: "{receiver.url}/reports"}}}}}}
worker: {{state_dir: "{tmp_path / 'state'}"}}
""" + api_section(tmp_path, api))


def _bodies(receiver: Receiver, path: str) -> list[dict]:
    return [body for p, body in receiver.received if p == path]


@pytest.mark.timeout(120)
def test_sdk_registry_changes_reach_rules_and_the_device_path(tmp_path):
    from huaweicloudsdkiotda.v5 import (
        AddDevice,
        AddDeviceRequest,
        AddProduct,
        AuthInfo,
        BindTagsDTO,
        CreateProductRequest,
        DeleteDeviceRequest,
        FreezeDeviceRequest,
        ListDevicesRequest,
        ListResourcesByTagsRequest,
        QueryResourceByTagsDTO,
        ServiceCapability,
        ServiceProperty,
        ShowDeviceRequest,
        ShowProductRequest,
        TagDeviceRequest,
        TagV5DTO,
        UnbindTagsDTO,
        UntagDeviceRequest,
        UpdateDevice,
        UpdateDeviceRequest,
    )

    assert port_open(BROKER), "Mosquitto must run on 127.0.0.1:1883 (scripts/services.sh up)"
    receiver = Receiver()
    api = free_port()
    proc = _worker(tmp_path, receiver, api)
    device = Device()
    try:
        until(lambda: port_open(("127.0.0.1", api)), 30)
        sdk = sdk_client(f"http://127.0.0.1:{api}")
        topic = "$oc/devices/thermo_n1/sys/properties/report"

        def report(value: int) -> None:
            payload = {"services": [{"service_id": "Temperature",
                                     "properties": {"value": value}}]}
            device.publish_all([(topic, json.dumps(payload))])

        sdk.create_product(CreateProductRequest(body=AddProduct(
            product_id="thermo", name="Thermometer", device_type="Thermometer",
            protocol_type="MQTT", data_format="json", app_id="app1",
            service_capabilities=[ServiceCapability(
                service_id="Temperature", service_type="temperature",
                properties=[ServiceProperty(property_name="value", data_type="decimal",
                                            method="RW")])])))
        created = sdk.add_device(AddDeviceRequest(body=AddDevice(
            node_id="n1", product_id="thermo", device_name="hall",
            auth_info=AuthInfo(auth_type="SECRET", secret="s3cretpass"))))
        assert created.device_id == "thermo_n1" and created.product_name == "Thermometer"
        assert sdk.show_product(ShowProductRequest(product_id="thermo")).name == "Thermometer"

        until(lambda: _bodies(receiver, "/created"))
        notification = _bodies(receiver, "/created")[0]
        assert (notification["resource"], notification["event"]) == ("device", "create")
        body = notification["notify_data"]["body"]
        assert body["device_id"] == "thermo_n1" and body["product_name"] == "Thermometer"
        assert "secret" not in json.dumps(notification)
        assert _bodies(receiver, "/products")[0]["notify_data"]["body"]["product_id"] == "thermo"

        # The worker's registry has the device now: its reports pass, with its header.
        until(lambda: (report(21), _bodies(receiver, "/reports"))[1], 20)
        row = _bodies(receiver, "/reports")[-1]
        assert row == {"device": "thermo_n1", "product": "thermo", "app": "app1", "v": 21}

        sdk.update_device(UpdateDeviceRequest(device_id="thermo_n1",
                                              body=UpdateDevice(description="by the door")))
        shown = sdk.show_device(ShowDeviceRequest(device_id="thermo_n1"))
        assert shown.description == "by the door" and shown.auth_info.secret is None
        listed = sdk.list_devices(ListDevicesRequest(product_id="thermo"))
        assert [d.device_id for d in listed.devices] == ["thermo_n1"] and listed.page.count == 1

        # Tags (1.4.13): bound through the SDK, in the header within a reload.
        sdk.tag_device(TagDeviceRequest(body=BindTagsDTO(
            resource_type="device", resource_id="thermo_n1",
            tags=[TagV5DTO(tag_key="site", tag_value="north"), TagV5DTO(tag_key="floor")])))
        found = sdk.list_resources_by_tags(ListResourcesByTagsRequest(
            body=QueryResourceByTagsDTO(resource_type="device",
                                        tags=[TagV5DTO(tag_key="site", tag_value="north")])))
        assert [r.resource_id for r in found.resources] == ["thermo_n1"]
        until(lambda: (report(22), [r for r in _bodies(receiver, "/reports")
                                    if r.get("site") == "north"])[1], 20)
        sdk.untag_device(UntagDeviceRequest(body=UnbindTagsDTO(
            resource_type="device", resource_id="thermo_n1", tag_keys=["floor"])))
        tags = sdk.show_device(ShowDeviceRequest(device_id="thermo_n1")).tags
        assert [(t.tag_key, t.tag_value) for t in tags] == [("site", "north")]

        # Frozen: refused again (give the reload a moment, then count).
        sdk.freeze_device(FreezeDeviceRequest(device_id="thermo_n1"))
        time.sleep(2)
        before = len(_bodies(receiver, "/reports"))
        report(99)
        time.sleep(2)
        assert [r["v"] for r in _bodies(receiver, "/reports")[before:]] == []

        sdk.delete_device(DeleteDeviceRequest(device_id="thermo_n1"))
        until(lambda: _bodies(receiver, "/deleted"))
        header = _bodies(receiver, "/deleted")[0]["notify_data"]["header"]
        assert header["device_id"] == "thermo_n1" and header["product_id"] == "thermo"
        assert len(_bodies(receiver, "/created")) == 1  # once each
    finally:
        device.close()
        proc.terminate()
        proc.wait(timeout=30)
    log = (tmp_path / "engine.log").read_text()
    assert proc.returncode == 0, log
    assert "s3cretpass" not in log
    dead = (tmp_path / "state" / "dead-letters.jsonl").read_text()
    assert "device 'thermo_n1' is frozen" in dead
