"""Alibaba's RPC API over HTTP: `GET|POST /?Action=...&Version=2018-01-20&...`.

Parameters come from the query string and, for a form-encoded POST, the
body (the signature covers both, as the official SDK signs them). The
request is verified (`signature`), its project chosen, rate-limited with
the same per-credential bucket as the IoTDA side, and dispatched to
`operations`; the answer is the JSON envelope of `errors`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from engine.api.aliyun import errors, messaging, operations, routes, things
from engine.api.aliyun.errors import AliyunError
from engine.api.aliyun.signature import Caller, Verifier
from engine.api.ratelimit import RateLimiter
from engine.api.storage import Store
from engine.config.limits import ApiLimits

log = logging.getLogger(__name__)

# The rules engine (§2.9), the products and devices (§2.5, §2.6) and the
# topic route tables (§2.7.5-§2.7.8), on the store; Pub (§2.10.1) on the broker.
OPERATIONS = {**operations.OPERATIONS, **things.OPERATIONS, **routes.OPERATIONS}
BROKER_OPERATIONS = {"Pub": messaging.pub}
ACTIONS = sorted([*OPERATIONS, *BROKER_OPERATIONS])

VERSION = "2018-01-20"
FORM = "application/x-www-form-urlencoded"


def _params(query: str, body: bytes, content_type: str) -> dict[str, str]:
    # First occurrence wins, as in the seed's reference code; "+" is a space
    # (form encoding), which is how the seed's Java reference decodes too.
    params: dict[str, str] = {}
    pairs = parse_qsl(query, keep_blank_values=True)
    if body and content_type == FORM:
        pairs += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    for key, value in pairs:
        params.setdefault(key, value)
    return params


def _project(caller: Caller, params: dict[str, str]) -> str:
    """The project of the request: the AccessKey's one project, or the one
    named by IotInstanceId when the key is valid for several."""
    instance = params.get("IotInstanceId")
    if instance:
        if instance not in caller.projects:
            raise errors.forbidden_instance(
                f"IotInstanceId {instance[:64]!r} is not a project of this AccessKey.")
        return instance
    if len(caller.projects) > 1:
        raise errors.missing_parameter("IotInstanceId")
    (project,) = caller.projects
    return project


def make_handler(verifier: Verifier, store: Callable[[], Store], limits: Callable[[], ApiLimits],
                 limiter: Callable[[], RateLimiter], broker: str | None = None
                 ) -> Callable[[web.Request], Any]:
    """`broker`: the MQTT broker URL `Pub` publishes through (None: refused)."""
    async def handle(request: web.Request) -> web.Response:
        rid = errors.request_id()
        params: dict[str, str] = {}
        try:
            raw = await request.read()
            params = _params(request.query_string, raw, request.content_type)
            caller = verifier.verify(request.method, params)
            if not limiter().allow(f"ak:{caller.access_key_id}"):
                raise errors.throttled()
            action = params.get("Action", "")
            if not action:
                raise errors.missing_parameter("Action")
            if params.get("Version") != VERSION:
                raise errors.unsupported_version(params.get("Version", ""))
            if action not in OPERATIONS and action not in BROKER_OPERATIONS:
                raise errors.unknown_action(action, ACTIONS)
            project = _project(caller, params)
            if action in BROKER_OPERATIONS:
                result = await BROKER_OPERATIONS[action](broker, project, params)
            else:
                result = await OPERATIONS[action](store(), project, params, limits())
            payload: dict[str, Any] = {"RequestId": rid, "Success": True, **result}
            status = 200
        except AliyunError as err:
            payload, status = err.body(rid), err.status
            if status >= 400:
                log.info("alibaba API refused %s: %s", request.method, err.code)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("alibaba API action failed (request %s)", rid)
            failure = errors.internal()
            payload, status = failure.body(rid), failure.status
        action = params.get("Action", "")
        body, content_type = errors.render(payload, action if action in ACTIONS else "",
                                           params.get("Format"))
        return web.Response(body=body, status=status, content_type=content_type)

    return handle
