"""Products and devices (IoTDA API reference 1.4.1 Product Management and
1.4.2 Device Management): the registry the device sources read, kept in the
API store per project.

    POST/GET         /v5/iot/{project_id}/products
    GET/PUT/DELETE   /v5/iot/{project_id}/products/{product_id}
    POST/GET         /v5/iot/{project_id}/devices
    GET/PUT/DELETE   /v5/iot/{project_id}/devices/{device_id}
    POST             /v5/iot/{project_id}/devices/{device_id}/action?action_id=resetSecret
    POST             /v5/iot/{project_id}/devices/{device_id}/freeze | /unfreeze
    POST             /v5/iot/{project_id}/tags/bind-resource | unbind-resource | query-resources

Stored as kinds `products` and `devices` (the store's REGISTRY_KINDS), each
body the IoTDA representation plus what the registry needs (`secret`,
`frozen`). A worker with an `api:` section runs them as its `registry:`
(`engine.api.effective`), reloaded in place when they change.

Every change also writes the notification IoTDA would push
(`device`/`create|update|delete`, `product`/`create|update|delete`; seed
1.4.9; binding or unbinding tags is a `device`/`update`, as the tags are in
every notification's header) into the store's outbox (kind `registry_events`), in the same
transaction as the change itself, so a change is never stored without its
notification; `engine.api.outbox` feeds them to the worker's rules.
"""

from __future__ import annotations

import re
import secrets as _secrets
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from engine.api import errors
from engine.api.pagination import Page
from engine.api.route import STORE, Route
from engine.api.storage import DEVICES, EVENTS, PRODUCTS, Delete, Op, Put, Store, Stored
from engine.config.errors import pydantic_message
from engine.sources.device_registry import Device, Product, RegistryConfig

# ------------------------------------------------------------------ request bodies (seed tables)

_ID = re.compile(r"[A-Za-z0-9_-]{1,36}")
_DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME = re.compile(r"[\w?'#(),.&%@!-]+")
_TAG_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TAG_VALUE = re.compile(r"[A-Za-z0-9_.-]{0,128}")
MAX_TAGS = 10   # per device (1.4.13)


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise PydanticCustomError("pattern", what)
        return value
    return check


Id36 = Annotated[str, AfterValidator(_pattern(_ID, "must be 1 to 36 letters, digits, _ or -"))]
DeviceIdText = Annotated[str, AfterValidator(
    _pattern(_DEVICE_ID, "must be 1 to 128 letters, digits, _ or -"))]
NodeId = Annotated[str, AfterValidator(
    _pattern(_NODE_ID, "must be 1 to 64 letters, digits, _ or -"))]
ObjectName = Annotated[str, AfterValidator(
    _pattern(_NAME, "only letters, digits and _?'#(),.&%@!- are allowed"))]
TagKey = Annotated[str, AfterValidator(
    _pattern(_TAG_KEY, "must be 1 to 64 letters, digits, _, . or -"))]
TagValue = Annotated[str, AfterValidator(
    _pattern(_TAG_VALUE, "must be at most 128 letters, digits, _, . or -"))]


class _Body(BaseModel):
    # strict: `"yes"` is not a Boolean, as for the routing-rule API.
    model_config = ConfigDict(extra="forbid", strict=True, hide_input_in_errors=True)


class ServiceCapability(BaseModel):
    """Table 1-4; properties/commands/events kept as given (the engine does
    not interpret the product model: rules read what devices report)."""

    model_config = ConfigDict(extra="allow", strict=True, hide_input_in_errors=True)

    service_id: str = Field(min_length=1, max_length=64)
    service_type: str = Field(min_length=1, max_length=64)
    properties: list[dict[str, Any]] | None = Field(default=None, max_length=500)
    commands: list[dict[str, Any]] | None = Field(default=None, max_length=500)
    events: list[dict[str, Any]] | None = Field(default=None, max_length=500)
    description: str | None = Field(default=None, max_length=128)
    option: Literal["Master", "Mandatory", "Optional"] | None = None


Protocol = Literal["MQTT", "CoAP", "HTTP", "HTTPS", "Modbus", "ONVIF", "OPC-UA", "OPC-DA", "Other"]


class ProductCreate(_Body):
    """AddProduct (Table 1-3)."""

    product_id: Id36 | None = None
    name: ObjectName = Field(max_length=64)
    device_type: ObjectName = Field(max_length=32)
    protocol_type: Protocol
    data_format: Literal["json", "binary"] = "json"
    service_capabilities: list[ServiceCapability] = Field(max_length=500)
    manufacturer_name: str | None = Field(default=None, max_length=32)
    industry: str | None = Field(default=None, max_length=64)
    description: str | None = Field(default=None, max_length=128)
    app_id: Id36 | None = None


class ProductUpdate(_Body):
    """UpdateProduct (Table 1-35): the given fields replace the stored ones."""

    app_id: Id36 | None = None
    name: ObjectName | None = Field(default=None, max_length=64)
    device_type: ObjectName | None = Field(default=None, max_length=32)
    protocol_type: Protocol | None = None
    data_format: Literal["json", "binary"] | None = None
    service_capabilities: list[ServiceCapability] | None = Field(default=None, max_length=500)
    manufacturer_name: str | None = Field(default=None, max_length=32)
    industry: str | None = Field(default=None, max_length=64)
    description: str | None = Field(default=None, max_length=128)


class AuthInfo(_Body):
    """AuthInfo (Table 1-55)."""

    auth_type: Literal["SECRET", "CERTIFICATES"] = "SECRET"
    secret: str | None = Field(default=None, min_length=8, max_length=32)
    fingerprint: str | None = Field(default=None, min_length=40, max_length=64)
    secure_access: bool = False
    timeout: int = Field(default=0, ge=0, le=2147483647)


class AuthInfoUpdate(_Body):
    """AuthInfoWithoutSecret (Table 1-75)."""

    secure_access: bool | None = None
    timeout: int | None = Field(default=None, ge=0, le=2147483647)


class DeviceCreate(_Body):
    """AddDevice (Table 1-54). `shadow` is accepted and ignored: the engine
    keeps no device shadow."""

    device_id: DeviceIdText | None = None
    node_id: NodeId
    device_name: ObjectName | None = Field(default=None, max_length=256)
    product_id: Id36
    auth_info: AuthInfo | None = None
    description: str | None = Field(default=None, max_length=2048)
    gateway_id: DeviceIdText | None = None
    app_id: Id36 | None = None
    extension_info: dict[str, Any] | None = None
    shadow: list[dict[str, Any]] | None = None


class DeviceUpdate(_Body):
    """UpdateDevice (Table 1-74)."""

    device_name: ObjectName | None = Field(default=None, max_length=256)
    description: str | None = Field(default=None, max_length=2048)
    extension_info: dict[str, Any] | None = None
    auth_info: AuthInfoUpdate | None = None


class ResetSecret(_Body):
    """ResetDeviceSecret (Table 1-84)."""

    secret: str | None = Field(default=None, min_length=8, max_length=32)
    force_disconnect: bool = False
    secret_type: Literal["PRIMARY", "SECONDARY"] = "PRIMARY"


class TagV5(_Body):
    """TagV5DTO (Table 1-496)."""

    tag_key: TagKey
    tag_value: TagValue | None = None


def _unique_keys(keys: list[str]) -> list[str]:
    if len(set(keys)) != len(keys):
        raise ValueError("each tag key may appear once")
    return keys


class BindTags(_Body):
    """BindTagsDTO (Table 1-495)."""

    resource_type: Literal["device"]
    resource_id: DeviceIdText
    tags: list[TagV5] = Field(min_length=1, max_length=MAX_TAGS)

    @field_validator("tags")
    @classmethod
    def _unique(cls, tags: list[TagV5]) -> list[TagV5]:
        _unique_keys([t.tag_key for t in tags])
        return tags


class UnbindTags(_Body):
    """UnbindTagsDTO (Table 1-499)."""

    resource_type: Literal["device"]
    resource_id: DeviceIdText
    tag_keys: Annotated[list[TagKey], AfterValidator(_unique_keys)] = Field(
        min_length=1, max_length=MAX_TAGS)


class QueryByTags(_Body):
    """QueryResourceByTagsDTO (Table 1-503): resources with any of the tags."""

    resource_type: Literal["device"]
    tags: list[TagV5] = Field(min_length=1, max_length=MAX_TAGS)


# ------------------------------------------------------------------ errors (seed 1.7.3)

def product_not_found() -> errors.ApiError:
    return errors.ApiError(404, "IOTDA.013000",
                           "The product does not exist or does not belong to the application.")


def device_not_found() -> errors.ApiError:
    return errors.ApiError(404, "IOTDA.014051", "Invalid input. The device does not exist or "
                           "does not belong to the application.")


def _parse(model: type[_Body], data: Mapping[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {pydantic_message(e)}"
                           for e in exc.errors())
        raise errors.invalid_input(detail) from None


def _extension_size(info: dict[str, Any] | None) -> None:
    if info is not None and len(orjson.dumps(info)) > 1024:
        raise errors.ApiError(400, "IOTDA.014035", "Invalid input. The size of extension_info "
                              "has reached or exceeded 1 KB.")


# ------------------------------------------------------------------ representations


def _compact(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ")


def present_product(body: Mapping[str, Any], *, summary: bool = False) -> dict[str, Any]:
    """ProductSummary (Table 1-21) or the full product (Table 1-10)."""
    keys: tuple[str, ...] = ("app_id", "product_id", "name", "device_type", "protocol_type",
                             "data_format", "manufacturer_name", "industry", "description",
                             "create_time")
    if not summary:
        keys += ("service_capabilities",)
    return {k: body[k] for k in keys if body.get(k) is not None}


def present_device(body: Mapping[str, Any], products: Mapping[str, Mapping[str, Any]], *,
                   summary: bool = False) -> dict[str, Any]:
    """QueryDeviceSimplify (Table 1-64) or the device (Table 1-57). The secret
    is never shown (only create and resetSecret answer it, once)."""
    product = products.get(body["product_id"], {})
    out: dict[str, Any] = {
        "app_id": body.get("app_id") or product.get("app_id"),
        "device_id": body["device_id"],
        "node_id": body["node_id"],
        "gateway_id": body.get("gateway_id") or body["device_id"],
        "device_name": body.get("device_name"),
        "node_type": "ENDPOINT" if body.get("gateway_id") else "GATEWAY",
        "description": body.get("description"),
        "product_id": body["product_id"],
        "product_name": product.get("name"),
        "status": "FROZEN" if body.get("frozen") else "INACTIVE",
        "tags": body.get("tags") or [],
    }
    if not summary:
        out["auth_info"] = {k: v for k, v in body.get("auth_info", {}).items()
                            if k not in ("secret", "secondary_secret")}
        out["create_time"] = body.get("create_time")
        out["extension_info"] = body.get("extension_info")
    return {k: v for k, v in out.items() if v is not None}


def registry_device(body: Mapping[str, Any]) -> Device:
    """The registry record of a stored device (what the device sources use)."""
    auth = body.get("auth_info") or {}
    return Device.model_validate({
        "device_id": body["device_id"], "node_id": body["node_id"],
        "product_id": body["product_id"], "app_id": body.get("app_id"),
        "gateway_id": body.get("gateway_id"), "device_name": body.get("device_name"),
        "tags": body.get("tags") or [], "secret": auth.get("secret"),
        "frozen": bool(body.get("frozen")), "description": body.get("description")})


def registry_product(body: Mapping[str, Any]) -> Product:
    return Product.model_validate({k: body.get(k) for k in Product.model_fields
                                   if body.get(k) is not None})


def registry_of(records: list[Stored]) -> RegistryConfig | None:
    """The project's products and devices as a `registry:` section (None: none stored)."""
    products = [registry_product(r.body) for r in records if r.kind == PRODUCTS]
    devices = [registry_device(r.body) for r in records if r.kind == DEVICES]
    if not products and not devices:
        return None
    return RegistryConfig(products=products, devices=devices)


# ------------------------------------------------------------------ notifications (seed 1.4.9)


def _notification(resource: str, event: str, *, body: dict[str, Any] | None = None,
                  header: dict[str, Any] | None = None) -> dict[str, Any]:
    now = datetime.now(UTC)
    data: dict[str, Any] = {}
    if header is not None:
        data["header"] = header
    if body is not None:
        data["body"] = body
    return {"resource": resource, "event": event, "event_time": _compact(now),
            "event_time_ms": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
            "request_id": str(uuid.uuid4()), "notify_data": data}


def _event(notification: dict[str, Any]) -> Put:
    return Put(EVENTS, notification["request_id"], {"notification": notification})


def _device_header(body: Mapping[str, Any], products: Mapping[str, Mapping[str, Any]]
                   ) -> dict[str, Any]:
    presented = present_device(body, products, summary=True)
    return {k: presented[k] for k in ("app_id", "device_id", "node_id", "product_id",
                                      "gateway_id", "tags") if k in presented}


# ------------------------------------------------------------------ plans (for Store.change)


def _products(records: list[Stored]) -> dict[str, dict[str, Any]]:
    return {r.id: r.body for r in records if r.kind == PRODUCTS}


def _devices(records: list[Stored]) -> dict[str, dict[str, Any]]:
    return {r.id: r.body for r in records if r.kind == DEVICES}


def _find(records: list[Stored], kind: str, object_id: str) -> dict[str, Any]:
    for r in records:
        if r.kind == kind and r.id == object_id:
            return r.body
    raise product_not_found() if kind == PRODUCTS else device_not_found()


Plan = Callable[[list[Stored]], list[Op]]


def plan_create_product(request: ProductCreate, max_products: int) -> Plan:
    body = request.model_dump(mode="json", exclude_none=True)
    body["product_id"] = body.get("product_id") or uuid.uuid4().hex[:24]
    body["create_time"] = _compact(datetime.now(UTC))

    def plan(records: list[Stored]) -> list[Op]:
        products = _products(records)
        if body["product_id"] in products:
            raise errors.ApiError(400, "IOTDA.013008",
                                  "The product ID has been used in the same application.")
        if len(products) >= max_products:
            raise errors.ApiError(403, "IOTDA.013006", "The number of products in the "
                                  "application has reached the upper limit.")
        return [Put(PRODUCTS, body["product_id"], body),
                _event(_notification("product", "create", body=present_product(body)))]

    return plan


def plan_update_product(product_id: str, request: ProductUpdate) -> Plan:
    given = request.model_dump(mode="json", exclude_none=True)

    def plan(records: list[Stored]) -> list[Op]:
        body = {**_find(records, PRODUCTS, product_id), **given}
        return [Put(PRODUCTS, product_id, body),
                _event(_notification("product", "update", body=present_product(body)))]

    return plan


def plan_delete_product(product_id: str) -> Plan:
    def plan(records: list[Stored]) -> list[Op]:
        body = _find(records, PRODUCTS, product_id)
        if any(d["product_id"] == product_id for d in _devices(records).values()):
            raise errors.ApiError(403, "IOTDA.013007", "Operation not allowed. The product is "
                                  "in use and cannot be deleted.")
        deleted = {k: body[k] for k in ("app_id", "product_id", "name") if body.get(k)}
        return [Delete(PRODUCTS, product_id),
                _event(_notification("product", "delete", body=deleted))]

    return plan


def plan_create_device(request: DeviceCreate, max_devices: int) -> tuple[Plan, str | None]:
    """The plan, and the secret to answer once (generated when not given)."""
    _extension_size(request.extension_info)
    body = request.model_dump(mode="json", exclude_none=True, exclude={"shadow"})
    body["device_id"] = body.get("device_id") or f"{request.product_id}_{request.node_id}"
    auth = body.setdefault("auth_info", AuthInfo().model_dump(mode="json", exclude_none=True))
    secret: str | None = None
    if auth.get("auth_type", "SECRET") == "SECRET":
        secret = auth.setdefault("secret", _secrets.token_hex(16))
    body["create_time"] = _compact(datetime.now(UTC))
    body["frozen"] = False

    def plan(records: list[Stored]) -> list[Op]:
        products, devices = _products(records), _devices(records)
        if body["product_id"] not in products:
            raise errors.ApiError(400, "IOTDA.013000", "The product does not exist or does not "
                                  "belong to the application.")
        if body["device_id"] in devices:
            raise errors.ApiError(400, "IOTDA.014031", "Invalid input. The device already exists.")
        if any(d["node_id"] == body["node_id"] and d["product_id"] == body["product_id"]
               for d in devices.values()):
            raise errors.ApiError(400, "IOTDA.014008", "Invalid input. Duplicated nodeId.")
        gateway = body.get("gateway_id")
        if gateway is not None and gateway not in devices:
            raise errors.ApiError(400, "IOTDA.014043", "Invalid input. The gateway does not exist.")
        if len(devices) >= max_devices:
            raise errors.ApiError(403, "IOTDA.014019", "Operation not allowed. The number of "
                                  "devices of the user has reached the upper limit.")
        return [Put(DEVICES, body["device_id"], body),
                _event(_notification("device", "create", body=present_device(body, products)))]

    return plan, secret


def _device_change(device_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Plan:
    """Replace a device by `change(old)` and notify `device`/`update`."""
    def plan(records: list[Stored]) -> list[Op]:
        body = change(dict(_find(records, DEVICES, device_id)))
        return [Put(DEVICES, device_id, body),
                _event(_notification("device", "update",
                                     body=present_device(body, _products(records))))]
    return plan


def plan_update_device(device_id: str, request: DeviceUpdate) -> Plan:
    _extension_size(request.extension_info)
    given = request.model_dump(mode="json", exclude_none=True, exclude={"auth_info"})
    auth = request.auth_info.model_dump(exclude_none=True) if request.auth_info else {}

    def change(old: dict[str, Any]) -> dict[str, Any]:
        return {**old, **given, "auth_info": {**old.get("auth_info", {}), **auth}}

    return _device_change(device_id, change)


def plan_freeze(device_id: str, frozen: bool) -> Plan:
    return _device_change(device_id, lambda old: {**old, "frozen": frozen})


def plan_bind_tags(request: BindTags) -> Plan:
    """Add or overwrite tags (a given key replaces that key's value)."""
    for tag in request.tags:
        if tag.tag_key.startswith("iot_"):
            raise errors.ApiError(400, "IOTDA.004002", f"Invalid input. The tag_key "
                                  f"{tag.tag_key} cannot start with 'iot_'.")
    given = {t.tag_key: t.model_dump(exclude_none=True) for t in request.tags}

    def change(old: dict[str, Any]) -> dict[str, Any]:
        tags = {t["tag_key"]: t for t in old.get("tags") or []}
        tags.update(given)
        if len(tags) > MAX_TAGS:
            raise errors.ApiError(403, "IOTDA.004001", "Operation not allowed. Max bindable "
                                  f"tags ({MAX_TAGS}) reached for the device.")
        return {**old, "tags": list(tags.values())}

    return _device_change(request.resource_id, change)


def plan_unbind_tags(request: UnbindTags) -> Plan:
    def change(old: dict[str, Any]) -> dict[str, Any]:
        tags = {t["tag_key"]: t for t in old.get("tags") or []}
        for key in request.tag_keys:
            if tags.pop(key, None) is None:
                raise errors.ApiError(400, "IOTDA.004003",
                                      f"Invalid input. The tag_key {key} does not exist.")
        return {**old, "tags": list(tags.values())}

    return _device_change(request.resource_id, change)


def plan_reset_secret(device_id: str, request: ResetSecret) -> tuple[Plan, str]:
    secret = request.secret or _secrets.token_hex(16)
    key = "secret" if request.secret_type == "PRIMARY" else "secondary_secret"

    def plan(records: list[Stored]) -> list[Op]:
        old = _find(records, DEVICES, device_id)
        auth = old.get("auth_info", {})
        if auth.get("auth_type", "SECRET") != "SECRET":
            raise errors.ApiError(403, "IOTDA.014006",
                                  "Operation not allowed. The secret cannot be reset.")
        # No notification: a secret is not part of what IoTDA pushes.
        return [Put(DEVICES, device_id, {**old, "auth_info": {**auth, key: secret}})]

    return plan, secret


def plan_delete_device(device_id: str) -> Plan:
    def plan(records: list[Stored]) -> list[Op]:
        body = _find(records, DEVICES, device_id)
        if any(d.get("gateway_id") == device_id for d in _devices(records).values()):
            raise errors.ApiError(403, "IOTDA.014024", "Operation not allowed. The device "
                                  "already has an endpoint.")
        header = _device_header(body, _products(records))
        return [Delete(DEVICES, device_id), _event(_notification("device", "delete",
                                                                 header=header))]

    return plan


# ------------------------------------------------------------------ HTTP

BASE = "/v5/iot/{project_id}"
MAX_PRODUCTS = 1000
MAX_DEVICES = 100_000


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise errors.unsupported_media_type()
    try:
        data = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        raise errors.bad_format("The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise errors.bad_format("The body must be a JSON object.")
    return data


def _store(request: web.Request) -> Store:
    return request.app[STORE]


def _project(request: web.Request) -> str:
    return request.match_info["project_id"]


def _path_id(request: web.Request, name: str, regex: re.Pattern[str]) -> str:
    value = request.match_info[name]
    if not regex.fullmatch(value):
        raise errors.invalid_input(f"The parameter '{name}' is malformed.")
    return value


async def _change(request: web.Request, plan: Plan) -> list[Stored]:
    return await _store(request).change(_project(request), plan)


async def create_product(request: web.Request) -> web.Response:
    product = _parse(ProductCreate, await _body(request))
    (written, _) = await _change(request, plan_create_product(product, MAX_PRODUCTS))
    return _json(present_product(written.body), 201)


def _page(request: web.Request, items: list[tuple[int, dict[str, Any]]], key: str
          ) -> web.Response:
    page = Page.from_query(request.query)
    shown, count, marker = page.apply(items)
    return _json({key: shown, "page": {"count": count, "marker": marker}})


def _filters(request: web.Request, names: tuple[str, ...]) -> dict[str, str]:
    given = {n: request.query[n] for n in names if request.query.get(n)}
    for name, value in given.items():
        if len(value) > 256:
            raise errors.invalid_input(f"The parameter '{name}' is too long.")
    return given


async def list_products(request: web.Request) -> web.Response:
    wanted = _filters(request, ("app_id", "product_name"))
    records = await _store(request).load(_project(request))
    items = [(r.seq, present_product(r.body, summary=True)) for r in records
             if r.kind == PRODUCTS
             and wanted.get("app_id", r.body.get("app_id")) == r.body.get("app_id")
             and wanted.get("product_name", r.body["name"]) == r.body["name"]]
    return _page(request, items, "products")


async def show_product(request: web.Request) -> web.Response:
    product_id = _path_id(request, "product_id", _ID)
    records = await _store(request).load(_project(request))
    return _json(present_product(_find(records, PRODUCTS, product_id)))


async def update_product(request: web.Request) -> web.Response:
    product_id = _path_id(request, "product_id", _ID)
    update = _parse(ProductUpdate, await _body(request))
    (written, _) = await _change(request, plan_update_product(product_id, update))
    return _json(present_product(written.body))


async def delete_product(request: web.Request) -> web.Response:
    await _change(request, plan_delete_product(_path_id(request, "product_id", _ID)))
    return web.Response(status=204)


async def create_device(request: web.Request) -> web.Response:
    device = _parse(DeviceCreate, await _body(request))
    plan, secret = plan_create_device(device, MAX_DEVICES)
    (written, _) = await _change(request, plan)
    records = await _store(request).load(_project(request))
    out = present_device(written.body, _products(records))
    if secret is not None:
        out["auth_info"]["secret"] = secret  # shown once, as IoTDA does on create
    return _json(out, 201)


async def list_devices(request: web.Request) -> web.Response:
    wanted = _filters(request, ("product_id", "gateway_id", "node_id", "device_name", "app_id"))
    records = await _store(request).load(_project(request))
    products = _products(records)
    items = []
    for r in records:
        if r.kind != DEVICES:
            continue
        item = present_device(r.body, products, summary=True)
        # gateway_id: the children of that gateway (a gateway shows itself as its gateway).
        if all((r.body.get(name) if name == "gateway_id" else item.get(name)) == value
               for name, value in wanted.items()):
            items.append((r.seq, item))
    return _page(request, items, "devices")


async def show_device(request: web.Request) -> web.Response:
    device_id = _path_id(request, "device_id", _DEVICE_ID)
    records = await _store(request).load(_project(request))
    return _json(present_device(_find(records, DEVICES, device_id), _products(records)))


async def update_device(request: web.Request) -> web.Response:
    device_id = _path_id(request, "device_id", _DEVICE_ID)
    update = _parse(DeviceUpdate, await _body(request))
    (written, _) = await _change(request, plan_update_device(device_id, update))
    records = await _store(request).load(_project(request))
    return _json(present_device(written.body, _products(records)))


async def delete_device(request: web.Request) -> web.Response:
    await _change(request, plan_delete_device(_path_id(request, "device_id", _DEVICE_ID)))
    return web.Response(status=204)


async def device_action(request: web.Request) -> web.Response:
    device_id = _path_id(request, "device_id", _DEVICE_ID)
    if request.query.get("action_id") != "resetSecret":
        raise errors.invalid_input("The parameter 'action_id' must be resetSecret.")
    reset = _parse(ResetSecret, await _body(request))
    plan, secret = plan_reset_secret(device_id, reset)
    await _change(request, plan)
    return _json({"device_id": device_id, "secret": secret, "secret_type": reset.secret_type})


def _freeze(frozen: bool) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        await _change(request, plan_freeze(_path_id(request, "device_id", _DEVICE_ID), frozen))
        return web.Response(status=200)
    return handler


async def bind_tags(request: web.Request) -> web.Response:
    await _change(request, plan_bind_tags(_parse(BindTags, await _body(request))))
    return web.Response(status=200)


async def unbind_tags(request: web.Request) -> web.Response:
    await _change(request, plan_unbind_tags(_parse(UnbindTags, await _body(request))))
    return web.Response(status=200)


async def query_by_tags(request: web.Request) -> web.Response:
    query = _parse(QueryByTags, await _body(request))
    page = Page.from_query(request.query)   # checked before the store is read
    wanted = [(t.tag_key, t.tag_value) for t in query.tags]
    records = await _store(request).load(_project(request))
    items = []
    for r in records:
        if r.kind != DEVICES:
            continue
        have = {t["tag_key"]: t.get("tag_value") for t in r.body.get("tags") or []}
        if any(k in have and (v is None or have[k] == v) for k, v in wanted):
            items.append((r.seq, {"resource_id": r.id}))
    shown, count, marker = page.apply(items)
    return _json({"resources": shown, "page": {"count": count, "marker": marker}})


ROUTES: list[Route] = [
    Route("POST", f"{BASE}/products", create_product, "Create a product", "createProduct", body=ProductCreate),
    Route("GET", f"{BASE}/products", list_products, "List products", "listProducts"),
    Route("GET", f"{BASE}/products/{{product_id}}", show_product, "Query a product",
          "showProduct"),
    Route("PUT", f"{BASE}/products/{{product_id}}", update_product, "Modify a product",
          "updateProduct", body=ProductUpdate),
    Route("DELETE", f"{BASE}/products/{{product_id}}", delete_product, "Delete a product",
          "deleteProduct"),
    Route("POST", f"{BASE}/devices", create_device, "Create a device", "createDevice", body=DeviceCreate),
    Route("GET", f"{BASE}/devices", list_devices, "List devices", "listDevices"),
    Route("GET", f"{BASE}/devices/{{device_id}}", show_device, "Query a device", "showDevice"),
    Route("PUT", f"{BASE}/devices/{{device_id}}", update_device, "Modify a device",
          "updateDevice", body=DeviceUpdate),
    Route("DELETE", f"{BASE}/devices/{{device_id}}", delete_device, "Delete a device",
          "deleteDevice"),
    Route("POST", f"{BASE}/devices/{{device_id}}/action", device_action,
          "Reset a device secret (action_id=resetSecret)", "resetDeviceSecret", body=ResetSecret),
    Route("POST", f"{BASE}/devices/{{device_id}}/freeze", _freeze(True), "Freeze a device",
          "freezeDevice"),
    Route("POST", f"{BASE}/devices/{{device_id}}/unfreeze", _freeze(False), "Unfreeze a device",
          "unfreezeDevice"),
    Route("POST", f"{BASE}/tags/bind-resource", bind_tags, "Bind tags to a device",
          "tagDevice", body=BindTags),
    Route("POST", f"{BASE}/tags/unbind-resource", unbind_tags, "Unbind tags from a device",
          "untagDevice", body=UnbindTags),
    Route("POST", f"{BASE}/tags/query-resources", query_by_tags,
          "List the devices with any of the tags", "listResourcesByTags", body=QueryByTags),
]
