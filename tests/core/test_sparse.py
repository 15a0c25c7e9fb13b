"""Sparse decoding: a rule set that reads known members decodes only those
(engine/_sparse.pxi, engine/language/reads.py). Whatever it skips, routing
must give what decoding the whole notification gives."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import RuleSpec, compile_ruleset
from engine._core import MalformedEvent, Record, SparseReader
from engine.language import parse_rule
from engine.language.reads import merge, rule_reads
from engine.sources.simulator import SimulatorSource

CONFORMANCE = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "public.jsonl"


def whole_and_sparse(specs):
    sparse = compile_ruleset(specs)
    whole = compile_ruleset(specs)
    whole.sparse = None
    return whole, sparse


def assert_same_routes(specs, datas):
    """route_raw_many with and without the sparse reader agree on every input."""
    whole, sparse = whole_and_sparse(specs)
    assert sparse.sparse is not None, "these rules should read known members only"
    for data, a, b in zip(datas, whole.route_raw_many(datas), sparse.route_raw_many(datas),
                          strict=True):
        if a is None or isinstance(a, MalformedEvent):
            assert a == b, data
            continue
        event, key, et, matches = a
        s_event, s_key, s_et, s_matches = b
        assert (s_key, s_et, s_matches) == (key, et, matches), data
        # The full event is the input's bytes decoded (what a record's
        # payload becomes when a sink reads it).
        assert s_event is None or s_event == event
        assert orjson.loads(data) == event
    assert whole.take_kinds() == sparse.take_kinds()


RULES = [
    RuleSpec("broad", "notify_data.header.device_id AS device_id, event_time", None,
             "device.property", "report"),
    RuleSpec("whole", None, "notify_data.header.product_id <> '1027c4d1c386bbc4cd613e30'",
             "device.property", "report"),
    RuleSpec("battery", "notify_data.header.device_id AS d, "
             "GET_SERVICE_PROPERTY('Battery', 'batteryLevel') AS level",
             "GET_SERVICE_PROPERTY('Battery', 'batteryLevel') < 30"),
    RuleSpec("tags", "GET_TAG('site') AS site, notify_data.body.status",
             "CONTAINS_TAG('floor')", "device.status", "update"),
    RuleSpec("app", "notify_data.header AS h", None, app_id="a1b2c3d4e5f60718293a4b5c"),
    RuleSpec("index", "notify_data.header.tags[0].tag_value AS first",
             "notify_data.header.node_id LIKE '%1%' AND event_time > '2023'"),
]


def test_simulated_notifications_route_the_same():
    datas = SimulatorSource(rate=10_000, devices=50, seed=7, start=1.7e9).make(3000)
    assert_same_routes(RULES, datas)
    # Every rule matched something: the comparison is not vacuous.
    whole, _ = whole_and_sparse(RULES)
    hit = {k for r in whole.route_raw_many(datas) if type(r) is tuple for k, _ in r[3]}
    assert hit == {s.key for s in RULES}


def test_conformance_cases_route_the_same():
    cases = [json.loads(line) for line in CONFORMANCE.read_text().splitlines() if line.strip()]
    checked = 0
    for case in cases:
        specs = [RuleSpec("r", case.get("select"), case.get("where"))]
        try:
            if rule_reads(parse_rule(case.get("select"), case.get("where"))) is None:
                continue
        except Exception:
            continue   # a case about an invalid rule
        event = case["event"]
        datas = [orjson.dumps(event), json.dumps(event, indent=1).encode()]
        assert_same_routes(specs, datas)
        checked += 1
    assert checked >= 40


EDGE_CASES = [
    # duplicate members: the last one counts, also for an object on the path
    b'{"resource":"x","resource":"device.property","event":"report",'
    b'"notify_data":{"header":{"device_id":"a"}},"notify_data":{"header":{"node_id":"n"}}}',
    b'{"notify_data":{"header":{"device_id":"a","device_id":"b"}},"event_time":"1",'
    b'"event_time":"2"}',
    b'{"notify_data":{"header":{"device_id":"a"}},"notify_data":7}',
    b'{"notify_data":{"header":{"device_id":"a"}},"notify_data":[{"header":{}}]}',
    # members on the path that are not objects, nested arrays, empty containers
    b'{"notify_data":{"header":[],"body":{"device_id":"b"}}}',
    b'{"notify_data":{"header":{"tags":[],"device_id":{}}},"resource":[]}',
    b'{"notify_data":{"header":{"tags":[{"tag_key":"floor"},{"tag_key":"site","tag_value":'
    b'"s1"}]}},"resource":"device.status","event":"update"}',
    # whitespace, numbers, unicode, long but valid numbers
    b' {\n "event_time" : "2024" ,\t"notify_data":{ "header" : { "device_id" : "\xc3\xa9" } } } ',
    b'{"event_time":1.5e3,"notify_data":{"header":{"device_id":-0,"app_id":1E-2}}}',
    b'{"resource":"device.property","notify_data":{"body":{"services":[{"service_id":'
    b'"Battery","properties":{"batteryLevel":-12.50}}]}}}',
    # what is decoded whole: escapes, 19+ digit runs, malformed input
    b'{"notify_data":{"header":{"device_id":"a\\u00e9"}},"event_time":"x"}',
    b'{"notify_data":{"header":{"device_id":"a"}},"n":123456789012345678901234567890}',
    b'{"notify_data":{"header":{"device_id":"a"}},"n":1234567890123456789}',
    b'{"notify_data":{"header":{"device_id":"a"}},}',
    b'{"notify_data":{"header":{"device_id":"a"}}',
    b'{"notify_data":{"header":{"device_id":"\xff"}}}',
    b'{"a":1} {"b":2}',
    b'[{"notify_data":{}}]',
    b'"text"',
    b'',
    b'{"a":' + b'[' * 500 + b']' * 500 + b'}',
]


def test_edge_cases_route_the_same():
    assert_same_routes(RULES + [RuleSpec("all", "event_time AS t", None)], EDGE_CASES)


def test_duplicates_keep_the_last_member():
    r = SparseReader(merge([("a",), ("b", "c"), ("b", "d", "e")]))
    assert r.read_bytes(b'{"b":{"c":1},"b":{"d":{"e":null}}}') == {"b": {"d": {"e": None}}}
    assert r.read_bytes(b'{"b":{"c":1},"b":3,"a":2,"a":[1]}') == {"a": [1]}
    assert r.read_bytes(b'{"a":{"z":[{}]},"b":5}') == {"a": {"z": [{}]}}
    # only the read members are built
    assert r.read_bytes(b'{"a":1,"b":{"c":"x","d":{"e":[1,2],"f":3}},"g":4}') == \
        {"a": 1, "b": {"c": "x", "d": {"e": [1, 2]}}}
    # decoded whole instead
    for data in (b'{"a":"\\n"}', b'{"a":1,}', b"[1]", b'{"a":12345678901234567890}'):
        assert r.read_bytes(data) is None


def _json_values(depth: int):
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5))
    keys = st.sampled_from(["resource", "event", "event_time", "notify_data", "header", "body",
                            "device_id", "tags", "tag_key", "tag_value", "x"])
    return st.recursive(leaf, lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(st.tuples(keys, inner), max_size=4)), max_leaves=12)


def _text(v) -> bytes:
    """JSON text; a list of pairs is an object, duplicate keys kept."""
    if isinstance(v, list) and v and all(isinstance(p, tuple) for p in v):
        return b"{" + b",".join(orjson.dumps(k) + b":" + _text(x) for k, x in v) + b"}"
    if isinstance(v, list):
        return b"[" + b",".join(_text(x) for x in v) + b"]"
    if isinstance(v, tuple):
        return _text([v])
    return orjson.dumps(v)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["resource", "event", "event_time", "notify_data",
                                           "x"]), _json_values(4)), max_size=5))
def test_random_documents_route_the_same(members):
    data = b"{" + b",".join(orjson.dumps(k) + b":" + _text(v) for k, v in members) + b"}"
    assert_same_routes([RuleSpec("a", "notify_data.header.device_id AS d, notify_data.header",
                                 "event_time IS NOT NULL OR resource = 'r'"),
                        RuleSpec("b", "notify_data.body.tags AS t", None)], [data])


@pytest.mark.parametrize(("select", "where", "reads"), [
    ("notify_data.header.device_id AS d, event_time", None,
     {("notify_data", "header", "device_id"), ("event_time",)}),
    ("*", "notify_data.header.product_id = 'p'", {("notify_data", "header", "product_id")}),
    (None, None, set()),
    ("a[2].b AS x", "upper(c.d) = 'X'", {("a",), ("c", "d")}),
    ("GET_SERVICE('S') AS s", None, {("resource",), ("notify_data", "body", "services")}),
    ("*, event_time AS t", None, None),
    ("FOREACH notify_data.body.services AS s DO s.service_id AS id", None, None),
])
def test_what_a_rule_reads(select, where, reads):
    assert rule_reads(parse_rule(select, where)) == reads


def test_a_rule_that_reads_everything_turns_sparse_off():
    assert compile_ruleset([RuleSpec("a", "*, event_time AS t", None)]).sparse is None
    assert compile_ruleset([RuleSpec("a", "event_time AS t", None)]).sparse is not None
    many = [RuleSpec(i, f"m{i} AS v", None) for i in range(SparseReader.limit())]
    assert compile_ruleset(many).sparse is None


def test_merge_drops_paths_inside_others():
    assert merge([("a", "b"), ("a",), ("c", "d"), ("c", "e", "f"), ("c", "d", "g")]) == \
        [("a",), ("c", "d"), ("c", "e", "f")]


def test_whole_output_record_decodes_its_payload_only_when_read():
    rs = compile_ruleset([RuleSpec("r", None, "event_time = '1'")])
    data = b'{"event_time":"1","n":1.50,"o":{"k":[1]}}'
    (event, _, _, [(_, out)]), = rs.route_raw_many([data])
    assert event is None and out is data
    rec = Record(event, "k", "1", "r", "a", out)
    assert rec.json_bytes() is data
    assert rec.payload == {"event_time": "1", "n": 1.5, "o": {"k": [1]}}
    assert rec == Record(orjson.loads(data), "k", "1", "r", "a", data)


def test_alibaba_dialect_rules_route_the_same():
    from tests.language.test_aliyun_dialect import EXAMPLES, message

    payloads = [{"temp": 31, "hum": 2}, {"items": {"t": {"value": 3}}}, [1, 2], "x"]
    selects = [f"{expr} AS v" for expr, _, _ in EXAMPLES] + [
        "*", "*, deviceName() AS dn", "thingPropertyFlatMapNotify() AS flat, items.t.value"]
    datas = [orjson.dumps(message(p)) for p in payloads + [p for _, p, _ in EXAMPLES]]
    for select in selects:
        specs = [RuleSpec("r", select, None, dialect="aliyun"),
                 RuleSpec("w", "*", "temp > 30", dialect="aliyun")]
        assert_same_routes(specs, datas)


def test_json_bytes_is_the_payload_encoded_small_or_large():
    # Small outputs are copied out of orjson's buffer (Record.json_bytes);
    # the bytes are the same either way, on both sides of the size limit.
    for n in (0, 1, 400, 470, 471, 472, 480, 500, 5000):
        payload = {"s": "é" * (n // 2) + "x" * (n - n // 2), "n": [1, 2.5, None, True]}
        rec = Record(payload, "k")
        assert rec.json_bytes() == orjson.dumps(payload)
        assert orjson.loads(rec.json_bytes()) == payload
