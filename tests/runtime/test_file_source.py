from engine.sources.file import FileSource


async def test_ndjson_lines_in_batches_blank_lines_skipped(tmp_path):
    p = tmp_path / "in.ndjson"
    lines = [b'{"n": %d}' % i for i in range(25)]
    p.write_bytes(b"\n".join(lines[:10]) + b"\n\n  \n" + b"\n".join(lines[10:]) + b"\n")
    src = FileSource(str(p), batch_size=10)
    batches = [b async for b in src.batches()]
    assert [i for b in batches for i in b.items] == lines
    assert max(len(b.items) for b in batches) <= 10
    assert src.bytes_read == p.stat().st_size


async def test_no_trailing_newline_and_malformed_lines_pass_through(tmp_path):
    p = tmp_path / "in.ndjson"
    p.write_bytes(b'{"a":1}\nnot json\n{"b":2}')
    items = [i async for b in FileSource(str(p)).batches() for i in b.items]
    assert items == [b'{"a":1}', b"not json", b'{"b":2}']


async def test_stop_ends_the_replay(tmp_path):
    p = tmp_path / "in.ndjson"
    p.write_bytes(b'{"a":1}\n' * 1000)
    src = FileSource(str(p), batch_size=100)
    n = 0
    async for b in src.batches():
        n += len(b.items)
        src.stop()
    assert n == 100
