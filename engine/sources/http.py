"""HTTP ingest: POST notifications, answered once they are processed.

A body is one JSON notification, a JSON array of them, or NDJSON (declared by
`Content-Type: application/x-ndjson`, or recognised when its first line is a
complete JSON object or array and more lines follow). The answer comes only
after the pipeline acked every item (each match delivered or handed off), so
a 200 means what it says: a client that gets anything else may resend
(at-least-once).

  200 {"accepted": n}       processed (malformed items are dead-lettered, not refused)
  400 {"error": reason}     the whole body is unusable
  401 (no body)             credentials missing or wrong (`auth`); nothing was read
  413 {"error": ...}        the body is larger than max_body_bytes
  429 {"error": ...}        too many requests in flight: back off (Retry-After)
  503 {"error": ...}        shutting down, or not processed within `timeout`

Memory per request stays proportional to the body: an array is split into
raw byte slices (never decoded as a whole, never re-encoded, so every value
arrives as sent) and, like NDJSON, handed to the pipeline in batches of at
most `batch_size` items, each made only when the pipeline takes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from pydantic import Field

from engine import _core
from engine.schema import Listen, ListenerTls, RequiredAuth, parse_listen
from engine.sources.base import Batch, Source, SourceContext, SourceOptions
from engine.sources.http_server import Answer, Head, Server
from engine.sources.listen import listening
from engine.sources.listener_auth import (
    Authenticator,
    authenticator_from_config,
    server_ssl_context,
)
from engine.sources.registry import register

log = logging.getLogger(__name__)

NDJSON_TYPES = {"application/x-ndjson", "application/ndjson", "application/jsonl",
                "application/x-jsonlines"}
_WS = b" \t\r\n"


class BodyError(ValueError):
    """The request body as a whole is not usable (answered 400)."""


class Body:
    """One request body and how far it has been handed on."""

    __slots__ = ("data", "kind", "pos", "count")

    def __init__(self, data: bytes, kind: str, pos: int, count: int) -> None:
        self.data, self.kind, self.pos, self.count = data, kind, pos, count

    @property
    def exhausted(self) -> bool:
        return self.pos < 0

    def take(self, max_items: int) -> list[bytes]:
        """The next items (at most `max_items`), as raw JSON bytes."""
        if self.kind == "one":
            self.pos = -1
            return [self.data]
        if self.kind == "array":
            items, self.pos = _core.json_array_items(self.data, self.pos, max_items)
            return items
        items, self.pos = _core.ndjson_lines(self.data, self.pos, max_items)
        self.count += len(items)
        return items


def read_body(data: bytes, content_type: str = "application/json") -> Body:
    """Check what a body holds, without decoding its items (the rule set
    does that and dead-letters bad ones); only a body that cannot be read
    at all is refused (BodyError)."""
    start = _skip_ws(data, 0)
    if start < 0:
        raise BodyError("empty body")
    if content_type in NDJSON_TYPES:
        return Body(data, "lines", 0, 0)
    first = data[start]
    end = _core.json_value_end(data, start)
    if end < 0:
        raise BodyError("body is neither JSON nor NDJSON: a string or bracket opened at byte "
                        f"{start} is not closed")
    after = _skip_ws(data, end)
    if after >= 0:  # more follows the first value
        if first in b"{[" and b"\n" in data[end:after]:
            return Body(data, "lines", 0, 0)
        raise BodyError(f"body is neither JSON nor NDJSON: data after the JSON value at byte "
                        f"{after}")
    if first == 0x7B:  # '{': one notification, checked as a whole (400 if not JSON)
        if not _core.is_json_object(data):  # allocation-free; escapes need the decoder
            try:
                orjson.loads(data)
            except orjson.JSONDecodeError as e:
                raise BodyError(f"body is neither JSON nor NDJSON: {e}") from None
        return Body(data, "one", 0, 1)
    if first == 0x5B:  # '['
        try:
            count, _ = _core.json_array_items(data, start + 1, -1)
        except ValueError as e:
            raise BodyError(f"body is not a usable JSON array: {e}") from None
        return Body(data, "array", start + 1, count)
    raise BodyError(f"expected a JSON object, an array or NDJSON, got {_scalar(first)}")


def split_body(data: bytes, content_type: str = "application/json") -> list[bytes]:
    """Every item of a body at once (tests, small bodies)."""
    body = read_body(data, content_type)
    items: list[bytes] = []
    while not body.exhausted:
        items.extend(body.take(10_000))
    return items


def _skip_ws(data: bytes, pos: int) -> int:
    n = len(data)
    while pos < n and data[pos] in _WS:
        pos += 1
    return pos if pos < n else -1


def _scalar(first: int) -> str:
    if first == 0x22:
        return "a string"
    if first in b"tf":
        return "a boolean"
    if first == 0x6E:
        return "null"
    return "a number"


def _json(status: int, obj: dict, **headers: str) -> Answer:
    return Answer(status, orjson.dumps(obj), headers or None)


class _Request:
    """A request between its receipt and its answer."""

    __slots__ = ("body", "done", "received_at", "given_up")

    def __init__(self, body: Body, done: asyncio.Future[bool | None],
                 received_at: float) -> None:
        self.body, self.done, self.received_at = body, done, received_at
        self.given_up = False  # answered already (timeout, shutdown): make no more batches

    def finish(self, processed: bool | None) -> None:
        """True: acked; False: given up (shutting down); None: timed out."""
        if not self.done.done():
            self.done.set_result(processed)



class HttpOptions(SourceOptions):
    """Receive notifications pushed by HTTP POST (IoTDA HTTP push format)."""

    listen: Listen = "127.0.0.1:8088"
    path: str = Field(default="/v1/notifications", pattern=r"^/")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    max_inflight: int = Field(default=1000, ge=1, le=100_000)
    """Requests being processed at once (back-pressure above that)."""
    auth: RequiredAuth = Field(default=None, validate_default=True)
    """Required: credentials, or `none` to accept anyone who can connect."""
    tls: ListenerTls | None = None


@register
class HttpSource(Source):
    kind = "http"
    Options = HttpOptions

    def __init__(self, *, listen: str = "127.0.0.1:8080", path: str = "/notifications",
                 max_inflight: int = 64, timeout: float = 30.0, max_body: int = 16 << 20,
                 batch_size: int = 500, auth: Authenticator | None = None,
                 ssl_context=None, metrics=None, name: str | None = None) -> None:
        """`auth` None: anyone may send. `metrics` (a Metrics): counts refused
        requests in engine_listener_unauthorized_total."""
        super().__init__(name)
        host, self.port = parse_listen(listen)
        self.host = host or "127.0.0.1"
        self.path = path
        self.max_inflight = max_inflight
        self.timeout = timeout
        self.max_body = max_body
        self.batch_size = batch_size
        self.auth = auth
        self.ssl_context = ssl_context
        self.metrics = metrics
        self.unauthorized = 0
        # Unbounded, but never holds more than max_inflight requests.
        self._queue: asyncio.Queue[_Request | None] = asyncio.Queue()
        self._pending: set[_Request] = set()
        self._inflight = 0
        self._stopping = False
        self._server: Server | None = None
        self.reuse_port = False  # several workers on one port (engine run --workers)
        # Refused requests by HTTP status (engine_source_rejected_total); every
        # reason is there from the start, so a dashboard sees 0 rather than nothing.
        self.rejected = {"400": 0, "401": 0, "413": 0, "429": 0, "503": 0}

    @classmethod
    def from_options(cls, options: HttpOptions, *, batch_size: int,
                     metrics: Any = None, context: SourceContext | None = None) -> HttpSource:
        return cls(listen=options.listen, path=options.path, max_inflight=options.max_inflight,
                   max_body=options.max_body_bytes, batch_size=batch_size,
                   auth=authenticator_from_config(options.auth),
                   ssl_context=server_ssl_context(options.tls), metrics=metrics)

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}{self.path}"

    async def start(self) -> None:
        server = Server(self)
        async with listening(f"HTTP source {self.name} (listen)", self.host, self.port):
            port = await server.start(self.host, self.port, ssl=self.ssl_context,
                                      reuse_port=self.reuse_port)
        self._server = server
        self.port = port  # the real one when an ephemeral port was asked for
        log.info("HTTP source %s listening on %s (%s)", self.name, self.url,
                 self.auth.scheme + " authentication" if self.auth is not None
                 else "no authentication: auth: none")

    def stop(self) -> None:
        self._stopping = True
        self._queue.put_nowait(None)

    async def close(self) -> None:
        # Whatever was not acked by now will not be: answer 503 at once (the
        # client resends; what was delivered meanwhile becomes a duplicate)
        # instead of keeping the process alive until the request's timeout.
        for req in list(self._pending):
            req.given_up = True
            req.finish(False)
        if self._server is not None:
            await self._server.close()
            self._server = None

    async def batches(self) -> AsyncIterator[Batch]:
        """Up to `batch_size` items a batch: a large body is cut into several,
        and the bodies of requests already queued behind one go into the same
        batch (under load, many small bodies make few batches, so the
        per-batch work and the destinations' writes are not per request).
        Acks come in order: a batch's ack answers every request whose last
        item it holds."""
        req = await self._queue.get()
        while req is not None:
            items: list[bytes] = []
            ended: list[_Request] = []
            received_at = req.received_at
            while True:
                body = req.body
                if not req.given_up:  # answered already: take nothing more of it
                    items.extend(body.take(self.batch_size - len(items)))
                if not (body.exhausted or req.given_up):
                    break  # the batch is full; this body goes on in the next one
                ended.append(req)
                if len(items) >= self.batch_size or self._queue.empty():
                    req = None
                    break
                req = self._queue.get_nowait()
                if req is None:  # stop() after these requests
                    yield Batch(items, _acker(ended), received_at)
                    return
            yield Batch(items, _acker(ended) if ended else _no_ack, received_at)
            if req is None:
                req = await self._queue.get()

    # ---------------------------------------------------------- the server's Handler

    def admit(self, head: Head) -> Answer | None:
        """Decided on the head, before any of the body is read: None admits
        the request (it then counts in flight until answered)."""
        if head.path != self.path:
            return _json(404, {"error": f"no such path: POST notifications to {self.path}"})
        if head.method != "POST":
            return _json(405, {"error": "only POST"}, Allow="POST")
        if self.auth is not None and not self.auth.allows(head.headers):
            self.unauthorized += 1
            if self.metrics is not None:
                self.metrics.unauthorized.labels(self.name).inc()
            return self._rejected(Answer(401, b"", {"WWW-Authenticate": self.auth.scheme}))
        if self._stopping:
            return self._rejected(_json(503, {"error": "shutting down"}, **{"Retry-After": "5"}))
        if self._inflight >= self.max_inflight:
            return self._rejected(_json(429, {"error": f"{self._inflight} requests in flight"},
                                        **{"Retry-After": "1"}))
        if (head.content_length or 0) > self.max_body:
            return self.too_large(head, admitted=False)
        self._inflight += 1
        return None

    def release(self, head: Head) -> None:
        self._inflight -= 1

    def too_large(self, head: Head, admitted: bool = True) -> Answer:
        if admitted:
            self._inflight -= 1
        return self._rejected(_json(413, {"error": f"body larger than {self.max_body} bytes"}))

    def _rejected(self, answer: Answer) -> Answer:
        self.rejected[str(answer.status)] += 1
        return answer

    async def respond(self, head: Head, data: bytes) -> Answer:
        try:
            answer = await self._answer(head, data)
        finally:
            self._inflight -= 1
        return self._rejected(answer) if answer.status in (400, 503) else answer

    async def _answer(self, head: Head, data: bytes) -> Answer:
        try:
            body = read_body(data, head.content_type)
        except BodyError as e:
            return _json(400, {"error": str(e)})
        if body.kind == "array" and body.count == 0:
            return _json(200, {"accepted": 0})
        loop = asyncio.get_running_loop()
        req = _Request(body, loop.create_future(), head.received_at)
        self._pending.add(req)
        # A timer rather than wait_for(shield()): two futures and a task
        # fewer per request (per-request cost is what NDJSON ingest pays).
        timer = loop.call_later(self.timeout, req.finish, None)
        try:
            self._queue.put_nowait(req)
            processed = await req.done
        finally:
            timer.cancel()
            self._pending.discard(req)
        if processed is None:
            # Still in the pipeline and may yet be delivered; the client
            # resends on its own schedule (duplicates are at-least-once).
            req.given_up = True
            return _json(503, {"error": f"not processed within {self.timeout:g}s"},
                         **{"Retry-After": "5"})
        if not processed:
            return _json(503, {"error": "shutting down before the request was processed; "
                                        "send it again"}, **{"Retry-After": "5"})
        return _json(200, {"accepted": body.count})


async def _no_ack() -> None:
    return None


def _acker(ended: list[_Request]):
    async def ack() -> None:
        for req in ended:
            req.finish(True)

    return ack
