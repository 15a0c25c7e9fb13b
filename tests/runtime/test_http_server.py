"""The HTTP/1.1 server under the HTTP source (engine/sources/http_server.py),
spoken to over real sockets: raw bytes where a client library would hide
what is checked (pipelining, HTTP/1.0, malformed heads), aiohttp's client
where it is what users run (Expect: 100-continue)."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from engine.sources import http_server
from engine.sources.http import HttpSource

OBJ = b'{"resource":"device.property","event":"report"}'


@pytest.fixture
async def source():
    src = HttpSource(listen="127.0.0.1:0", path="/in", max_body=4096, timeout=5)
    await src.start()
    acker = asyncio.create_task(_ack_all(src))
    yield src
    acker.cancel()
    src.stop()
    await src.close()


async def _ack_all(src: HttpSource) -> None:
    async for batch in src.batches():
        await batch.ack()


def _post(path: str, body: bytes, *head: str, version: str = "1.1") -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: x", f"Content-Length: {len(body)}", *head]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def _connect(src: HttpSource):
    return await asyncio.open_connection(src.host, src.port)


async def test_pipelined_requests_are_answered_in_order(source):
    reader, writer = await _connect(source)
    bodies = [b"[" + b",".join([OBJ] * n) + b"]" for n in (3, 1, 2)]
    writer.write(b"".join(_post("/in", b) for b in bodies))  # one write: all three at once
    got = [await asyncio.wait_for(_answer(reader), 5) for _ in bodies]
    assert [(s, orjson.loads(b)) for s, _, b in got] == [
        (200, {"accepted": 3}), (200, {"accepted": 1}), (200, {"accepted": 2})]
    assert all("connection" not in h for _, h, _ in got)  # kept alive
    writer.close()


async def test_http_1_0_gets_its_answer_and_the_connection_closes(source):
    reader, writer = await _connect(source)
    writer.write(_post("/in", OBJ, version="1.0"))
    status, headers, body = await asyncio.wait_for(_answer(reader), 5)
    assert (status, headers["connection"], orjson.loads(body)) == (200, "close", {"accepted": 1})
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    writer.close()


async def test_expect_100_continue(source):
    body = b"[" + b",".join([OBJ] * 20) + b"]"
    async with aiohttp.ClientSession() as s, s.post(source.url, data=body, expect100=True) as r:
        assert (r.status, await r.json()) == (200, {"accepted": 20})


@pytest.mark.parametrize("request_bytes, status", [
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
    (b"POST /in HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
    (b"POST /in HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    (b"POST /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
])
async def test_malformed_or_oversized_heads_get_an_answer_then_the_connection_closes(
        source, request_bytes, status):
    reader, writer = await _connect(source)
    writer.write(request_bytes)
    got, headers, body = await asyncio.wait_for(_answer(reader), 5)
    assert (got, headers["connection"]) == (status, "close")
    assert orjson.loads(body)["error"]
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_wrong_path_and_method(source):
    async with aiohttp.ClientSession() as s:
        async with s.post(source.url.replace("/in", "/other"), data=OBJ) as r:
            assert r.status == 404 and "/in" in (await r.json())["error"]
        async with s.get(source.url) as r:
            assert (r.status, r.headers["Allow"]) == (405, "POST")


async def test_refused_body_is_discarded_so_the_client_reads_the_answer(source):
    """A declared size over the limit is refused on the head; the client is
    still sending (256 KiB here): it must get the 413, not a reset."""
    reader, writer = await _connect(source)
    big = b"x" * (256 << 10)
    writer.write(_post("/in", big))
    status, headers, body = await asyncio.wait_for(_answer(reader), 5)
    assert (status, headers["connection"]) == (413, "close")
    assert "larger than 4096" in orjson.loads(body)["error"]
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_connection_lost_mid_body_frees_its_place(source):
    reader, writer = await _connect(source)
    writer.write(_post("/in", OBJ * 10)[:-100])  # the head and part of the body
    await writer.drain()
    for _ in range(100):
        if source._inflight == 1:
            break
        await asyncio.sleep(0.01)
    assert source._inflight == 1
    writer.close()
    for _ in range(100):
        if source._inflight == 0:
            break
        await asyncio.sleep(0.01)
    assert source._inflight == 0


async def test_an_idle_keep_alive_connection_is_closed(source, monkeypatch):
    monkeypatch.setattr(http_server, "KEEPALIVE_S", 0.2)
    reader, writer = await _connect(source)
    writer.write(_post("/in", OBJ))
    assert (await asyncio.wait_for(_answer(reader), 5))[0] == 200
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after 0.2 s idle
    writer.close()
