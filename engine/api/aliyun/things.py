"""Products and devices through Alibaba's IoT API (seed §2.5, §2.6), on the
one registry the IoTDA product and device endpoints keep (engine.api.devices).

The same records, two views: a ProductKey is a product's `product_id`, a
DeviceName a device's `node_id` in that product, an IotId its `device_id`
(`{ProductKey}_{DeviceName}` for a device registered here, IoTDA's generated
form), a DeviceSecret its secret. So a device registered through either API
is known to both, to the worker's registry, and to the device sources, and
every change emits the same `product`/`device` notifications into the
rules. The writes reuse engine.api.devices' plans; IoTDA's refusals are
answered with Alibaba's codes (`_ALIBABA_CODES`).

Alibaba's names are stricter where IoTDA's are: a DeviceName here is 4–32
letters, digits, `_` or `-` (Alibaba also allows `@ . :`, which IoTDA's
node ids do not). Status is `UNACTIVE` or `DISABLE`: the engine does not
track connections (docs/devices.md).
"""

from __future__ import annotations

import math
import re
import secrets
import string
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from engine.api import devices, errors
from engine.api.aliyun.errors import AliyunError
from engine.api.aliyun.operations import page_param
from engine.api.storage import DEVICES, PRODUCTS, Put, Store, Stored
from engine.config.limits import ApiLimits

Params = Mapping[str, str]
Operation = Callable[[Store, str, Params, ApiLimits], Awaitable[dict[str, Any]]]

_PRODUCT_NAME = re.compile(r"[\w]{4,30}")   # letters (any script), digits, _
_DEVICE_NAME = re.compile(r"[A-Za-z0-9_-]{4,32}")
PAGE_SIZE_MAX = 50     # QueryDevice (seed §2.6.4)
PRODUCT_PAGE_MAX = 200  # QueryProductList (seed §2.5.3)

_ALIBABA_CODES = {
    "IOTDA.013000": ("iot.prod.NotExistedProduct", "The specified product does not exist."),
    "IOTDA.013006": ("iot.prod.ProductCountExceedMax",
                     "The total number of products exceeds the limit."),
    "IOTDA.013007": ("iot.prod.CreateProductFailed", "The product has devices."),
    "IOTDA.013008": ("iot.prod.AlreadyExistedProductName", "The product already exists."),
    "IOTDA.014008": ("iot.device.AlreadyExistedDeviceName", "The device name already exists."),
    "IOTDA.014031": ("iot.device.AlreadyExistedDeviceName", "The device name already exists."),
    "IOTDA.014019": ("iot.device.DeviceCountExceeded",
                     "The number of devices exceeds the limit."),
    "IOTDA.014024": ("iot.device.DeleteDeviceFailed", "The gateway still has sub-devices."),
    "IOTDA.014051": ("iot.device.NotExistedDevice", "The specified device does not exist."),
}


async def _change(store: Store, project: str, plan: devices.Plan) -> list[Stored]:
    try:
        return await store.change(project, plan)
    except errors.ApiError as e:
        code, message = _ALIBABA_CODES.get(e.code, ("iot.common.InvalidTenant", e.message))
        raise AliyunError(code, message) from None


def _ms(compact: str | None) -> int | None:
    if not compact:
        return None
    return int(datetime.strptime(compact, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
               * 1000)


def _gmt(compact: str | None) -> str | None:
    # The seed's form: "Thu, 17-Nov-2016 02:08:12 GMT".
    ms = _ms(compact)
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime(
        "%a, %d-%b-%Y %H:%M:%S GMT")


def _product_key(params: Params) -> str:
    key = params.get("ProductKey", "")
    if not key:
        raise AliyunError("iot.prod.InvalidFormattedProductkey", "ProductKey cannot be empty.")
    return key


def _product(records: list[Stored], key: str) -> dict[str, Any]:
    for r in records:
        if r.kind == PRODUCTS and r.id == key:
            return r.body
    raise AliyunError("iot.prod.NotExistedProduct", "The specified product does not exist.")


def _device(records: list[Stored], params: Params) -> dict[str, Any]:
    """The device an IotId, or a ProductKey and DeviceName, names."""
    iot_id = params.get("IotId")
    key, name = params.get("ProductKey"), params.get("DeviceName")
    if not iot_id and not (key and name):
        raise AliyunError("iot.device.InvalidIoTId",
                          "Give IotId, or ProductKey and DeviceName.")
    for r in records:
        if r.kind != DEVICES:
            continue
        if (r.id == iot_id) if iot_id else (r.body["product_id"] == key
                                            and r.body["node_id"] == name):
            return r.body
    raise AliyunError("iot.device.NotExistedDevice", "The specified device does not exist.")


def _count(records: list[Stored], key: str) -> int:
    return sum(1 for r in records if r.kind == DEVICES and r.body["product_id"] == key)


def product_info(body: dict[str, Any], records: list[Stored]) -> dict[str, Any]:
    """ProductInfo / QueryProduct's Data (seed Tables 2-2, 2-4)."""
    info = {"ProductKey": body["product_id"], "ProductName": body["name"],
            "NodeType": body.get("node_type", 0), "DataFormat": 1,
            "DeviceCount": _count(records, body["product_id"]),
            "GmtCreate": _ms(body.get("create_time")), "AliyunCommodityCode": "iothub"}
    if body.get("description"):
        info["Description"] = body["description"]
    return {k: v for k, v in info.items() if v is not None}


def _status(body: dict[str, Any]) -> str:
    return "DISABLE" if body.get("frozen") else "UNACTIVE"


def _secret(body: dict[str, Any]) -> str | None:
    return (body.get("auth_info") or {}).get("secret")


# ------------------------------------------------------------------ products


async def create_product(store: Store, project: str, params: Params, limits: ApiLimits
                         ) -> dict[str, Any]:
    # The seed's names (Name, Desc), and the current SDK's (ProductName, Description).
    name = params.get("Name") or params.get("ProductName") or ""
    if not name:
        raise AliyunError("iot.prod.NullProductName", "ProductName cannot be empty.")
    if not _PRODUCT_NAME.fullmatch(name):
        raise AliyunError("iot.prod.InvalidFormattedProductName", "The product name is 4 to "
                          "30 characters: letters, digits and underscores.")
    node_type = params.get("NodeType") or "0"
    if node_type not in ("0", "1"):
        raise AliyunError("iot.prod.InvalidNodeType", "NodeType must be 0 (device) or 1 "
                          "(gateway).")
    desc = params.get("Desc") or params.get("Description") or None
    if desc is not None and len(desc) > 100:
        raise AliyunError("iot.prod.LongProductDesc", "The product description exceeds 100 "
                          "characters.")
    key = "a1" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
    request = devices.ProductCreate(product_id=key, name=name, device_type="Default",
                                    protocol_type="MQTT", service_capabilities=[],
                                    description=desc)
    create = devices.plan_create_product(request, devices.MAX_PRODUCTS)

    def plan(records: list[Stored]) -> list[Any]:
        if any(r.kind == PRODUCTS and r.body["name"] == name for r in records):
            raise AliyunError("iot.prod.AlreadyExistedProductName",
                              "The product name already exists.")
        ops = create(records)
        product = ops[0]
        assert isinstance(product, Put)
        product.body["node_type"] = int(node_type)   # Alibaba's; IoTDA shows it per device
        return ops

    written = await _change(store, project, plan)
    body = written[0].body
    info = {"ProductKey": key, "ProductName": name, "NodeType": int(node_type),
            "FromSource": "iothub", "CatId": int(params.get("CatId") or 10000)}
    if desc:
        info["ProductDesc"] = desc
    assert body["product_id"] == key
    return {"ProductInfo": info}


async def query_product(store: Store, project: str, params: Params, limits: ApiLimits
                        ) -> dict[str, Any]:
    records = await store.load(project)
    return {"Data": product_info(_product(records, _product_key(params)), records)}


async def query_product_list(store: Store, project: str, params: Params, limits: ApiLimits
                             ) -> dict[str, Any]:
    size = page_param(params, "PageSize", 10, PRODUCT_PAGE_MAX)
    page = page_param(params, "CurrentPage", 1, 1000)
    records = await store.load(project)
    products = [r.body for r in records if r.kind == PRODUCTS]
    chunk = products[(page - 1) * size: page * size]
    return {"Data": {"PageCount": math.ceil(len(products) / size), "PageSize": size,
                     "CurrentPage": page, "Total": len(products),
                     "List": {"ProductInfo": [product_info(p, records) for p in chunk]}}}


# ------------------------------------------------------------------ devices


async def register_device(store: Store, project: str, params: Params, limits: ApiLimits
                          ) -> dict[str, Any]:
    key = _product_key(params)
    name = params.get("DeviceName") or secrets.token_hex(10)
    if not _DEVICE_NAME.fullmatch(name):
        raise AliyunError("iot.device.InvalidFormattedDeviceName", "The device name is 4 to "
                          "32 characters: letters, digits, _ and -.")
    nickname = params.get("Nickname") or None
    secret = secrets.token_hex(16)
    try:
        request = devices.DeviceCreate(
            node_id=name, product_id=key, device_name=nickname,
            auth_info=devices.AuthInfo(auth_type="SECRET", secret=secret))
    except ValueError:
        raise AliyunError("iot.device.CreateDeviceFailed", "Nickname: only letters, digits "
                          "and _?'#(),.&%@!- are allowed.") from None
    plan, _ = devices.plan_create_device(request, devices.MAX_DEVICES)
    written = await _change(store, project, plan)
    data = {"IotId": written[0].id, "ProductKey": key, "DeviceName": name,
            "DeviceSecret": secret}
    if nickname:
        data["Nickname"] = nickname
    return {"Data": data}


async def query_device_detail(store: Store, project: str, params: Params, limits: ApiLimits
                              ) -> dict[str, Any]:
    records = await store.load(project)
    body = _device(records, params)
    product = _product(records, body["product_id"])
    created = _ms(body.get("create_time"))
    data = {"IotId": body["device_id"], "ProductKey": body["product_id"],
            "ProductName": product["name"], "DeviceName": body["node_id"],
            "DeviceSecret": _secret(body), "Nickname": body.get("device_name"),
            "Status": _status(body), "NodeType": product.get("node_type", 0),
            "GmtCreate": _gmt(body.get("create_time")),
            "UtcCreate": None if created is None else datetime.fromtimestamp(
                created / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")}
    return {"Data": {k: v for k, v in data.items() if v is not None}}


async def query_device(store: Store, project: str, params: Params, limits: ApiLimits
                       ) -> dict[str, Any]:
    key = _product_key(params)
    size = page_param(params, "PageSize", 10, PAGE_SIZE_MAX)
    page = page_param(params, "CurrentPage", 1, 1000)
    records = await store.load(project)
    _product(records, key)
    found = [r.body for r in records if r.kind == DEVICES and r.body["product_id"] == key]
    chunk = found[(page - 1) * size: page * size]
    info = [{k: v for k, v in {
        "DeviceId": b["device_id"], "IotId": b["device_id"], "DeviceName": b["node_id"],
        "ProductKey": key, "DeviceSecret": _secret(b), "Nickname": b.get("device_name"),
        "GmtCreate": _gmt(b.get("create_time")), "GmtModified": _gmt(b.get("create_time")),
        "DeviceStatus": _status(b)}.items() if v is not None} for b in chunk]
    return {"Data": {"DeviceInfo": info}, "Page": page, "PageSize": size,
            "PageCount": math.ceil(len(found) / size), "Total": len(found)}


async def delete_device(store: Store, project: str, params: Params, limits: ApiLimits
                        ) -> dict[str, Any]:
    body = _device(await store.load(project), params)
    await _change(store, project, devices.plan_delete_device(body["device_id"]))
    return {}


def _freeze(frozen: bool) -> Operation:
    async def operation(store: Store, project: str, params: Params, limits: ApiLimits
                        ) -> dict[str, Any]:
        body = _device(await store.load(project), params)
        if bool(body.get("frozen")) != frozen:   # already so: nothing to change or notify
            await _change(store, project, devices.plan_freeze(body["device_id"], frozen))
        return {}
    return operation


async def get_device_status(store: Store, project: str, params: Params, limits: ApiLimits
                            ) -> dict[str, Any]:
    return {"Data": {"Status": _status(_device(await store.load(project), params))}}


OPERATIONS: dict[str, Operation] = {
    "CreateProduct": create_product,
    "QueryProduct": query_product,
    "QueryProductList": query_product_list,
    "RegisterDevice": register_device,
    "QueryDeviceDetail": query_device_detail,
    "QueryDevice": query_device,
    "DeleteDevice": delete_device,
    "DisableThing": _freeze(True),
    "EnableThing": _freeze(False),
    "GetDeviceStatus": get_device_status,
}
