import re
import time

import orjson

from engine.sources.fleet import KINDS, Fleet
from engine.sources.simulator import SimulatorSource

COMPACT = re.compile(r"^\d{8}T\d{6}Z$")
MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _events(n=20000, seed=7, devices=40):
    src = SimulatorSource(rate=1000, devices=devices, seed=seed, start=1.7e9)
    return [orjson.loads(b) for b in src.make(n)]


def test_all_twelve_kinds_with_their_shapes():
    events = _events()
    kinds = {(e["resource"], e["event"]) for e in events}
    assert kinds == set(KINDS)
    for e in events:
        assert COMPACT.match(e["event_time"]) and MS.match(e["event_time_ms"])
        nd = e["notify_data"]
        kind = (e["resource"], e["event"])
        has_header = kind[0].startswith("device.") or kind == ("device", "delete")
        assert ("header" in nd) == has_header, kind
        assert ("body" in nd) == (kind != ("device", "delete")), kind
        if has_header:
            h = nd["header"]
            assert h["device_id"] == f"{h['product_id']}_{h['node_id'].replace(':', '')}"
            assert 1 <= len(h["tags"]) <= 10
        if kind == ("device.property", "report"):
            for s in nd["body"]["services"]:
                assert s["service_id"] in {"Battery", "Temperature", "WaterMeter", "Location",
                                           "Connectivity"}
                assert s["properties"] and (COMPACT.match(s["event_time"]) or MS.match(s["event_time"]))
        if kind == ("device.status", "update"):
            assert nd["body"]["status"] in {"ONLINE", "OFFLINE", "ABNORMAL"}
        if kind == ("batchtask", "update"):
            assert set(nd["body"]) == {"app_id", "task_id", "task_type", "status", "status_desc"}


def test_values_are_plausible_and_sometimes_alarming():
    events = _events()
    batteries, temps = [], []
    for e in events:
        if e["resource"] == "device.property":
            for s in e["notify_data"]["body"]["services"]:
                p = s["properties"]
                if s["service_id"] == "Battery":
                    batteries.append(p["batteryLevel"])
                if s["service_id"] == "Temperature":
                    temps.append(p["temperature"])
    assert batteries and all(0 <= b <= 100 for b in batteries)
    assert temps and all(-10 < t < 60 for t in temps)
    # Spikes exist (rules like `temperature > 38` match sometimes, not always).
    assert 0 < sum(t > 38 for t in temps) < len(temps) * 0.1


def test_deleted_devices_stop_reporting_until_recreated():
    events = _events(30000)
    deleted: set[str] = set()
    for e in events:
        kind = (e["resource"], e["event"])
        if kind == ("device", "delete"):
            deleted.add(e["notify_data"]["header"]["device_id"])
        elif kind == ("device", "create"):
            deleted.discard(e["notify_data"]["body"]["device_id"])
        elif "header" in e["notify_data"]:
            assert e["notify_data"]["header"]["device_id"] not in deleted


def test_same_seed_same_bytes_other_seed_other_bytes():
    a = SimulatorSource(rate=500, seed=3, start=1.7e9).make(2000)
    b = SimulatorSource(rate=500, seed=3, start=1.7e9).make(2000)
    c = SimulatorSource(rate=500, seed=4, start=1.7e9).make(2000)
    assert a == b
    assert a != c


def test_event_times_follow_the_simulated_clock():
    src = SimulatorSource(rate=10, seed=1, start=1_700_000_000.0)
    times = [orjson.loads(b)["event_time_ms"] for b in src.make(21)]
    assert times[0] == "2023-11-14T22:13:20.000Z"
    assert times[20] == "2023-11-14T22:13:22.000Z"


def test_devices_report_only_once_known():
    fleet = Fleet(seed=1, devices=7)
    known = {d.device_id for d in fleet.devices}
    assert len(known) == 7
    for _ in range(3000):
        e = fleet.notification(1.7e9)
        nd = e["notify_data"]
        if (e["resource"], e["event"]) == ("device", "create"):
            known.add(nd["body"]["device_id"])
        elif "header" in nd:
            assert nd["header"]["device_id"] in known


def test_kinds_filter():
    kinds = [("device", "create"), ("product", "delete")]
    src = SimulatorSource(rate=100, seed=2, start=1.7e9, kinds=kinds)
    got = {(e["resource"], e["event"]) for e in map(orjson.loads, src.make(300))}
    assert got == set(kinds)


async def test_rate_and_count_are_bounds():
    src = SimulatorSource(rate=4000, seed=1, count=1000)
    t0 = time.monotonic()
    n = sum([len(b.items) async for b in src.batches()])
    elapsed = time.monotonic() - t0
    assert n == 1000
    # 1000 events at 4000/s: about 0.25 s (one batch is ready at once).
    assert 0.15 < elapsed < 1.5


async def test_duration_bound_and_stop():
    src = SimulatorSource(rate=2000, seed=1, duration=0.3)
    t0 = time.monotonic()
    n = sum([len(b.items) async for b in src.batches()])
    assert 0.25 < time.monotonic() - t0 < 1.5
    assert 300 < n < 900
    src2 = SimulatorSource(rate=100000, seed=1)
    seen = 0
    async for b in src2.batches():
        seen += len(b.items)
        if seen > 5000:
            src2.stop()
    assert seen < 20000
