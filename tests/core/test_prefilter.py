"""The raw-bytes pre-filter never drops an event that would match.

For random events, encoded the ways real producers encode JSON (orjson,
json.dumps with and without ASCII escaping, extra whitespace), the raw form
must give exactly what decoding first and then evaluating gives.
"""

from __future__ import annotations

import json

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine.language.parser import parse_where
from engine.language.prefilter import derive_prefilter

WORDS = ["a", "ab", "abc", "Battery", "Temp", "P0", "P1", "x\"y", "back\\slash", "温度", "a/b",
         "", "%", "_", "device.property", "report", "tag1", "line\nbreak", "é"]
word = st.sampled_from(WORDS)
# Numbers near the rules' constants, in many spellings once encoded (5, 5.0,
# -0.0, 1e+300), and integers beyond the exact range of a double.
number = st.one_of(st.integers(-5, 5), st.floats(-5, 5, allow_nan=False),
                   st.sampled_from([2**53, 2**53 + 1, -(2**60) - 1, 10**17 + 1, 1e300, -1e-300, 0.1, 2.5]))
scalar = st.one_of(word, number, st.booleans(), st.none())

event_strategy = st.fixed_dictionaries({
    "resource": st.sampled_from(["device.property", "device.message", "device"]),
    "event": st.sampled_from(["report", "update", "create"]),
    "notify_data": st.fixed_dictionaries({
        "header": st.fixed_dictionaries({
            "product_id": st.one_of(word, scalar),
            "device_id": word,
            "tags": st.lists(st.fixed_dictionaries({"tag_key": word, "tag_value": scalar}), max_size=3),
        }),
        "body": st.fixed_dictionaries({
            "topic": st.one_of(word, scalar),
            "services": st.lists(st.fixed_dictionaries({
                "service_id": word,
                "properties": st.dictionaries(word, scalar, max_size=3)}), max_size=3),
        }),
    }),
    "data": st.dictionaries(word, st.one_of(scalar, st.lists(scalar, max_size=3)), max_size=4),
})

# Rule literals may not hold control characters; events may.
lit = st.sampled_from([w for w in WORDS if "\n" not in w]).map(
    lambda w: "'" + w.replace("'", "''") + "'")
path = st.sampled_from(["notify_data.header.product_id", "notify_data.body.topic",
                        "notify_data.header.device_id", "data.a", "data.ab", "resource"])
pattern = st.lists(st.sampled_from(["%", "_", "a", "b", "ab", "温度", "x\"y"]), max_size=4).map(
    lambda parts: "'" + "".join(parts).replace("'", "''") + "'")

num_path = st.sampled_from(["notify_data.header.product_id", "data.a", "data.ab", "notify_data.body.topic",
                            "GET_SERVICE_PROPERTY('Battery', 'a')", "GET_SERVICE_PROPERTY('Temp', 'ab')",
                            "GET_TAG('tag1')", "data.a[0]"])
num_op = st.sampled_from(["<", "<=", ">", ">=", "=", "<>", "!="])
num_const = st.sampled_from(["0", "-0", "5", "-5", "2.5", "-0.5", "7", "-7", "3", "1000000000000000000000.5", "9007199254740992",
                             "9007199254740993", "100000000000000001", "0.1"])

leaf = st.one_of(
    st.builds(lambda p, v: f"{p} = {v}", path, lit),
    st.builds(lambda p, v: f"{v} = {p}", path, lit),
    st.builds(lambda p, vs: f"{p} IN ({', '.join(vs)})", path, st.lists(lit, min_size=1, max_size=3)),
    st.builds(lambda p, v: f"{p} LIKE {v}", path, pattern),
    st.builds(lambda p, v: f"{p} NOT LIKE {v}", path, pattern),
    st.builds(lambda p, v: f"STARTS_WITH({p}, {v})", path, lit),
    st.builds(lambda p, v: f"ENDS_WITH({p}, {v})", path, lit),
    st.builds(lambda v: f"CONTAINS_TAG({v})", lit),
    st.builds(lambda v: f"GET_TAG({v}) = {v}", lit),
    st.builds(lambda v, f: f"CONTAINS_SERVICES({v}, {f})", lit, st.sampled_from(["true", "false"])),
    st.builds(lambda v, k: f"GET_SERVICE_PROPERTY({v}, {k}) = {k}", lit, lit),
    st.builds(lambda p: f"{p} IS NULL", path),
    st.builds(lambda p, op, c: f"{p} {op} {c}", num_path, num_op, num_const),
    st.builds(lambda p, op, c: f"{c} {op} {p}", num_path, num_op, num_const),
    st.builds(lambda p, a, b: f"{p} BETWEEN {a} AND {b}", num_path, num_const, num_const),
    st.builds(lambda p, a, b: f"{p} NOT BETWEEN {a} AND {b}", num_path, num_const, num_const),
)
where_strategy = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"({a}) AND ({b})", inner, inner),
        st.builds(lambda a, b: f"({a}) OR ({b})", inner, inner),
        st.builds(lambda a: f"NOT ({a})", inner),
    ),
    max_leaves=5,
)


def encodings(event):
    yield orjson.dumps(event)
    yield json.dumps(event).encode()                              # ASCII escapes
    yield json.dumps(event, ensure_ascii=False).encode()          # raw UTF-8
    yield json.dumps(event, ensure_ascii=False, indent=1, separators=(" ,", " : ")).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=where_strategy, events=st.lists(event_strategy, min_size=1, max_size=4))
def test_raw_form_equals_decoded_form(where, events):
    rule = engine.compile_rule("notify_data.header.device_id AS d", where)
    for ev in events:
        expected = rule.apply(ev)
        for raw in encodings(ev):
            assert rule.apply_raw(raw) == expected, (where, raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wheres=st.lists(where_strategy, min_size=1, max_size=5),
       events=st.lists(event_strategy, min_size=1, max_size=4))
def test_ruleset_raw_form_equals_decoded_form(wheres, events):
    specs = [engine.RuleSpec(i, None, w, resource="device.property" if i % 2 else None)
             for i, w in enumerate(wheres)]
    rs = engine.compile_ruleset(specs)
    for ev in events:
        expected = rs.evaluate(ev)
        for raw in encodings(ev):
            assert rs.evaluate_raw(raw) == expected, (wheres, raw)


def test_prefilter_rejects_without_decoding_and_keeps_matches():
    rule = engine.compile_rule(None, "notify_data.header.product_id = 'P0'")
    assert rule.prefilter is not None
    hit = orjson.dumps({"notify_data": {"header": {"product_id": "P0"}}})
    miss = orjson.dumps({"notify_data": {"header": {"product_id": "P1"}}})
    assert rule.prefilter.check(hit) and not rule.prefilter.check(miss)
    assert rule.apply_raw(hit) is not None and rule.apply_raw(miss) is None


def test_needles_derived_from_where():
    cnf = derive_prefilter(parse_where(
        "resource = 'device.property' AND (a LIKE 'ab%cd' OR b IN ('x', 'y'))"))
    as_sets = {frozenset(c) for c in cnf}
    assert frozenset({b'"device.property"'}) in as_sets
    # OR distributes: each side contributes one needle per clause.
    assert frozenset({b'"ab', b'"x"', b'"y"'}) in as_sets
    assert frozenset({b'cd"', b'"x"', b'"y"'}) in as_sets


def test_nothing_derived_under_not():
    # NOT inverts: a needle of the operand says nothing about the negation.
    assert derive_prefilter(parse_where("NOT a = 5 AND NOT b = 'x' AND a.b NOT BETWEEN 1 AND 2")) == []


def test_numeric_comparisons_parse_the_numbers():
    """`member OP number` is checked on every `"member":` value in the bytes,
    parsed as a number whatever its spelling."""
    rule = engine.compile_rule(None, "GET_SERVICE_PROPERTY('Battery', 'level') < 10 AND data.t >= -2.5")
    pf = rule.prefilter

    def raw(level, t, spacing=""):
        return (b'{"resource":"device.property","notify_data":{"body":{"services":[{"service_id":"Battery",'
                b'"properties":{"level"' + spacing.encode() + b":" + spacing.encode() + level + b'}}]}},'
                b'"data":{"t":' + t + b"}}")

    assert pf.check(raw(b"9", b"0")) and pf.check(raw(b"9.99e0", b"-2.5", " ")) and pf.check(raw(b"-1E2", b"3"))
    for level, t in ((b"10", b"0"), (b"1e1", b"0"), (b"10.0", b"0"), (b'"5"', b"0"), (b"null", b"0"),
                     (b"true", b"0"), (b"[5]", b"0"), (b"5", b"-2.6"), (b"5", b'"3"')):
        assert not pf.check(raw(level, t)), (level, t)
    # A longer integer than a double holds exactly is let through, not parsed.
    assert pf.check(raw(b"12345678901234567", b"0"))
    # The name as a string value, not a member, does not count.
    assert not pf.check(b'{"x":"level","data":{"t":0},"properties":{"level":11},"y":[1]}')
    # Invalid JSON is never skipped: it is decoded and reported.
    assert pf.check(b'{"level": 50, "data": {"t": 0}')


near = st.one_of(st.integers(-7, 7), st.floats(-7, 7, allow_nan=False), st.sampled_from(
    [2**53, 2**53 + 1, 10**17 + 1, 1e300, -0.0, 0.1, 2.5, 2.4999999999999996, 1e21, "5", None, True]))
numeric_event = st.fixed_dictionaries({
    "resource": st.just("device.property"), "event": st.just("report"),
    "notify_data": st.fixed_dictionaries({
        "header": st.fixed_dictionaries({"product_id": near}),
        "body": st.fixed_dictionaries({"services": st.lists(st.fixed_dictionaries({
            "service_id": st.sampled_from(["Battery", "Temp"]),
            "properties": st.fixed_dictionaries({"a": near})}), max_size=2)}),
    }),
    "data": st.fixed_dictionaries({"a": near, "ab": st.lists(near, max_size=2)}),
})
near_path = st.sampled_from(["data.a", "notify_data.header.product_id", "GET_SERVICE_PROPERTY('Battery', 'a')",
                             "data.ab[0]"])
near_const = st.sampled_from(["0", "-0", "5", "-5", "2.5", "7", "3", "0.1", "9007199254740992",
                              "9007199254740993"])


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(leaves=st.lists(st.one_of(
    st.builds(lambda p, op, c: f"{p} {op} {c}", near_path, num_op, near_const),
    st.builds(lambda p, op, c: f"{c} {op} {p}", near_path, num_op, near_const),
    st.builds(lambda p, a, b: f"{p} BETWEEN {a} AND {b}", near_path, near_const, near_const)),
    min_size=1, max_size=2),
    joiner=st.sampled_from([" AND ", " OR "]), events=st.lists(numeric_event, min_size=1, max_size=4))
def test_numeric_atoms_never_drop_a_match(leaves, joiner, events):
    rule = engine.compile_rule(None, joiner.join(f"({x})" for x in leaves))
    for ev in events:
        expected = rule.matches(ev)
        for raw in encodings(ev):
            assert (rule.apply_raw(raw) is not None) == expected, (leaves, raw)
