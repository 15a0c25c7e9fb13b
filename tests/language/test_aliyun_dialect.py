"""The Alibaba rules-engine dialect (engine.language.aliyun): every function
on the compiled core and the reference interpreter alike, topic filters,
`SELECT *` of the payload, whole statements, and the errors."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine.language import RuleError, RuleSpec, compile_ruleset, parse_rule, reference
from engine.language.aliyun import ALIBABA, check_topic_filter, java_format, split_sql
from tests.language.test_functions import ARG, _literal
from tests.language.test_properties import json_identical


def message(content, topic="/a1pk/dev1/user/update", binary=False, **body):
    b = {"topic": topic, "content": content, **body}
    if binary:
        b["binary"] = True
    return {"resource": "device.message", "event": "report", "request_id": "m-1",
            "notify_data": {"header": {"device_id": "a1pk_dev1", "product_id": "a1pk",
                                       "node_id": "dev1", "gateway_id": "a1pk_dev1",
                                       "tags": [{"tag_key": "site", "tag_value": "north"}]},
                            "body": b}}


def both(select, where, event):
    """The rule's output on the core and on the reference interpreter (equal)."""
    core = engine.compile_rule(select, where, "aliyun").apply(event)
    ref = reference.evaluate(parse_rule(select, where, "aliyun"), event)
    assert json_identical(core, ref), f"\n core: {core!r}\n ref:  {ref!r}"
    if core is not None:
        orjson.dumps(core)   # every output is writable by the sinks
    return core


EXAMPLES = [
    # (expression, payload, expected value or "MISSING")
    ("deviceName()", {}, "dev1"),
    ("productKey()", {}, "a1pk"),
    ("messageId()", {}, "m-1"),
    ("topic()", {}, "/a1pk/dev1/user/update"),
    ("topic(1)", {}, "a1pk"),
    ("topic(4)", {}, "update"),
    ("topic(9)", {}, "MISSING"),
    ("attribute('site')", {}, "north"),
    ("attribute('none')", {}, "MISSING"),
    ("concat(a, 'x')", {"a": "t"}, "tx"),
    ("concat(a, 'x')", {}, "MISSING"),
    ("crypto(a, 'MD5')", {"a": "hi"}, "49f68a5c8493ec2c0bf489821c21fc3b"),
    ("crypto(a, 'sha1')", {"a": "hi"}, "c22b5f9178342609428d6f51b2c5af4c0bde6a42"),
    ("crypto(a, 'SHA256')", {"a": 5}, "MISSING"),
    ("endswith(a, 'ing')", {"a": "ring"}, True),
    ("startswith(a, 'ri')", {"a": "ring"}, True),
    ("startswith(a, 'ri')", {"a": 7}, "MISSING"),
    ("log(a)", {"a": 1}, 0.0),
    ("log(2, a)", {"a": 8}, 3.0),
    ("log(a)", {"a": 0}, "MISSING"),
    ("nanvl(a, 0)", {"a": None}, 0),
    ("nanvl(a, 0)", {}, 0),
    ("nanvl(a, 0)", {"a": 3}, 3),
    ("payload()", {"a": 1}, '{"a":1}'),
    ("payload('json')", {"a": [1]}, {"a": [1]}),
    ("to_base64(*)", {"a": 1}, "eyJhIjoxfQ=="),
    ("abs(a)", {"a": -2}, 2),
    ("floor(a)", {"a": 2.5}, 2),
    ("mod(a, 3)", {"a": 7}, 1),
    ("power(a, 2)", {"a": 3}, 9.0),
    ("lower(a)", {"a": "AB"}, "ab"),
    ("upper(a)", {"a": "ab"}, "AB"),
    ("replace(a, 'b', 'c')", {"a": "abb"}, "acc"),
    ("substring(a, 1, 3)", {"a": "abcd"}, "bc"),
    ("items.temp.value", {"items": {"temp": {"value": 21.5}}}, 21.5),
    ("a[1]", {"a": [5, 6]}, 6),
]


@pytest.mark.parametrize("expr,payload,want", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_functions_and_paths(expr, payload, want):
    out = both(f"{expr} AS v", None, message(payload))
    assert out == ({} if want == "MISSING" else {"v": want})


def test_binary_payloads():
    event = message("aGk=", binary=True)   # the bytes b"hi"
    assert both("to_base64(*) AS b, payload() AS p", None, event) == {"b": "aGk=", "p": "hi"}


def test_property_post_flat_map_and_unaliased_paths_keep_their_text():
    event = message({"items": {"t": {"value": 3, "time": 1}}},
                    topic="/sys/a1pk/dev1/thing/event/property/post", properties={"t": 3})
    out = both("thingPropertyFlatMapNotify() AS flat, items.t.value", "items.t.value > 2", event)
    assert out == {"flat": {"t": 3}, "items.t.value": 3}
    assert both("*", "items.t.value > 5", event) is None


def test_star_is_the_payload_and_can_be_extended():
    event = message({"temp": 31, "hum": 2})
    assert both("*, deviceName() AS dn", None, event) == {"temp": 31, "hum": 2, "dn": "dev1"}
    assert both("*", None, message([1, 2])) == {}   # not an object: no members
    # Not the whole notification: the raw-bytes pass-through must not apply.
    rs = compile_ruleset([RuleSpec("r", "*", None, dialect="aliyun")])
    (res,) = rs.route_raw_many([orjson.dumps(message({"temp": 31}))])
    assert res[3] == [("r", {"temp": 31})]


def test_timestamps():
    # The clock moves between the two evaluations: compared within a second,
    # not through both().
    select = "timestamp() AS ms, timestamp_utc('yyyy-MM-dd''T''HH') AS t"
    out = engine.compile_rule(select, None, "aliyun").apply(message({}))
    ref = reference.evaluate(parse_rule(select, None, "aliyun"), message({}))
    assert isinstance(out["ms"], int) and out["ms"] > 1.7e12 and abs(out["ms"] - ref["ms"]) < 1000
    assert len(out["t"]) == 13 and out["t"][10] == "T" and out["t"][:10] == ref["t"][:10]
    assert java_format("yyyy-MM-dd HH:mm:ss") == "%Y-%m-%d %H:%M:%S"
    assert java_format("dd/MM/yy '%'") == "%d/%m/%y %%"
    assert java_format("yyyy-MM-dd SSS") is None


@pytest.mark.parametrize("select,message_part", [
    ("crypto(a, 'SHA9') AS x", "'MD5', 'SHA1' or 'SHA256'"),
    ("topic(a) AS x", "topic(n): n must be a whole number literal"),
    ("topic(0) AS x", "at least 1"),
    ("to_base64(a) AS x", "to_base64(*)"),
    ("lower(*) AS x", "only to_base64(*) takes one"),
    ("crypto(*) AS x", "only to_base64 takes `*`"),
    ("timestamp('yyyy SSS') AS x", "yyyy, yy, MM"),
    ("payload('gbk') AS x", "'json' or 'utf-8'"),
    ("deviceName(1) AS x", "deviceName(): 1 argument"),
    ("nosuch(a) AS x", "unknown function NOSUCH"),
    ("(a)", "needs an alias"),
])
def test_errors_name_the_cause(select, message_part):
    with pytest.raises(RuleError) as err:
        engine.compile_rule(select, None, "aliyun")
    assert message_part in str(err.value)
    assert err.value.clause == "select" and err.value.line == 1


def test_star_arguments_are_alibaba_only():
    with pytest.raises(RuleError, match=r"LOWER\(\*\): `\*` is not an argument"):
        engine.compile_rule("lower(*) AS x", None)


@pytest.mark.parametrize("topic,matching,other", [
    ("/a1pk/dev1/user/update", ["/a1pk/dev1/user/update"], ["/a1pk/dev2/user/update",
                                                          "/a1pk/dev1/user/update/x"]),
    ("/a1pk/+/user/update", ["/a1pk/dev1/user/update", "/a1pk//user/update"],
     ["/a1pk/dev1/user/get", "/a1pk/a/b/user/update", "/b1pk/dev1/user/update"]),
    ("/a1pk/#", ["/a1pk", "/a1pk/dev1/user/update"], ["/a1pkx/dev1", "/b/a1pk"]),
    ("/sys/a1pk/+/thing/event/+/post", ["/sys/a1pk/d/thing/event/property/post"],
     ["/sys/a1pk/d/thing/event/property/post_reply", "/sys/a1pk/d/thing/service/x/post"]),
    ("/a.b/+/user/(x)", ["/a.b/d/user/(x)"], ["/aXb/d/user/(x)", "/a.b/d/user/x"]),
])
def test_topic_filters_with_and_without_the_prefilter(topic, matching, other):
    spec = RuleSpec("r", "deviceName() AS d", None, "device.message", "report",
                    dialect="aliyun", topic=topic)
    with_pf = compile_ruleset([spec])
    # A second rule without a needle-able condition turns the pre-filter off.
    without = compile_ruleset([spec, RuleSpec("x", None, "1 = 2")])
    for t, want in [(t, True) for t in matching] + [(t, False) for t in other]:
        for rs in (with_pf, without):
            (res,) = rs.route_raw_many([orjson.dumps(message({}, topic=t))])
            got = res is not None and any(k == "r" for k, _ in res[3])
            assert got is want, (topic, t)


@pytest.mark.parametrize("topic,problem", [
    ("a1pk/+/x", "starts with '/'"), ("/a1pk/dev+/x", "not a valid"),
    ("/a1pk/#/x", "not a valid"), ("/a1pk/+/#", None), ("/a1pk/dev1/user/x", None)])
def test_topic_filter_checks(topic, problem):
    got = check_topic_filter(topic)
    assert (got is None) if problem is None else (problem in got)


def test_whole_statements():
    assert split_sql("SELECT a, 'FROM x' AS f FROM '/pk/+/user/u' WHERE a.where > 1") == \
        ("a, 'FROM x' AS f", "/pk/+/user/u", "a.where > 1")
    assert split_sql('select * from "/sys/pk/+/thing/event/property/post"') == \
        ("*", "/sys/pk/+/thing/event/property/post", None)
    for bad, part in [("a FROM '/x'", "starts with SELECT"), ("SELECT a", "names its topic"),
                      ("SELECT a FROM /x/y", "in quotes"),
                      ("SELECT a FROM '/x' FROM '/y'", "names its topic once")]:
        with pytest.raises(ValueError, match=part):
            split_sql(bad)


def test_every_alibaba_function_has_an_example_here_and_a_line_in_the_docs():
    from pathlib import Path
    doc = (Path(__file__).parents[2] / "docs" / "language-alibaba.md").read_text()
    tried = {e[0].split("(")[0].upper() for e in EXAMPLES} | {"THINGPROPERTYFLATMAPNOTIFY",
                                                               "TIMESTAMP", "TIMESTAMP_UTC"}
    for name, fn in ALIBABA.items():
        assert name in tried, name
        assert f"`{fn.signature}`".replace("|", "\\|") in doc, name   # as in a table


PAYLOAD_EXPRS = ["a", "a.b", "abs(a)", "concat(a, b)", "endswith(a, b)", "startswith(a, b)",
                 "log(a)", "log(a, b)", "nanvl(a, b)", "payload()", "payload('json')",
                 "to_base64(*)", "lower(a)", "upper(a)", "replace(a, b, 'x')",
                 "substring(a, 0, 2)", "crypto(a, 'SHA256')", "mod(a, b)", "power(a, b)",
                 "topic(2)", "a > b", "a = b", "a LIKE 'x%'"]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(expr=st.sampled_from(PAYLOAD_EXPRS), a=ARG, b=ARG, absent=st.integers(0, 3),
       binary=st.booleans())
def test_core_and_reference_agree_on_any_payload(expr, a, b, absent, binary):
    payload = {k: v for k, v, gone in (("a", a, absent == 1), ("b", b, absent == 2)) if not gone}
    event = message("aGk=" if binary else payload, binary=binary)
    both(f"{expr} AS v", None, event)
    if expr in ("a", "a.b") and _literal(a) is not None:
        both("*", f"{expr} = {_literal(a)}", event)
