"""HTTP ingest: POST notifications, answered once they are processed.

A body is one JSON notification, a JSON array of them, or NDJSON (declared by
`Content-Type: application/x-ndjson`, or recognised when the body is not one
JSON value but its lines are). The answer comes only after the pipeline acked
the batch (every match delivered or handed off), so a 200 means what it says:
a client that gets anything else may resend (at-least-once).

  200 {"accepted": n}       processed (malformed items are dead-lettered, not refused)
  400 {"error": reason}     the whole body is unusable
  413 {"error": ...}        the body is larger than max_body_bytes
  429 {"error": ...}        too many requests in flight: back off (Retry-After)
  503 {"error": ...}        shutting down, or not processed within `timeout`
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import orjson
from aiohttp import web
from pydantic import Field

from engine.schema import Listen
from engine.sources.base import Batch, Source, SourceOptions
from engine.sources.listen import start_site
from engine.sources.registry import register

log = logging.getLogger(__name__)

NDJSON_TYPES = {"application/x-ndjson", "application/ndjson", "application/jsonl",
                "application/x-jsonlines"}


class BodyError(ValueError):
    """The request body as a whole is not usable (answered 400)."""


def split_body(body: bytes, content_type: str = "application/json") -> list[bytes]:
    """The notifications in one request body, as raw JSON items. Items are not
    validated here (the rule set does that and dead-letters bad ones); only a
    body that cannot be read at all is refused."""
    if not body.strip():
        raise BodyError("empty body")
    if content_type in NDJSON_TYPES:
        return _lines(body)
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        lines = _lines(body)
        # Undeclared NDJSON: accepted when at least one line is JSON.
        if len(lines) > 1 and any(_is_json(line) for line in lines):
            return lines
        raise BodyError(f"body is neither JSON nor NDJSON: {e}") from None
    if isinstance(value, dict):
        return [body]
    if isinstance(value, list):
        return [orjson.dumps(v) for v in value]
    raise BodyError(f"expected a JSON object, an array or NDJSON, got {type(value).__name__}")


def _lines(body: bytes) -> list[bytes]:
    return [s for s in map(bytes.strip, body.splitlines()) if s]


def _is_json(line: bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


def _json(status: int, obj: dict, **headers: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), content_type="application/json",
                        headers=headers or None)


class HttpOptions(SourceOptions):
    """Receive notifications pushed by HTTP POST (IoTDA HTTP push format)."""

    listen: Listen = "127.0.0.1:8088"
    path: str = Field(default="/v1/notifications", pattern=r"^/")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    max_inflight: int = Field(default=1000, ge=1, le=100_000)
    """Requests being processed at once (back-pressure above that)."""


@register
class HttpSource(Source):
    kind = "http"
    Options = HttpOptions

    def __init__(self, *, listen: str = "127.0.0.1:8080", path: str = "/notifications",
                 max_inflight: int = 64, timeout: float = 30.0, max_body: int = 16 << 20,
                 name: str | None = None) -> None:
        super().__init__(name)
        host, _, port = listen.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.path = path
        self.max_inflight = max_inflight
        self.timeout = timeout
        self.max_body = max_body
        # Unbounded, but never holds more than max_inflight batches (one per request).
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue()
        self._inflight = 0
        self._stopping = False
        self._runner: web.AppRunner | None = None
        # Refused requests by HTTP status (engine_source_rejected_total); every
        # reason is there from the start, so a dashboard sees 0 rather than nothing.
        self.rejected = {"400": 0, "413": 0, "429": 0, "503": 0}

    @classmethod
    def from_options(cls, options: HttpOptions, *, batch_size: int) -> HttpSource:
        return cls(listen=options.listen, path=options.path, max_inflight=options.max_inflight,
                   max_body=options.max_body_bytes)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    async def start(self) -> None:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await start_site(site, f"HTTP source {self.name} (listen)", self.host, self.port)
        if self.port == 0:  # an ephemeral port was asked for: report the real one
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("HTTP source %s listening on %s (no authentication)", self.name, self.url)

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

    async def _handle(self, request: web.Request) -> web.Response:
        response = await self._answer(request)
        if response.status in (400, 413, 429, 503):
            self.rejected[str(response.status)] += 1
        return response

    async def _answer(self, request: web.Request) -> web.Response:
        if self._stopping:
            return _json(503, {"error": "shutting down"}, **{"Retry-After": "5"})
        if self._inflight >= self.max_inflight:
            return _json(429, {"error": f"{self._inflight} requests in flight"},
                         **{"Retry-After": "1"})
        self._inflight += 1
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return _json(413, {"error": f"body larger than {self.max_body} bytes"})
            try:
                items = split_body(body, request.content_type)
            except BodyError as e:
                return _json(400, {"error": str(e)})
            if not items:
                return _json(200, {"accepted": 0})
            done = asyncio.get_running_loop().create_future()

            async def ack() -> None:
                if not done.done():
                    done.set_result(None)

            self._queue.put_nowait(Batch(items, ack))
            try:
                await asyncio.wait_for(asyncio.shield(done), self.timeout)
            except TimeoutError:
                # Still in the pipeline and may yet be delivered; the client
                # resends on its own schedule (duplicates are at-least-once).
                return _json(503, {"error": f"not processed within {self.timeout:g}s"},
                             **{"Retry-After": "5"})
            return _json(200, {"accepted": len(items)})
        finally:
            self._inflight -= 1
