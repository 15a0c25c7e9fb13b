"""Rule core vs the alternatives a Python user would pick, side by side.

Each contender processes the same list of 10,000 events (the IoTDA
property-report example, ~600 bytes): hand-written Python in a plain loop,
jmespath, and the compiled core through its batch API.

    .venv/bin/python -m pytest benchmarks/bench_core.py --benchmark-only \
        --benchmark-group-by=group --benchmark-columns=min,median,mean,rounds
"""

from __future__ import annotations

import copy

import jmespath
import orjson
import pytest

import engine

N = 10_000
EVENT = {
    "resource": "device.property", "event": "report", "event_time": "20151212T121212Z",
    "event_time_ms": "2015-12-12T12:12:12.000Z",
    "request_id": "3fe58d5e-8697-4849-a165-7db128f7e776",
    "notify_data": {
        "header": {"device_id": "d4922d8a-6c8e-4396-852c-164aefa6638f",
                   "product_id": "ABC123456789",
                   "app_id": "d4922d8a-6c8e-4396-852c-164aefa6638f",
                   "gateway_id": "d4922d8a-6c8e-4396-852c-164aefa6638f",
                   "node_id": "ABC123456789",
                   "tags": [{"tag_value": "testTagValue", "tag_key": "testTagName"}]},
        "body": {"services": [{"service_id": "Battery",
                               "properties": {"batteryLevel": 80, "voltage": 3.7},
                               "event_time": "20151212T121212Z"}]},
    },
}
RAW = orjson.dumps(EVENT)
EVENTS = [orjson.loads(RAW) for _ in range(N)]   # decoded like the runtime does
# The runtime evaluates each event right after decoding it, while it is in the
# CPU cache; 10,000 distinct decoded events (~15 MB) are not. HOT cycles 50
# decoded events, so both situations are measured.
HOT = [orjson.loads(RAW) for _ in range(50)] * (N // 50)

WHERE = ("notify_data.header.product_id = 'ABC123456789' "
         "AND notify_data.body.services[0].properties.batteryLevel > 50")
SELECT = ("notify_data.header.device_id AS device_id, "
          "notify_data.body.services[0].properties.batteryLevel AS level")


def hand_where(e):
    try:
        return (e["notify_data"]["header"]["product_id"] == "ABC123456789"
                and e["notify_data"]["body"]["services"][0]["properties"]["batteryLevel"] > 50)
    except (KeyError, IndexError, TypeError):
        return False


def hand_apply(e):
    try:
        if not (e["notify_data"]["header"]["product_id"] == "ABC123456789"
                and e["notify_data"]["body"]["services"][0]["properties"]["batteryLevel"] > 50):
            return None
        return {"device_id": e["notify_data"]["header"]["device_id"],
                "level": e["notify_data"]["body"]["services"][0]["properties"]["batteryLevel"]}
    except (KeyError, IndexError, TypeError):
        return None


JMES = jmespath.compile("notify_data.header.product_id == 'ABC123456789' && "
                        "notify_data.body.services[0].properties.batteryLevel > `50`")


def run(benchmark, fn, rounds=30):
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=2)


# ------------------------------------------------------------ WHERE only

# Two lists of 10,000 events: distinct decoded events (cache-cold) and 50
# events cycled (cache-hot, as in the runtime). One group per list.
WHERE_LISTS = {"cold": EVENTS, "hot": HOT}


def _where_group(benchmark, which):
    benchmark.group = ("where: 10k decoded events" if which == "cold"
                       else "where: 10k evaluations, cache-hot events")
    return WHERE_LISTS[which]


@pytest.mark.parametrize("which", WHERE_LISTS)
def test_where_hand_written(benchmark, which):
    events = _where_group(benchmark, which)
    assert all(run(benchmark, lambda: [hand_where(e) for e in events]))


@pytest.mark.parametrize("which", WHERE_LISTS)
def test_where_core(benchmark, which):
    events = _where_group(benchmark, which)
    rule = engine.compile_rule(None, WHERE)
    assert all(run(benchmark, lambda: rule.matches_many(events)))


@pytest.mark.parametrize("which", WHERE_LISTS)
def test_where_jmespath(benchmark, which):
    events = _where_group(benchmark, which)
    assert all(run(benchmark, lambda: [JMES.search(e) for e in events], rounds=5))


# ------------------------------------------------------------ SELECT + WHERE

@pytest.mark.benchmark(group="select+where: 10k decoded events")
def test_apply_hand_written(benchmark):
    out = run(benchmark, lambda: [hand_apply(e) for e in EVENTS])
    assert out[0] == {"device_id": "d4922d8a-6c8e-4396-852c-164aefa6638f", "level": 80}


@pytest.mark.benchmark(group="select+where: 10k decoded events")
def test_apply_core(benchmark):
    rule = engine.compile_rule(SELECT, WHERE)
    out = run(benchmark, lambda: rule.apply_many(EVENTS))
    assert out[0] == {"device_id": "d4922d8a-6c8e-4396-852c-164aefa6638f", "level": 80}


# ------------------------------------------------------------ raw bytes, 1% matching

def _raw_events():
    """10,000 encoded events of 100 products; product P0 (1%) matches."""
    out = []
    for i in range(N):
        ev = copy.deepcopy(EVENT)
        ev["notify_data"]["header"]["product_id"] = f"P{i % 100}"
        out.append(orjson.dumps(ev))
    return out


RAWS = _raw_events()
RAW_WHERE = "notify_data.header.product_id = 'P0' AND notify_data.body.services[0].properties.batteryLevel > 50"


@pytest.mark.benchmark(group="raw bytes -> decision, 1% match")
def test_raw_orjson_loads_only(benchmark):
    def go():
        for b in RAWS:       # decode and drop, as a filter would
            orjson.loads(b)
    run(benchmark, go, rounds=10)


@pytest.mark.benchmark(group="raw bytes -> decision, 1% match")
def test_raw_orjson_then_hand_written(benchmark):
    def go():
        out = []
        for b in RAWS:
            e = orjson.loads(b)
            out.append(e["notify_data"]["header"]["product_id"] == "P0"
                       and e["notify_data"]["body"]["services"][0]["properties"]["batteryLevel"] > 50)
        return out
    assert sum(run(benchmark, go, rounds=10)) == N // 100


@pytest.mark.benchmark(group="raw bytes -> decision, 1% match")
def test_raw_core_prefilter(benchmark):
    rule = engine.compile_rule(None, RAW_WHERE)
    out = run(benchmark, lambda: rule.apply_raw_many(RAWS), rounds=10)
    assert sum(o is not None for o in out) == N // 100


# ------------------------------------------------------------ many rules

def _ruleset(n_rules):
    """Rule 0 selects product P0 (1% of the events); the others select
    products that do not occur, so every size forwards the same outputs and
    the difference is the cost of finding the rules."""
    specs = [engine.RuleSpec(i, SELECT, f"notify_data.header.product_id = '{'P' if i == 0 else 'Q'}{i}' "
                             "AND notify_data.body.services[0].properties.batteryLevel > 50",
                             "device.property", "report")
             for i in range(n_rules)]
    return engine.compile_ruleset(specs)


MANY = [orjson.loads(b) for b in RAWS]


@pytest.mark.parametrize("n_rules", [1, 100, 1000, 10_000])
@pytest.mark.benchmark(group="rule set: 10k events, N rules on product_id")
def test_ruleset_scaling(benchmark, n_rules):
    rs = _ruleset(n_rules)
    out = run(benchmark, lambda: rs.evaluate_many(MANY), rounds=10)
    assert sum(len(r) for r in out) == N // 100


# ------------------------------------------------------------ the two dialects

def _messages():
    """10,000 Alibaba custom-topic messages of 100 devices as the MQTT source
    makes them (engine.sources.alink); half have temp > 30."""
    out = []
    for i in range(N):
        dev = f"dev{i % 100}"
        out.append(orjson.dumps({
            "resource": "device.message", "event": "report", "event_time": "20151212T121212Z",
            "request_id": f"r{i}",
            "notify_data": {"header": {"device_id": f"a1pk_{dev}", "product_id": "a1pk",
                                       "node_id": dev, "gateway_id": f"a1pk_{dev}"},
                            "body": {"topic": f"/a1pk/{dev}/user/update",
                                     "content": {"temp": 20 + i % 20, "hum": 40}}}}))
    return out


MESSAGES = _messages()
# The same rule written in each dialect: what an Alibaba rule compiles to is
# what the IoTDA rule says explicitly, so the two should cost the same.
DIALECT_RULES = {
    "iotda": engine.RuleSpec(
        "r", "notify_data.header.node_id AS dev, notify_data.body.content.temp AS temp",
        "notify_data.body.topic = '/a1pk/dev15/user/update' "
        "AND notify_data.body.content.temp > 30", "device.message", "report"),
    "aliyun": engine.RuleSpec("r", "deviceName() AS dev, temp", "temp > 30", "device.message",
                              "report", dialect="aliyun", topic="/a1pk/dev15/user/update"),
    "iotda-wildcard": engine.RuleSpec(
        "r", "notify_data.header.node_id AS dev, notify_data.body.content.temp AS temp",
        "regex_match(notify_data.body.topic, '^/a1pk/[^/]*/user/update$') = true "
        "AND notify_data.body.content.temp > 30", "device.message", "report"),
    "aliyun-wildcard": engine.RuleSpec("r", "deviceName() AS dev, temp", "temp > 30",
                                       "device.message", "report", dialect="aliyun",
                                       topic="/a1pk/+/user/update"),
}


@pytest.mark.parametrize("dialect", list(DIALECT_RULES))
@pytest.mark.benchmark(group="dialects: raw bytes -> routed outputs, 10k device messages")
def test_dialect_same_rule(benchmark, dialect):
    rs = engine.compile_ruleset([DIALECT_RULES[dialect]])
    out = run(benchmark, lambda: rs.route_raw_many(MESSAGES), rounds=20)
    matched = [r[3][0][1] for r in out if r is not None]
    assert len(matched) == (N // 100 if "wildcard" not in dialect else N * 9 // 20)
    assert matched[0]["temp"] > 30 and set(matched[0]) == {"dev", "temp"}


# ------------------------------------------------------------ FOREACH (issue 15)

FIVE = copy.deepcopy(EVENT)
FIVE["notify_data"]["body"]["services"] = [
    {"service_id": f"S{i}", "properties": {"value": i * 10, "unit": "C"},
     "event_time": "20151212T121212Z"} for i in range(5)]
FIVE_EVENTS = [orjson.loads(orjson.dumps(FIVE)) for _ in range(50)] * (N // 50)
FOREACH = ("FOREACH notify_data.body.services AS s DO notify_data.header.device_id AS device, "
           "s.service_id AS service, s.properties.value AS value INCASE s.properties.value > 0")


def hand_foreach(e):
    out = []
    try:
        device = e["notify_data"]["header"]["device_id"]
        for s in e["notify_data"]["body"]["services"]:
            try:
                v = s["properties"]["value"]
            except (KeyError, TypeError):
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                out.append({"device": device, "service": s["service_id"], "value": v})
    except (KeyError, TypeError):
        pass
    return out


@pytest.mark.benchmark(group="FOREACH: 10k reports of 5 services -> 4 outputs each")
def test_foreach_hand_written(benchmark):
    out = run(benchmark, lambda: [hand_foreach(e) for e in FIVE_EVENTS])
    assert len(out[0]) == 4


@pytest.mark.benchmark(group="FOREACH: 10k reports of 5 services -> 4 outputs each")
def test_foreach_core(benchmark):
    rule = engine.compile_rule(FOREACH, None)
    out = run(benchmark, lambda: rule.apply_many(FIVE_EVENTS))
    assert out[0] == hand_foreach(FIVE_EVENTS[0])


# ------------------------------------------------- sparse decoding (issue 16)

SIMULATED = __import__("engine.sources.simulator", fromlist=["SimulatorSource"]) \
    .SimulatorSource(rate=10_000, devices=1000, seed=1, start=1.7e9).make(N)
SPARSE_RULES = {
    "broad": engine.RuleSpec("r", "notify_data.header.device_id AS device_id, event_time", None,
                             "device.property", "report"),
    "whole": engine.RuleSpec("r", None,
                             "notify_data.header.product_id <> '1027c4d1c386bbc4cd613e30'",
                             "device.property", "report"),
}


@pytest.mark.parametrize("decode", ["whole", "sparse"])
@pytest.mark.parametrize("rule", list(SPARSE_RULES))
@pytest.mark.benchmark(group="sparse decoding: route_raw_many, 10k simulated notifications")
def test_route_sparse_or_whole(benchmark, rule, decode):
    """The same rule set decoding every notification whole (what it did
    before) or only the members its rule reads (engine/_sparse.pxi)."""
    rs = engine.compile_ruleset([SPARSE_RULES[rule]])
    assert rs.sparse is not None
    if decode == "whole":
        rs.sparse = None
    out = run(benchmark, lambda: rs.route_raw_many(SIMULATED), rounds=20)
    events = [orjson.loads(x) for x in SIMULATED]
    expected = sum(e["resource"] == "device.property" and e["event"] == "report" and (
        rule == "broad" or e["notify_data"]["header"]["product_id"] != "1027c4d1c386bbc4cd613e30")
        for e in events)
    assert sum(r is not None for r in out) == expected
