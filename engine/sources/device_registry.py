"""The product and device registry of a rule file (`registry:`).

IoTDA fills a notification's header (`product_id`, `app_id`, `node_id`,
`gateway_id`, `tags`) from its own product and device records (API reference
1.4.1 Product Management, 1.4.2 Device Management). A self-hosted engine that
takes device traffic directly (the MQTT source) needs the same records; this
section declares them, with IoTDA's field names:

    registry:
      unknown_devices: reject          # or `accept`: a bare header (device_id only)
      products:
        - {product_id: thermo, name: Thermometer, app_id: app1}
      devices:
        - {device_id: thermo_n1, node_id: n1, product_id: thermo,
           tags: [{tag_key: site, tag_value: north}], secret: s3cret}

`Registry` is the lookup built from it (one dict access per device). It
lives with the sources that use it (mqtt, device_api); `config.models` takes
`RegistryConfig` from here, as it takes the sources' options models.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, SecretStr, model_validator
from pydantic_core import PydanticCustomError

from engine.schema import StrictModel as _Model

# IoTDA device ids: "a maximum of 128 characters, letters, digits, _ and -"
# (platform-made ones are `<product_id>_<node_id>`). MQTT topic levels must
# not contain `/`, `+` or `#`, which this alphabet already excludes.
_DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _check_device_id(value: str) -> str:
    if not _DEVICE_ID.fullmatch(value):
        raise PydanticCustomError("device_id", "must be 1 to 128 letters, digits, _ or -")
    return value


DeviceId = Annotated[str, AfterValidator(_check_device_id)]


class Tag(_Model):
    """IoTDA TagV5DTO: the header's `tags` items."""

    tag_key: str = Field(min_length=1, max_length=64)
    tag_value: str | None = Field(default=None, max_length=128)


class Product(_Model):
    """The fields of an IoTDA product that notifications carry."""

    product_id: str = Field(min_length=1, max_length=36)
    name: str | None = Field(default=None, max_length=64)
    app_id: str | None = Field(default=None, max_length=36)
    """The resource space (application) the product belongs to."""
    device_type: str | None = Field(default=None, max_length=32)
    protocol_type: str | None = None
    data_format: Literal["json", "binary"] = "json"
    manufacturer_name: str | None = None
    industry: str | None = None
    description: str | None = Field(default=None, max_length=2048)


class Device(_Model):
    """The fields of an IoTDA device that notifications carry, plus how it
    may connect (`secret`, `frozen`)."""

    device_id: DeviceId
    node_id: str | None = Field(default=None, max_length=64)
    product_id: str = Field(min_length=1, max_length=36)
    app_id: str | None = Field(default=None, max_length=36)
    """Default: the product's app_id."""
    gateway_id: DeviceId | None = None
    """The directly connected device a child device reports through (for a
    directly connected device: none, and the header says its own id)."""
    device_name: str | None = Field(default=None, max_length=256)
    tags: list[Tag] = Field(default_factory=list, max_length=10)
    secret: SecretStr | None = None
    """The device secret (device-side authentication)."""
    frozen: bool = False
    """A frozen device's traffic is refused (dead-lettered), as in IoTDA."""
    description: str | None = Field(default=None, max_length=2048)


class RegistryConfig(_Model):
    unknown_devices: Literal["reject", "accept"] = "reject"
    """Traffic naming a device that is not registered: dead-lettered
    (`reject`), or turned into notifications with a bare header (`accept`)."""
    products: list[Product] = Field(default_factory=list)
    devices: list[Device] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> RegistryConfig:
        products = {p.product_id for p in self.products}
        if len(products) != len(self.products):
            raise PydanticCustomError("duplicate", "a product_id is registered more than once")
        devices = {d.device_id for d in self.devices}
        if len(devices) != len(self.devices):
            raise PydanticCustomError("duplicate", "a device_id is registered more than once")
        for d in self.devices:
            if d.product_id not in products:
                raise PydanticCustomError(
                    "unknown_product", "device {device}: product_id {product} is not registered",
                    {"device": d.device_id, "product": d.product_id})
            if d.gateway_id is not None and d.gateway_id not in devices:
                raise PydanticCustomError(
                    "unknown_gateway", "device {device}: gateway_id {gateway} is not registered",
                    {"device": d.device_id, "gateway": d.gateway_id})
        return self


class Registry:
    """Header lookups for device traffic: device id -> the notification
    header IoTDA would send (computed once, at load)."""

    def __init__(self, config: RegistryConfig | None = None) -> None:
        self.replace(config)

    def replace(self, config: RegistryConfig | None) -> None:
        """Take `config`'s records (a reload, an API change). The sources
        hold this object, so it is changed in place: every lookup after
        this call sees the new records, none sees half of them (the
        attributes are swapped without an await in between)."""
        config = config or RegistryConfig()
        products = {p.product_id: p for p in config.products}
        headers: dict[str, dict[str, Any]] = {}
        for d in config.devices:
            app_id = d.app_id or products[d.product_id].app_id
            header: dict[str, Any] = {"device_id": d.device_id, "product_id": d.product_id}
            if app_id is not None:
                header["app_id"] = app_id
            if d.node_id is not None:
                header["node_id"] = d.node_id
            header["gateway_id"] = d.gateway_id or d.device_id
            if d.tags:
                header["tags"] = [t.model_dump(exclude_none=True) for t in d.tags]
            headers[d.device_id] = header
        by_name: dict[tuple[str, str], str] = {}
        for d in config.devices:
            if d.node_id is not None:
                by_name.setdefault((d.product_id, d.node_id), d.device_id)
        self.accept_unknown = config.unknown_devices == "accept"
        self.products = products
        self.devices = {d.device_id: d for d in config.devices}
        self._headers = headers
        self._by_name = by_name

    def header(self, device_id: str) -> dict[str, Any] | str:
        """The notification header of `device_id` (a fresh dict), or the
        reason its traffic is refused (a str)."""
        header = self._headers.get(device_id)
        if header is None:
            if self.accept_unknown:
                return {"device_id": device_id, "gateway_id": device_id}
            return f"unknown device {device_id!r} (not in the registry)"
        if self.devices[device_id].frozen:
            return f"device {device_id!r} is frozen"
        return dict(header)

    def named_header(self, product_key: str, device_name: str) -> dict[str, Any] | str:
        """Header of the device an Alibaba topic names (`/{ProductKey}/{DeviceName}/…`):
        ProductKey is a product_id, DeviceName a node_id in that product."""
        device_id = self._by_name.get((product_key, device_name))
        if device_id is None:
            if self.accept_unknown:
                device_id = f"{product_key}_{device_name}"   # IoTDA's generated form
                return {"device_id": device_id, "product_id": product_key,
                        "node_id": device_name, "gateway_id": device_id}
            return (f"unknown device {device_name!r} of product {product_key!r} "
                    "(not in the registry)")
        return self.header(device_id)

    def child_header(self, gateway_id: str, device_id: str) -> dict[str, Any] | str:
        """Header of a child device reported by `gateway_id`, or the reason
        the report is refused (the child belongs to another gateway)."""
        header = self.header(device_id)
        if isinstance(header, str):
            return header
        device = self.devices.get(device_id)
        if device is None:  # accepted unknown device: it reports through this gateway
            header["gateway_id"] = gateway_id
        elif device.gateway_id != gateway_id:
            return f"device {device_id!r} is not a child device of gateway {gateway_id!r}"
        return header
