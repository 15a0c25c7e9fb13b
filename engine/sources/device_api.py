"""The HTTPS device API (seed §3): devices authenticate, then report.

`sources: [{device_api: {listen, tls, token_ttl, max_inflight}}]`; the devices
and their secrets come from `registry:` (lent by the worker at build time,
`SourceContext`), TLS from `tls` (`ListenerTls`, as the HTTP source's).

  POST /v5/device-auth                                     §3.3.1 -> {access_token, expires_in}
  POST /v5/devices/{id}/sys/messages/up                    §3.4.1
  POST /v5/devices/{id}/sys/properties/report              §3.5.1
  POST /v5/devices/{id}/sys/gateway/sub-devices/properties/report   §3.5.2

Authentication: `password` = HMAC-SHA256 keyed by `timestamp` (YYYYMMDDHH)
of the device secret from the registry, hex. `sign_type` 1 also requires the
timestamp to be within an hour of the engine's UTC time; 0 does not. A
token is valid for `token_ttl` seconds; when a device authenticates again,
its previous token stays valid for 30 more seconds at most (§3.3.1).

Reports need the device's own token in the `access_token` header, checked
before the body is read. A report becomes notifications exactly as the same
payload on the device's MQTT topic would (engine.sources.uplink); it is
answered 200 only once the pipeline acked them (every match delivered or
set aside), so a device that gets anything else may resend. Errors use
IoTDA's shape `{"error_code", "error_msg"}`:

  400 IOTDA.00006   invalid input (bad JSON, missing members, bad values)
  400 IOTDA.021104  a child device unknown or not the gateway's
  401 IOTDA.00002   authentication failed (unknown or frozen device, no
                    secret, wrong password, timestamp skew with sign_type 1)
  403 IOTDA.00004   missing, unknown, expired or another device's token
  403 IOTDA.021105  body over 1 MB
  503               shutting down, or not processed within `timeout`

A successful authentication also emits `device.status`/`update` ONLINE for
the device (the pipeline's ack comes before the answer). Refused requests
are counted by HTTP status in `rejected` (engine_source_rejected_total).
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import hmac
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from pydantic import Field

from engine.schema import Listen, ListenerTls, parse_listen
from engine.sources.base import Batch, Source, SourceContext, SourceOptions
from engine.sources.device_registry import Registry
from engine.sources.listen import start_site
from engine.sources.listener_auth import server_ssl_context
from engine.sources.registry import register
from engine.sources.uplink import Uplink, receipt_times

MAX_BODY = 1 << 20          # §3.5.1: "cannot exceed 1 MB"
OLD_TOKEN_GRACE = 30.0      # §3.3.1
_TIMESTAMP = re.compile(r"\d{10}")
_PASSWORD = re.compile(r"[0-9a-fA-F]{64}")
_DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

_REPORTS = {
    "messages/up": "sys/messages/up",
    "properties/report": "sys/properties/report",
    "gateway/sub-devices/properties/report": "sys/gateway/sub_devices/properties/report",
}


def password_for(secret: str, timestamp: str) -> str:
    """What a device sends as `password` (§3.3.1)."""
    return hmac.new(timestamp.encode(), secret.encode(), hashlib.sha256).hexdigest()


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, content_type="application/json",
                        body=orjson.dumps({"error_code": code, "error_msg": message}))


def _invalid(detail: str) -> web.Response:
    return _error(400, "IOTDA.00006", f"Invalid input data. {detail}".strip())


_UNAUTHORIZED = ("IOTDA.00002", "The request is unauthorized.")
_BAD_TOKEN = ("IOTDA.00004", "Invalid access token.")


class DeviceApiOptions(SourceOptions):
    """IoTDA's HTTPS device API: devices authenticate with their registry
    secret, then report properties and messages."""

    listen: Listen = "127.0.0.1:8443"
    tls: ListenerTls | None = None
    """The listener's certificate (HTTPS; IoTDA's device API is HTTPS only).
    Without it the API is plain HTTP: only behind a TLS-terminating proxy."""
    token_ttl: int = Field(default=86399, ge=60, le=7 * 86400)
    """Seconds an access token is valid."""
    max_inflight: int = Field(default=1000, ge=1, le=100_000)
    """Reports being processed at once (429 above that)."""


Handler = Callable[[web.Request], Awaitable[web.Response]]


@register
class DeviceApiSource(Source):
    kind = "device_api"
    Options = DeviceApiOptions

    def __init__(self, *, registry: Registry | None = None, listen: str = "127.0.0.1:8443",
                 token_ttl: float = 86399, timeout: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None, max_inflight: int = 1000,
                 name: str | None = None) -> None:
        super().__init__(name)
        host, self.port = parse_listen(listen)
        self.host = host or "127.0.0.1"
        self.registry = registry = registry or Registry()
        self.uplink = Uplink(registry)
        self.token_ttl = token_ttl
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.max_inflight = max_inflight
        self._tokens: dict[str, tuple[str, float]] = {}   # token -> (device, expires at)
        self._latest: dict[str, str] = {}                 # device -> its newest token
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue()
        self._inflight = 0
        self._stopping = False
        self._runner: web.AppRunner | None = None
        self.clock = time.time  # tests move it
        # Refused requests by HTTP status (engine_source_rejected_total).
        self.rejected = {"400": 0, "401": 0, "403": 0, "404": 0, "429": 0, "503": 0}

    @classmethod
    def from_options(cls, options: DeviceApiOptions, *, batch_size: int, metrics: Any = None,
                     context: SourceContext | None = None) -> DeviceApiSource:
        # batch_size: a request is one batch (a report is at most 1 MB)
        return cls(registry=context.registry if context else None, listen=options.listen,
                   token_ttl=options.token_ttl, ssl_context=server_ssl_context(options.tls),
                   max_inflight=options.max_inflight)

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY + 1)
        app.router.add_post("/v5/device-auth", self._counted(self._auth))
        app.router.add_post(r"/v5/devices/{device_id}/sys/{report:.+}",
                            self._counted(self._report))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await start_site(site, f"device_api source {self.name} (listen)", self.host, self.port)
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def _counted(self, handler: Handler) -> Handler:
        rejected = self.rejected

        async def counted(request: web.Request) -> web.Response:
            response = await handler(request)
            if response.status >= 400:
                key = str(response.status)
                rejected[key] = rejected.get(key, 0) + 1
            return response

        return counted

    def stop(self) -> None:
        self._stopping = True
        self._queue.put_nowait(None)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def batches(self) -> AsyncIterator[Batch]:
        while (batch := await self._queue.get()) is not None:
            yield batch

    # -- authentication ------------------------------------------------------------------

    async def _auth(self, request: web.Request) -> web.Response:
        if self._stopping:
            return _error(503, "IOTDA.000001", "shutting down")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _invalid("The body is not JSON.")
        if type(body) is not dict:
            return _invalid("The body must be a JSON object.")
        device_id, sign_type = body.get("device_id"), body.get("sign_type")
        timestamp, password = body.get("timestamp"), body.get("password")
        if type(device_id) is not str or not _DEVICE_ID.fullmatch(device_id):
            return _invalid("device_id must be 1 to 128 letters, digits, _ or -.")
        if sign_type not in (0, 1) or type(sign_type) is not int:
            return _invalid("sign_type must be 0 or 1.")
        if type(timestamp) is not str or not _TIMESTAMP.fullmatch(timestamp):
            return _invalid("timestamp must be YYYYMMDDHH.")
        if type(password) is not str or not _PASSWORD.fullmatch(password):
            return _invalid("password must be 64 hexadecimal characters.")
        now = self.clock()
        device = self.registry.devices.get(device_id)
        secret = device.secret.get_secret_value() if device and device.secret else None
        ok = (device is not None and not device.frozen and secret is not None
              and hmac.compare_digest(password.lower(), password_for(secret, timestamp)))
        if ok and sign_type == 1:
            ok = _within_an_hour(timestamp, now)
        if not ok:
            return _error(401, *_UNAUTHORIZED)
        token = secrets.token_urlsafe(32)
        previous = self._latest.get(device_id)
        if previous in self._tokens:
            dev, expires = self._tokens[previous]
            self._tokens[previous] = (dev, min(expires, now + OLD_TOKEN_GRACE))
        self._tokens[token] = (device_id, now + self.token_ttl)
        self._latest[device_id] = token
        self._forget_expired(now)
        header = self.registry.header(device_id)
        times = receipt_times(now)
        online = orjson.dumps({
            "resource": "device.status", "event": "update", "event_time": times[0],
            "event_time_ms": times[1], "request_id": secrets.token_hex(16),
            "notify_data": {"header": header, "body": {
                "status": "ONLINE", "last_online_time": times[0],
                "status_update_time": times[1]}}})
        failed = await self._submit([online])
        if failed is not None:
            return failed
        return web.Response(content_type="application/json", body=orjson.dumps(
            {"access_token": token, "expires_in": int(self.token_ttl)}))

    def _forget_expired(self, now: float) -> None:
        if len(self._tokens) > 2 * len(self._latest) + 64:
            for t in [t for t, (_, exp) in self._tokens.items() if exp <= now]:
                del self._tokens[t]

    # -- reports ------------------------------------------------------------------------

    async def _report(self, request: web.Request) -> web.Response:
        device_id = request.match_info["device_id"]
        path = _REPORTS.get(request.match_info["report"])
        # The token is checked before anything of the request is used.
        token = request.headers.get("access_token")
        entry = self._tokens.get(token) if token else None
        now = self.clock()
        if entry is None or entry[0] != device_id or entry[1] <= now:
            return _error(403, *_BAD_TOKEN)
        if path is None:
            return _error(404, "IOTDA.000404", "no such device API")
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _error(403, "IOTDA.021105",
                          "The content reported in a single request cannot exceed 1 MB.")
        if self._stopping:
            return _error(503, "IOTDA.000001", "shutting down")
        if self._inflight >= self.max_inflight:
            return _error(429, "IOTDA.021101", "Request reached the maximum rate limit.")
        try:
            payload = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(403, "IOTDA.021105",
                          "The content reported in a single request cannot exceed 1 MB.")
        items, reason = self.uplink.convert(f"$oc/devices/{device_id}/{path}", payload, now)
        if reason is not None:
            if "child device" in reason or "unknown device" in reason:
                return _error(400, "IOTDA.021104", "Subdevices in the request does not exist "
                              f"or does not belong to the gateway. {reason}")
            return _invalid(reason)
        failed = await self._submit(items)
        return failed if failed is not None else web.Response(status=200)

    async def _submit(self, items: list[bytes]) -> web.Response | None:
        """Queue the notifications; None once the pipeline acked them."""
        if not items:
            return None
        self._inflight += 1
        try:
            done = asyncio.get_running_loop().create_future()

            async def ack() -> None:
                if not done.done():
                    done.set_result(None)

            self._queue.put_nowait(Batch(items, ack))
            try:
                await asyncio.wait_for(asyncio.shield(done), self.timeout)
            except TimeoutError:
                return _error(503, "IOTDA.000503",
                              f"not processed within {self.timeout:g}s; resend")
            return None
        finally:
            self._inflight -= 1


def _within_an_hour(timestamp: str, now: float) -> bool:
    """sign_type 1: the UTC hour named is the current one, or one next to it."""
    try:
        start = calendar.timegm(time.strptime(timestamp, "%Y%m%d%H"))
    except ValueError:
        return False
    return start - 3600 <= now < start + 2 * 3600

