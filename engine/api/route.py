"""A route of the management API: method, path, handler and what the
OpenAPI document says of it (`app.ROUTES` lists them; `openapi` reads them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from pydantic import BaseModel

from engine.api.service import Kind
from engine.api.storage import Store

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STORE = web.AppKey("store", Store)  # the application's API store (create_app sets it)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    operation: str  # create, list, show, update, delete, test_rule, test, metrics, openapi
    kind: Kind | None = None
    body: type[BaseModel] | None = None  # request body of the extension endpoints
