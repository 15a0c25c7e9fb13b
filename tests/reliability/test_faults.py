"""Faults other than a clean outage: a destination that hangs, the worker
killed (-9) again and again mid-stream, malformed input mixed into a good
stream."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import orjson
import pytest

from engine.config import validate_config_dict
from engine.runtime.worker import Worker
from engine.sources.file import FileSource
from tests.reliability.support import (
    RULE,
    Engine,
    HttpReceiverProcess,
    check_conservation,
    counts,
    delete_topic,
    duplicates,
    free_port,
    make_events,
    make_topic,
    produce_paced,
)

pytestmark = pytest.mark.services


class HungServer:
    """Accepts connections and never answers (reads and discards)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.server: asyncio.base_events.Server | None = None
        self.connections = 0

    async def __aenter__(self) -> HungServer:
        async def hold(reader, writer):
            self.connections += 1
            while await reader.read(65536):
                pass
            writer.close()

        self.server = await asyncio.start_server(hold, sock=self.sock)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()


async def test_hung_destination_times_out_into_the_backlog(kafka, tmp_path):
    items, expected = make_events(5000)
    topic = await make_topic(kafka, f"rel-hung-{uuid.uuid4().hex[:8]}")
    port = free_port()
    async with HungServer() as hung:
        engine = Engine(tmp_path, {
            "sources": [{"kafka": {"bootstrap_servers": kafka, "topics": [topic],
                                   "group_id": f"rel-{uuid.uuid4().hex[:8]}",
                                   "session_timeout_ms": 3000}}],
            "metrics": {"listen": f"127.0.0.1:{port}"},
            "rules": [RULE],
            "actions": [{"action_id": "out", "rule_id": "battery", "channel": "HTTP_FORWARDING",
                         "channel_detail": {"http_forwarding": {
                             "url": f"http://127.0.0.1:{hung.port}/in", "timeout_s": 1}}}],
            "worker": {"state_dir": str(tmp_path / "state")},
        }, port)
        try:
            await engine.start()
            t0 = time.monotonic()
            await produce_paced(kafka, topic, items, 1.0)
            while True:  # every match acked into the backlog, none in flight
                c = counts(await engine.metrics(), "out")
                if c["backlogged"] == len(expected) and c["inflight"] == 0:
                    break
                assert time.monotonic() - t0 < 60, c
                await asyncio.sleep(0.2)
            took = time.monotonic() - t0
            m = await engine.metrics()
            check_conservation(m)
            c = counts(m, "out")
            assert engine.stop() == 0
        finally:
            engine.proc.stop()
            await delete_topic(kafka, topic)
    log = engine.log.read_text()
    assert c["forwarded"] == 0 and c["dead"] == 0
    assert "HTTP timeout after 1 s" in log
    print(f"\nFIGURES hung: events 5000, matching {len(expected)}, connections held "
          f"{hung.connections}, all {len(expected)} in the backlog {took:.1f} s after the "
          f"stream began, forwarded 0, dead-lettered 0")


@pytest.mark.slow
async def test_worker_killed_five_times_delivers_everything(kafka, tmp_path):
    n, kills = 60_000, 5
    items, expected = make_events(n, seed=3)
    topic = await make_topic(kafka, f"rel-crash-{uuid.uuid4().hex[:8]}")
    port = free_port()
    rx = HttpReceiverProcess(tmp_path)
    rx.start()
    engine = Engine(tmp_path, {
        "sources": [{"kafka": {"bootstrap_servers": kafka, "topics": [topic],
                               "group_id": f"rel-{uuid.uuid4().hex[:8]}",
                               "session_timeout_ms": 3000}}],
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "rules": [RULE],
        "actions": [{"action_id": "out", "rule_id": "battery", "channel": "HTTP_FORWARDING",
                     "channel_detail": {"http_forwarding": {"url": rx.url, "timeout_s": 5}}}],
        "worker": {"state_dir": str(tmp_path / "state")},
    }, port)
    try:
        await engine.start()
        t0 = time.monotonic()
        stream = asyncio.create_task(produce_paced(kafka, topic, items, 20.0))
        for k in range(kills):
            await asyncio.sleep(3.0)
            if k == 1:
                rx.kill()      # the destination is down from the 2nd kill to the 4th
            if k == 3:
                rx.start()
            engine.kill9()
            await engine.start()
        await stream
        t_end = time.monotonic()
        deadline = t_end + 90
        while not expected <= set(rx.seqs()) and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
        settle_s = time.monotonic() - t_end
        await engine.settled(0, timeout=30)  # the last incarnation: nothing pending
        check_conservation(await engine.metrics())
        assert engine.stop() == 0
    finally:
        engine.proc.stop()
        rx.proc.stop()
        await delete_topic(kafka, topic)
    seqs = rx.seqs()
    missing = expected - set(seqs)
    print(f"\nFIGURES crash: events {n}, matching {len(expected)}, kill -9 x{kills} "
          f"(destination down ~6 s of it), delivered {len(set(seqs))} distinct / "
          f"{len(seqs)} received, duplicates {duplicates(seqs)}, all delivered {settle_s:.1f} s "
          f"after the stream ended, whole run {time.monotonic() - t0:.1f} s")
    assert not missing, f"{len(missing)} matching events never delivered"
    assert set(seqs) <= expected


def malformed_items() -> list[tuple[bytes, str]]:
    """(input, what the dead letter's reason must mention) - or None: not
    malformed (a JSON object, evaluated normally)."""
    deep_array = b"[" * 10_000 + b"]" * 10_000
    deep_object = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    return [
        (b'{"resource": "device.property", "event":', "invalid JSON"),
        (b"{not json at all}", "invalid JSON"),
        (b"[1, 2, 3]", "object"),
        (b"42", "object"),
        (b"null", "object"),
        (b'"' + b"x" * (10 << 20) + b'"', "object"),                      # a 10 MB string
        (deep_array, "deep"),
        (deep_object, "deep"),
        (b'{"resource": "device.property", "bad": "\xff\xfe"}', "UTF-8"),
        (b"\xc3\x28\xa0\xa1", ""),
    ]


def well_formed_odd_items() -> list[bytes]:
    """JSON objects with wrong types and huge values: not malformed, so
    evaluated (and not matched) - the worker must not fail on them."""
    return [
        b'{"resource": 5, "event": ["report"], "notify_data": "x"}',
        b'{"resource": "device.property", "event": "report", "notify_data": {"body": '
        b'{"services": "not a list"}}}',
        b'{"resource": "device.property", "event": "report", "notify_data": {"body": '
        b'{"services": [{"service_id": "Battery", "properties": {"batteryLevel": "low"}}]}}}',
        b'{"resource": "device.message", "event": "report", "blob": "' + b"y" * (10 << 20) + b'"}',
    ]


async def run_file(tmp_path, name: str, lines: list[bytes]) -> tuple[Worker, float]:
    path = tmp_path / f"{name}.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    d = tmp_path / name
    d.mkdir()
    config = validate_config_dict({
        "rules": [RULE],
        "actions": [{"action_id": "out", "rule_id": "battery", "channel": "FILE_FORWARDING",
                     "channel_detail": {"file_forwarding": {"path": str(d / "out.jsonl")}}}],
        "metrics": {"listen": "127.0.0.1:0"},
        "worker": {"state_dir": str(d / "state")}}, "<test>")
    w = Worker.from_config(config, sources=[FileSource(str(path), batch_size=500)])
    t0 = time.monotonic()
    await asyncio.wait_for(w.run(), 120)
    return w, time.monotonic() - t0


@pytest.mark.slow
async def test_malformed_input_is_dead_lettered_and_the_worker_keeps_going(tmp_path):
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    good, expected = make_events(100_000, seed=5)
    bad = malformed_items()
    odd = well_formed_odd_items()
    mixed: list[bytes] = []
    step = len(good) // len(bad)
    for i, (raw, _) in enumerate(bad):
        mixed += good[i * step:(i + 1) * step] + [raw] + [odd[i % len(odd)]] * (i < len(odd))
    # Best of 3 each, alternating (the machine is shared: single runs are noisy).
    clean_s = mixed_s = float("inf")
    for r in range(3):
        clean_w, s = await run_file(tmp_path, f"clean{r}", good)
        clean_s = min(clean_s, s)
        mixed_w, s = await run_file(tmp_path, f"mixed{r}", mixed)
        mixed_s = min(mixed_s, s)

    t = mixed_w.metrics.totals
    assert t.received == len(good) + len(bad) + len(odd)
    assert t.malformed == len(bad)
    assert t.forwarded == len(expected) == clean_w.metrics.totals.forwarded
    out = [orjson.loads(x)["seq"] for x in (tmp_path / "mixed2/out.jsonl").read_bytes().split()]
    assert sorted(out) == sorted(expected)
    dl = [orjson.loads(x) for x in
          (tmp_path / "mixed2/state/dead-letters.jsonl").read_bytes().splitlines()]
    assert len(dl) == len(bad)
    for (raw, why), entry in zip(bad, dl, strict=True):
        assert entry["source"] == "file" or entry["source"]
        assert why.lower() in entry["reason"].lower() or not why, (entry["reason"], why)
        assert entry["payload"] == raw.decode("utf-8", "replace")
    samples = {}
    for fam in text_string_to_metric_families(generate_latest(mixed_w.metrics.registry).decode()):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    check_conservation(samples)
    clean_rate, mixed_rate = len(good) / clean_s, len(good) / mixed_s
    print(f"\nFIGURES malformed: {len(good)} good + {len(bad)} malformed + {len(odd)} odd "
          f"well-formed (two of them 10 MB); dead-lettered {len(dl)} with reasons; good "
          f"events/s (best of 3) clean {clean_rate:,.0f}, mixed {mixed_rate:,.0f} "
          f"({mixed_rate / clean_rate - 1:+.0%}, {mixed_s - clean_s:+.2f} s); "
          f"reasons: " + "; ".join(sorted({e['reason'][:60] for e in dl})))
