import asyncio

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import _core
from engine.sources.http import BodyError, HttpSource, read_body, split_body

OBJ = b'{"resource": "device", "event": "delete", "notify_data": {}}'


def test_split_body_forms():
    assert split_body(OBJ) == [OBJ]
    # Array items are the raw bytes as sent (never decoded and re-encoded).
    assert split_body(b'[{"a": 1}, {"b": [2]}, 3]') == [b'{"a": 1}', b'{"b": [2]}', b"3"]
    assert split_body(b' [ {"s": "],[\\"{"} ,\n[1] ] \n') == [b'{"s": "],[\\"{"}', b"[1]"]
    assert split_body(b'[{"n": 123456789012345678901234567890123}]') == [
        b'{"n": 123456789012345678901234567890123}']
    assert split_body(b'{"a":1}\n\n{"b":2}\n') == [b'{"a":1}', b'{"b":2}']
    # Undeclared NDJSON with one bad line: the bad line goes on (to be dead-lettered).
    assert split_body(b'{"a":1}\n{oops\n') == [b'{"a":1}', b"{oops"]
    # An array item that is not JSON is dead-lettered too (structure is fine).
    assert split_body(b'[{"a":1}, nope]') == [b'{"a":1}', b"nope"]
    # Declared NDJSON is not parsed here at all.
    assert split_body(b"x\ny", "application/x-ndjson") == [b"x", b"y"]
    assert split_body(b"[]") == []


def test_bodies_are_taken_in_batches():
    body = read_body(b"[" + b",".join([b"{}"] * 1001) + b"]")
    assert body.count == 1001
    sizes = []
    while not body.exhausted:
        sizes.append(len(body.take(500)))
    assert sizes == [500, 500, 1]
    lines = read_body(b"{}\n" * 1001)
    sizes = []
    while not lines.exhausted:
        sizes.append(len(lines.take(500)))
    assert sizes == [500, 500, 1] and lines.count == 1001


def _lines_by_python(data: bytes, pos: int, max_items: int) -> tuple[list[bytes], int]:
    """The definition ndjson_lines (the core) must agree with."""
    out: list[bytes] = []
    while pos < len(data) and len(out) < max_items:
        nl = data.find(b"\n", pos)
        nl = len(data) if nl < 0 else nl
        if line := data[pos:nl].strip():
            out.append(line)
        pos = nl + 1
    return out, (pos if pos < len(data) else -1)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"{}", b'{"a": "x y"}', b" ", b"\t", b"\r", b"\x0b",
                                 b"\x0c", b"\n", b"\n\n", b"\xc3\xa9", b"\x00"]), max_size=30),
       st.integers(1, 5))
def test_ndjson_lines_are_pythons_strip_of_each_line(parts, per_take):
    data = b"".join(parts)
    pos, wpos, got = 0, 0, []
    while pos >= 0:
        lines, pos = _core.ndjson_lines(data, pos, per_take)
        wlines, wpos = _lines_by_python(data, wpos, per_take)
        assert (lines, pos) == (wlines, wpos)
        got += lines
    assert got == [x for x in (p.strip() for p in data.split(b"\n")) if x]


@pytest.mark.parametrize("body", [b"", b"  \n", b"{oops", b"{not json}", b"nope\nnever", b"42",
                                  b'"str"', b"[1,]", b"[1 2]", b"[1", b'["a]', b"[1] x",
                                  b'{"a":1} {"b":2}', b"42\n43"])
def test_split_body_refuses_unusable_bodies(body):
    with pytest.raises(BodyError):
        split_body(body)


@pytest.fixture
async def source():
    src = HttpSource(listen="127.0.0.1:0", path="/in", max_inflight=2, timeout=2)
    await src.start()
    yield src
    src.stop()
    await src.close()


async def test_answer_comes_only_after_the_ack(source):
    async with aiohttp.ClientSession() as s:
        post = asyncio.create_task(s.post(source.url, data=b'[{"a":1},{"a":2}]'))
        it = source.batches().__aiter__()
        batch = await asyncio.wait_for(it.__anext__(), 2)
        assert batch.items == [b'{"a":1}', b'{"a":2}']
        await asyncio.sleep(0.1)
        assert not post.done()  # not answered before the pipeline acked
        await batch.ack()
        resp = await asyncio.wait_for(post, 2)
        assert resp.status == 200
        assert await resp.json() == {"accepted": 2}


async def test_queued_bodies_share_batches_and_each_is_answered_with_its_last_item():
    src = HttpSource(listen="127.0.0.1:0", path="/in", batch_size=5, timeout=5)
    await src.start()
    try:
        async with aiohttp.ClientSession() as s:
            posts = []
            for name in "abc":  # queued one after the other, before any batch is taken
                posts.append(asyncio.create_task(
                    s.post(src.url, data=f'[{{"{name}":1}},{{"{name}":2}}]'.encode())))
                while src._queue.qsize() < len(posts):
                    await asyncio.sleep(0.01)
            it = src.batches().__aiter__()
            first = await asyncio.wait_for(it.__anext__(), 2)
            assert first.items == [b'{"a":1}', b'{"a":2}', b'{"b":1}', b'{"b":2}', b'{"c":1}']
            await first.ack()
            assert [(await p).status for p in posts[:2]] == [200, 200]
            await asyncio.sleep(0.1)
            assert not posts[2].done()  # its second item is not processed yet
            second = await asyncio.wait_for(it.__anext__(), 2)
            assert second.items == [b'{"c":2}']
            await second.ack()
            resp = await asyncio.wait_for(posts[2], 2)
            assert (resp.status, await resp.json()) == (200, {"accepted": 2})
    finally:
        src.stop()
        await src.close()


async def test_malformed_body_is_400_with_reason(source):
    async with aiohttp.ClientSession() as s:
        resp = await s.post(source.url, data=b"{not json")
        assert resp.status == 400
        assert "neither JSON nor NDJSON" in (await resp.json())["error"]


async def test_backpressure_429_then_503_on_stop(source):
    async with aiohttp.ClientSession() as s:
        pending = [asyncio.create_task(s.post(source.url, data=OBJ)) for _ in range(2)]
        it = source.batches().__aiter__()
        batches = []  # one, or two when the second came after the first was taken
        while sum(len(b.items) for b in batches) < 2:
            batches.append(await asyncio.wait_for(it.__anext__(), 2))
        resp = await s.post(source.url, data=OBJ)
        assert resp.status == 429 and resp.headers["Retry-After"]
        for b in batches:
            await b.ack()
        assert [(await p).status for p in pending] == [200, 200]
        source.stop()
        resp = await s.post(source.url, data=OBJ)
        assert resp.status == 503


async def test_unprocessed_batch_times_out_with_503():
    src = HttpSource(listen="127.0.0.1:0", timeout=0.3)
    await src.start()
    try:
        async with aiohttp.ClientSession() as s:
            resp = await s.post(src.url, data=OBJ)
            assert resp.status == 503
            assert "not processed" in (await resp.json())["error"]
    finally:
        await src.close()


async def test_bodies_in_many_chunks_are_read_whole_and_the_size_bound_holds():
    """A chunked body arrives in several pieces: every item of it is taken,
    in order; past max_body (declared or only counted) it is 413."""
    src = HttpSource(listen="127.0.0.1:0", path="/in", max_body=4096, timeout=5)
    await src.start()
    lines = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * 20) for i in range(100)]  # ~3.4 KB

    async def pieces(data: bytes, size: int):
        for i in range(0, len(data), size):
            yield data[i:i + size]
            await asyncio.sleep(0.001)  # separate chunks on the wire

    try:
        async with aiohttp.ClientSession() as s:
            post = asyncio.create_task(s.post(
                src.url, data=pieces(b"\n".join(lines), 300),
                headers={"Content-Type": "application/x-ndjson"}))
            batch = await asyncio.wait_for(src.batches().__aiter__().__anext__(), 2)
            assert batch.items == lines
            await batch.ack()
            assert (await post).status == 200
            big = b"\n".join(lines * 2)
            for data in (big, pieces(big, 500)):  # Content-Length; chunked, counted
                resp = await s.post(src.url, data=data)
                assert resp.status == 413, data
                assert "larger than 4096" in (await resp.json())["error"]
    finally:
        src.stop()
        await src.close()


def test_integers_beyond_64_bits_are_malformed_not_floats():
    from engine._core import MalformedEvent, decode_event

    for raw in (b'{"a": 123456789012345678901234567890123}', b'{"a": [1, 18446744073709551616]}',
                b'{"a": {"b": -9223372036854775809}}', b'{"s": "x\\"", "a": 99999999999999999999}'):
        ev = decode_event(raw)
        assert type(ev) is MalformedEvent and "beyond 64 bits" in ev.reason, raw
    for raw in (b'{"a": 18446744073709551615, "b": -9223372036854775808}',
                b'{"a": "123456789012345678901234567890123"}', b'{"a": 1234567890123456789012.5}',
                b'{"a": 12345678901234567890123e2, "b": "\\\\", "c": 1}',
                b'{"k\\"123456789012345678901234": 1}'):
        assert type(decode_event(raw)) is dict, raw


def test_big_integer_check_agrees_with_python_on_random_documents():
    import json
    import random

    from engine._core import MalformedEvent, decode_event

    rnd = random.Random(11)
    for _ in range(2000):
        ints = [rnd.choice([rnd.randint(-2**70, 2**70), rnd.randint(-2**63, 2**64 - 1),
                            rnd.randint(-10, 10)]) for _ in range(rnd.randint(1, 4))]
        doc = {"ints": ints, "s": str(rnd.randint(0, 10**30)), "f": rnd.random() * 10**25}
        raw = json.dumps(doc).encode()
        big = any(not -2**63 <= i <= 2**64 - 1 for i in ints)
        ev = decode_event(raw)
        assert (type(ev) is MalformedEvent) == big, raw
        if not big:
            assert ev["ints"] == ints  # exact, not floats
