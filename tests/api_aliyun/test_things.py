"""Products and devices through Alibaba's official SDK (seed §2.5, §2.6),
on the registry the IoTDA endpoints keep: a device registered through one
API is seen by the other, and its changes notify the rules."""

from __future__ import annotations

import asyncio

from engine.api.storage import EVENTS, SqliteStore
from tests.api.conftest import sdk_client
from tests.api_aliyun.conftest import Sdk


def test_products_and_devices_through_the_sdk(server):
    endpoint, db = server
    sdk = Sdk(endpoint)
    info = sdk.ok("CreateProduct", ProductName="thermo_meter", NodeType=0,
                  Description="hall sensors")["ProductInfo"]
    key = info["ProductKey"]
    assert len(key) == 11 and info["ProductName"] == "thermo_meter" and info["NodeType"] == 0
    sdk.fails("CreateProduct", "iot.prod.AlreadyExistedProductName", ProductName="thermo_meter")
    sdk.fails("CreateProduct", "iot.prod.InvalidFormattedProductName", ProductName="ab")
    sdk.fails("CreateProduct", "iot.prod.InvalidNodeType", ProductName="other_one", NodeType=5)

    device = sdk.ok("RegisterDevice", ProductKey=key, DeviceName="dev-01",
                    Nickname="hall")["Data"]
    assert device["IotId"] == f"{key}_dev-01" and device["DeviceName"] == "dev-01"
    assert len(device["DeviceSecret"]) == 32
    generated = sdk.ok("RegisterDevice", ProductKey=key)["Data"]["DeviceName"]
    sdk.fails("RegisterDevice", "iot.device.AlreadyExistedDeviceName", ProductKey=key,
              DeviceName="dev-01")
    sdk.fails("RegisterDevice", "iot.prod.NotExistedProduct", ProductKey="a1nothere00",
              DeviceName="dev-02")
    sdk.fails("RegisterDevice", "iot.device.InvalidFormattedDeviceName", ProductKey=key,
              DeviceName="d@v")

    product = sdk.ok("QueryProduct", ProductKey=key)["Data"]
    assert product["DeviceCount"] == 2 and product["Description"] == "hall sensors"
    assert product["GmtCreate"] > 1.7e12
    listed = sdk.ok("QueryProductList", CurrentPage=1, PageSize=10)["Data"]
    assert listed["Total"] == 1 and listed["List"]["ProductInfo"][0]["ProductKey"] == key

    detail = sdk.ok("QueryDeviceDetail", ProductKey=key, DeviceName="dev-01")["Data"]
    assert detail["IotId"] == device["IotId"] and detail["Status"] == "UNACTIVE"
    assert detail["DeviceSecret"] == device["DeviceSecret"] and detail["Nickname"] == "hall"
    assert sdk.ok("QueryDeviceDetail", IotId=device["IotId"])["Data"]["DeviceName"] == "dev-01"
    page = sdk.ok("QueryDevice", ProductKey=key, PageSize=1, CurrentPage=2)
    assert (page["Total"], page["PageCount"], page["Page"]) == (2, 2, 2)
    assert [d["DeviceName"] for d in page["Data"]["DeviceInfo"]] == [generated]
    sdk.fails("QueryDevice", "iot.common.InvalidPageParams", ProductKey=key, PageSize=51)

    sdk.ok("DisableThing", IotId=device["IotId"])
    assert sdk.ok("GetDeviceStatus", IotId=device["IotId"])["Data"]["Status"] == "DISABLE"
    sdk.ok("EnableThing", ProductKey=key, DeviceName="dev-01")
    assert sdk.ok("GetDeviceStatus", ProductKey=key, DeviceName="dev-01")["Data"] == \
        {"Status": "UNACTIVE"}

    # The same records through IoTDA's API (the official Huawei SDK).
    from huaweicloudsdkiotda.v5 import ShowDeviceRequest

    huawei = sdk_client(f"http://{endpoint}")
    shown = huawei.show_device(ShowDeviceRequest(device_id=device["IotId"]))
    assert (shown.node_id, shown.product_id, shown.device_name) == ("dev-01", key, "hall")

    # `engine api` with no mqtt source in its rule files has no broker for Pub.
    sdk.fails("Pub", "iot.messagebroker.PublishMessageFailed", ProductKey=key,
              TopicFullName=f"/{key}/dev-01/user/get", MessageContent="aGk=")

    sdk.ok("DeleteDevice", IotId=device["IotId"])
    sdk.fails("QueryDeviceDetail", "iot.device.NotExistedDevice", IotId=device["IotId"])
    sdk.fails("GetDeviceStatus", "iot.device.InvalidIoTId")

    async def notifications():
        store = SqliteStore(str(db))
        await store.open()
        try:
            return [(r.body["notification"]["resource"], r.body["notification"]["event"])
                    for r in await store.load("proj-a") if r.kind == EVENTS]
        finally:
            await store.close()

    assert asyncio.run(notifications()) == [
        ("product", "create"), ("device", "create"), ("device", "create"),
        ("device", "update"), ("device", "update"), ("device", "delete")]
