"""RuleSet.route_raw_many: what the runtime routes a batch with."""

import orjson

from engine import RuleSpec, compile_ruleset
from engine._core import MalformedEvent

EV = (b'{"event_time":"20260101T000000Z","notify_data":{"header":{"product_id":"p1",'
      b'"device_id":"d-1"},"body":{"n":1.50,"m":1E3}}}')


def test_route_gives_key_time_and_outputs_in_rule_order():
    rs = compile_ruleset([RuleSpec("whole", "*", "notify_data.header.product_id = 'p1'"),
                          RuleSpec("star-plus", "*, event_time AS t", None),
                          RuleSpec("none", None, "notify_data.header.product_id = 'p2'"),
                          RuleSpec("blank", "", None)])
    (event, key, et, matches), = rs.route_raw_many([EV])
    assert event == orjson.loads(EV) and (key, et) == ("d-1", "20260101T000000Z")
    # `SELECT *` alone (or an empty SELECT): the input bytes themselves.
    assert [k for k, _ in matches] == ["whole", "star-plus", "blank"]
    assert matches[0][1] is EV and matches[2][1] is EV
    assert matches[1][1] == {**event, "t": "20260101T000000Z"}


def test_route_key_from_body_none_for_no_match_and_malformed():
    rs = compile_ruleset([RuleSpec("r", "*", "notify_data.body.status = 'ONLINE'")])
    body = b'{"event_time":5,"notify_data":{"body":{"device_id":"d-2","status":"ONLINE"}}}'
    nomatch = b'{"notify_data":{"body":{"device_id":"d-2","status":"OFFLINE"}}}'
    out = rs.route_raw_many([body, nomatch, b"[1]"])
    assert out[0][1:3] == ("d-2", None)  # event_time not a string: no time
    assert out[1] is None
    assert isinstance(out[2], MalformedEvent)


def test_route_dead_letters_integers_beyond_64_bits_even_for_a_whole_rule():
    # The other rules and sinks would change the value: never forwarded.
    rs = compile_ruleset([RuleSpec("r", "*", None)])
    (bad,) = rs.route_raw_many([b'{"n":123456789012345678901234567890}'])
    assert isinstance(bad, MalformedEvent) and "beyond 64 bits" in bad.reason


def test_route_non_bytes_input_gets_a_built_output():
    rs = compile_ruleset([RuleSpec("r", "*", None)])
    (_, _, _, [(_, out)]), = rs.route_raw_many([bytearray(b'{"a":1}')])
    assert out == {"a": 1}


def test_route_counts_a_kind_that_is_not_a_string_without_failing():
    rs = compile_ruleset([RuleSpec("r", "event_time AS t", None)])
    out = rs.route_raw_many([b'{"resource":[],"event":{},"event_time":"1"}'])
    assert out[0][3] == [("r", {"t": "1"})]
    assert rs.take_kinds() == {(None, None): 1}
