"""The HTTP/1.1 server under the HTTP source: llhttp (httptools) parsing on
an asyncio protocol, and nothing the source does not use.

Why not aiohttp's server: per request it builds a Request, a URL, a router
match, header multidicts and a Response; on this project's ingest benchmark
(NDJSON bodies of 100 events) that was ~200 us of CPU a request against
~105 us for this module (benchmarks/README.md, "Eighth round"), about a
tenth of the engine's whole cost per event. What it keeps of what aiohttp
did for the source:

* keep-alive (HTTP/1.1 default, HTTP/1.0 on request), pipelined requests
  answered in order, `Expect: 100-continue`, chunked and Content-Length
  bodies, TLS (the asyncio transport's), SO_REUSEPORT;
* a refusal decided on the head (wrong path or method, credentials, a
  declared size over the limit, back-pressure) is answered before the body
  is read; the connection then closes after a short linger that discards
  what the client is still sending, so it reads the answer, not a reset;
* malformed requests get 400 and the connection closes; heads are bounded
  (8 KiB request line, 64 KiB of header fields); an idle keep-alive
  connection closes after `KEEPALIVE_S`.

The contract with the application (`Handler`): `admit` sees each head and
refuses it (an `Answer`) or admits it (None); an admitted request then gets
exactly one of `respond` (the body arrived whole, within `max_body`),
`too_large` (it did not) or `release` (the connection went first).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from email.utils import formatdate
from typing import Protocol
from urllib.parse import unquote

import httptools
import orjson

log = logging.getLogger(__name__)

KEEPALIVE_S = 75.0      # aiohttp's default
LINGER_S = 2.0          # after a refusal before the body: discard, then close
MAX_TARGET = 8192
MAX_HEAD = 65536

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
            414: "URI Too Long", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


class Head:
    """A request's method, path and header fields (names lower-cased; the
    first of repeated fields wins, as aiohttp's `headers.get` gives)."""

    __slots__ = ("method", "path", "headers", "received_at")

    def __init__(self, method: str, path: str, headers: Headers) -> None:
        self.method, self.path, self.headers = method, path, headers
        self.received_at = time.monotonic()   # when its head was complete

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower case ('' if none)."""
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        v = self.headers.get("content-length")
        return int(v) if v is not None and v.isdigit() else None


class Headers(dict[str, str]):
    """Header fields by lower-case name; `get` takes any case."""

    def get(self, name: str, default=None):  # type: ignore[override]
        return dict.get(self, name.lower(), default)


class Answer:
    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body: bytes = b"",
                 headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers


class Handler(Protocol):
    max_body: int

    def admit(self, head: Head) -> Answer | None: ...

    async def respond(self, head: Head, body: bytes) -> Answer: ...

    def too_large(self, head: Head) -> Answer: ...

    def release(self, head: Head) -> None: ...


_date = (0, "")


def _http_date() -> str:
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]


def encode_answer(a: Answer, close: bool) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in a.headers.items()) if a.headers else ""
    ctype = "Content-Type: application/json\r\n" if a.body else ""
    conn = "Connection: close\r\n" if close else ""
    return (f"HTTP/1.1 {a.status} {_REASONS.get(a.status, 'Unknown')}\r\n"
            f"Date: {_http_date()}\r\n{ctype}Content-Length: {len(a.body)}\r\n{extra}{conn}"
            "\r\n").encode() + a.body


class _Exchange:
    """One request on a connection, from its head to its answer."""

    __slots__ = ("head", "chunks", "size", "admitted", "answer", "keep_alive", "queued")

    def __init__(self, head: Head) -> None:
        self.head = head
        self.chunks: list[bytes] = []
        self.size = 0
        self.admitted = False
        self.answer: Answer | None = None   # decided without the body
        self.keep_alive = True
        self.queued = False                 # in the connection's `ready` queue


class Connection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order."""

    def __init__(self, handler: Handler, connections: set[Connection]) -> None:
        self.handler = handler
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.loop = asyncio.get_running_loop()
        self.ready: deque[_Exchange] = deque()   # whole requests waiting their turn
        self.current: _Exchange | None = None    # the request being received
        self.busy = False                        # a request is being answered
        self.closing = False                     # answering no more requests
        self.lingering = False                   # discarding a refused body, then closing
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None   # the answer being made
        self._target: list[bytes] = []
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_size = 0

    # ------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
        for ex in [self.current, *self.ready]:
            if ex is not None and ex.admitted:
                ex.admitted = False
                self.handler.release(ex.head)
        self.ready.clear()
        self.current = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, _HeadTooLarge) as e:
            if isinstance(e.__context__, _HeadTooLarge):  # raised in a callback
                e = e.__context__
            if self.closing:   # lingering, or answering no more: just close
                self.close()
            elif isinstance(e, _HeadTooLarge):
                self._fail(e.status, str(e))
            elif isinstance(e, httptools.HttpParserUpgrade):
                self._fail(400, "protocol upgrades are not supported")
            else:
                self._fail(400, f"malformed HTTP request: {e}")

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _idle(self) -> None:
        """(Re)arm the keep-alive timer: close when nothing happens for a while."""
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(KEEPALIVE_S, self._expire)

    def _expire(self) -> None:
        if self.busy or self.ready or self.current is not None:
            self._idle()
        else:
            self.close()

    def _fail(self, status: int, reason: str) -> None:
        """A request that cannot be parsed: answer (in turn) and close."""
        ex = self.current or _Exchange(Head("", "", Headers()))
        self.current = None
        if ex.admitted:
            ex.admitted = False
            self.handler.release(ex.head)
        ex.answer, ex.keep_alive = _error(status, reason), False
        self.closing = True
        self._queue(ex)
        self._next()

    # ------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        if self.closing:
            raise _HeadTooLarge(400, "a request after the last one")  # stops the parser
        self._target.clear()
        self._fields.clear()
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        if self._head_size > MAX_TARGET:
            raise _HeadTooLarge(414, f"request target longer than {MAX_TARGET} bytes")
        self._target.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value)
        if self._head_size > MAX_HEAD:
            raise _HeadTooLarge(431, f"request head larger than {MAX_HEAD} bytes")
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        headers = Headers()
        for name, value in self._fields:
            key = name.decode("latin-1").lower()
            if key not in headers:
                headers[key] = value.decode("latin-1")
        path = b"".join(self._target).partition(b"?")[0].decode("latin-1")
        if "%" in path:
            path = unquote(path)
        ex = self.current = _Exchange(Head(self.parser.get_method().decode(), path, headers))
        ex.keep_alive = self.parser.should_keep_alive()
        idle = not self.busy and not self.ready
        ex.answer = self.handler.admit(ex.head)
        if ex.answer is None:
            ex.admitted = True
            if idle and headers.get("expect", "").lower() == "100-continue":
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
            return
        # Refused on its head: the body is not read. When it is this
        # connection's turn, answer now and linger; behind another request,
        # discard the body and answer in turn.
        ex.keep_alive = False
        if idle:   # self.current stays: its body is read (and dropped) while lingering
            self.closing = True
            self._queue(ex)
            self._next()

    def on_body(self, chunk: bytes) -> None:
        ex = self.current
        if ex is None or not ex.admitted:
            return
        ex.size += len(chunk)
        if ex.size > self.handler.max_body:
            ex.admitted = False
            ex.chunks.clear()
            ex.answer, ex.keep_alive = self.handler.too_large(ex.head), False
            self.closing = True
            self._queue(ex)
            self._next()
            return
        ex.chunks.append(chunk)

    def on_message_complete(self) -> None:
        ex, self.current = self.current, None
        if self.lingering:   # the refused body has been read to its end
            self.close()
            return
        if ex is None or ex.queued:
            return
        self._queue(ex)
        if len(self.ready) > 8:   # a client pipelining far ahead: stop reading it
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._next()

    # ------------------------------------------------------------ answering

    def _queue(self, ex: _Exchange) -> None:
        ex.queued = True
        self.ready.append(ex)

    def _next(self) -> None:
        if self.busy or not self.ready:
            return
        ex = self.ready.popleft()
        if ex.answer is not None:
            self._write(ex, ex.answer)
            return
        self.busy = True
        # Kept: the loop holds tasks only weakly.
        self.task = self.loop.create_task(self._respond(ex))

    async def _respond(self, ex: _Exchange) -> None:
        chunks = ex.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        ex.chunks = []
        ex.admitted = False  # respond() releases it
        try:
            answer = await self.handler.respond(ex.head, body)
        except Exception:
            log.exception("HTTP source: answering a request failed")
            answer = _error(500, "internal error (see the engine's log)")
        self.busy = False
        self._write(ex, answer)

    def _write(self, ex: _Exchange, answer: Answer) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        close = self.closing or not ex.keep_alive
        t.write(encode_answer(answer, close))
        if close:
            self.closing = True
            self.ready.clear()
            unread = self.current is not None
            if unread and self.current.admitted:  # type: ignore[union-attr]
                self.current.admitted = False  # type: ignore[union-attr]
                self.handler.release(self.current.head)  # type: ignore[union-attr]
            if not unread:
                t.close()  # after the answer is flushed
                return
            # Linger: the client may still be sending the body it was
            # refused; closing now could reset the connection before it
            # reads the answer. Closed at the body's end, or after LINGER_S.
            self.lingering = True
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_later(LINGER_S, self.close)
            t.resume_reading()
            return
        if len(self.ready) <= 8:
            t.resume_reading()
        self._idle()
        self._next()


class _HeadTooLarge(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _error(status: int, reason: str) -> Answer:
    return Answer(status, orjson.dumps({"error": reason}))


class Server:
    """The listening socket and its connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections: set[Connection] = set()
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int, *, ssl=None, reuse_port: bool = False) -> int:
        """Listen; returns the port (the real one when `port` is 0)."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: Connection(self.handler, self.connections), host, port, ssl=ssl,
            reuse_port=True if reuse_port else None)
        return self.server.sockets[0].getsockname()[1]

    async def close(self, grace: float = 1.0) -> None:
        """Stop listening and close the connections; one whose request is
        being answered gets up to `grace` seconds to write its answer."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for c in list(self.connections):
            if c.busy:
                c.closing = True   # closes once its answer is written
            else:
                c.close()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for c in list(self.connections):
            c.close()
