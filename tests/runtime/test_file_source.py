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


async def test_parts_read_every_line_exactly_once(tmp_path):
    """`engine run --workers N` divides a file by byte ranges: whatever the
    line lengths, blank lines, a missing last newline or more parts than
    lines, the parts in order are the file's lines in order."""
    import random

    rnd = random.Random(7)
    p = tmp_path / "in.ndjson"
    for case in range(40):
        lines = [b'{"n": %d, "pad": "%s"}' % (i, b"x" * rnd.choice((0, 1, 5, 300, 5000)))
                 for i in range(rnd.choice((0, 1, 2, 3, 17, 200)))]
        blanks = [b"", b"  "] if case % 3 == 0 else []
        text = b"\n".join(lines + blanks + lines[:1])
        if case % 2:
            text += b"\n"
        p.write_bytes(text)
        expected = [s for s in map(bytes.strip, text.split(b"\n")) if s]
        for n in (1, 2, 3, 5, 8):
            got, read = [], 0
            for i in range(n):
                src = FileSource(str(p), batch_size=rnd.choice((1, 3, 1000)))
                src.part = (i, n)
                got += [item async for b in src.batches() for item in b.items]
                read += src.bytes_read
            assert got == expected, (case, n)
            assert read == len(text), (case, n)  # nothing read twice or skipped
