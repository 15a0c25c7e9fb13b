"""FOREACH: one output per array element (EMQX's form), on the compiled core
and the reference interpreter alike, through a rule set, and in a worker
(a record per output; matched counts events, outputs count outputs)."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine.config import load_config
from engine.language import RuleError, RuleSpec, compile_ruleset, parse_rule, reference
from engine.runtime.worker import Worker
from tests.language.test_properties import json_identical, json_value
from tests.ops.test_metrics import samples
from tests.runtime.support import ListSource

REPORT = {"resource": "device.property", "event": "report",
          "notify_data": {"header": {"device_id": "d1"}, "body": {"services": [
              {"service_id": "Battery", "properties": {"level": 12}},
              {"service_id": "Temp", "properties": {"t": 30}},
              {"service_id": "Temp2", "properties": {"t": 10}}]}}}
EACH = "FOREACH notify_data.body.services AS s"


def both(select, event, where=None):
    core = engine.compile_rule(select, where).apply(event)
    ref = reference.evaluate(parse_rule(select, where), event)
    assert json_identical(core, ref), f"\n core: {core!r}\n ref:  {ref!r}"
    return core


@pytest.mark.parametrize("select,want", [
    (f"{EACH} DO s.service_id AS id, notify_data.header.device_id AS dev",
     [{"id": "Battery", "dev": "d1"}, {"id": "Temp", "dev": "d1"}, {"id": "Temp2", "dev": "d1"}]),
    (f"{EACH} DO s.service_id AS id INCASE s.properties.t > 20", [{"id": "Temp"}]),
    (f"{EACH} INCASE s.service_id = 'Battery'",
     [{"service_id": "Battery", "properties": {"level": 12}}]),
    ("FOREACH notify_data.body.services DO item.service_id AS id INCASE item.service_id "
     "LIKE 'T%'", [{"id": "Temp"}, {"id": "Temp2"}]),
    (f"{EACH} DO *, s.properties.t AS t INCASE s.properties.t IS NOT NULL",
     [{"service_id": "Temp", "properties": {"t": 30}, "t": 30},
      {"service_id": "Temp2", "properties": {"t": 10}, "t": 10}]),
    ("FOREACH notify_data.missing", []),
    ("FOREACH notify_data.header.device_id", []),   # not an array
    # The alias shadows a top-level member of that name.
    ("FOREACH notify_data.body.services AS notify_data DO notify_data.service_id AS id "
     "INCASE notify_data.service_id = 'Temp'", [{"id": "Temp"}]),
])
def test_examples(select, want):
    assert both(select, REPORT) == want


def test_elements_that_are_not_objects_are_wrapped_by_their_alias():
    event = {"a": [1, "x", None, [2]]}
    assert both("FOREACH a", event) == [{"item": 1}, {"item": "x"}, {"item": None},
                                        {"item": [2]}]
    assert both("FOREACH a AS v INCASE is_num(v)", event) == [{"v": 1}]


def test_where_false_is_no_match_and_outputs_do_not_alias_the_event():
    assert both(f"{EACH}", REPORT, "notify_data.header.device_id = 'x'") is None
    out = engine.compile_rule(f"{EACH} DO s.properties AS p", None).apply(REPORT)
    out[0]["p"]["level"] = 99
    assert REPORT["notify_data"]["body"]["services"][0]["properties"]["level"] == 12


def test_a_value_computed_once_per_event_is_not_shared_between_outputs():
    event = {"data": {"list": [1, 2], "k": {"v": [0]}}}
    out = engine.compile_rule("FOREACH data.list AS x DO data.k AS k, x AS x", None).apply(event)
    assert out == [{"k": {"v": [0]}, "x": 1}, {"k": {"v": [0]}, "x": 2}]
    out[0]["k"]["v"].append(1)
    assert out[1]["k"] == {"v": [0]} and event["data"]["k"] == {"v": [0]}


@pytest.mark.parametrize("select,part", [
    ("FOREACH", "unexpected end of clause"),
    (f"{EACH} DO", "unexpected end of clause"),
    (f"{EACH} DO s.x + 1", "needs an alias"),
    (f"{EACH} DO s.x AS a, s.y AS a", "duplicate output key"),
    (f"{EACH} INCASE nosuch(s)", "unknown function NOSUCH"),
])
def test_errors(select, part):
    with pytest.raises(RuleError, match=part):
        engine.compile_rule(select, None)


def test_do_and_incase_stay_ordinary_names_elsewhere():
    assert both("do.x AS incase, data.foreach AS f", {"do": {"x": 1}, "data": {"foreach": 2}}) \
        == {"incase": 1, "f": 2}


def test_rule_set_gives_one_entry_per_event_with_its_outputs():
    rs = compile_ruleset([RuleSpec("f", f"{EACH} DO s.service_id AS id", None,
                                   "device.property", "report"),
                          RuleSpec("g", "notify_data.header.device_id AS d")])
    (res,) = rs.route_raw_many([orjson.dumps(REPORT)])
    assert res[3] == [("f", [{"id": "Battery"}, {"id": "Temp"}, {"id": "Temp2"}]),
                      ("g", {"d": "d1"})]


SELECTS = [f"{EACH} DO s.service_id AS id, s.properties AS p",
           "FOREACH data.list AS x DO x.a AS a, x AS whole INCASE x.a > 0",
           "FOREACH data.list INCASE item IS NOT NULL",
           "FOREACH data.list AS x DO *, data.k AS k INCASE x.a <> 'z'",
           # Items computed once per event, on the element, and on both.
           "FOREACH data.list AS x DO data.k AS k, x.a AS a, x.a = data.k AS same "
           "INCASE x.a <> data.k",
           "FOREACH data.list AS x DO x AS e, data AS d INCASE is_num(x.a)"]


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(select=st.sampled_from(SELECTS),
       items=st.lists(st.one_of(json_value, st.fixed_dictionaries(
           {"a": st.one_of(st.integers(-3, 3), st.sampled_from(["z", "y"]), json_value)})),
           max_size=6),
       k=json_value)
def test_core_and_reference_agree(select, items, k):
    event = {"data": {"list": items, "k": k}, **REPORT}
    both(select, event)
    rs = compile_ruleset([RuleSpec("r", select)])
    (res,) = rs.route_raw_many([orjson.dumps(event)])
    want = reference.evaluate(parse_rule(select, None), orjson.loads(orjson.dumps(event)))
    assert json_identical(res[3][0][1], want)


async def test_a_worker_writes_a_record_per_output_and_counts_both(tmp_path):
    out = tmp_path / "points.jsonl"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({
        "rules": [{"rule_id": "points", "subject": {"resource": "device.property",
                                                   "event": "report"},
                   "select": f"{EACH} DO notify_data.header.device_id AS device, "
                             "s.service_id AS service INCASE s.service_id <> 'Temp2'"}],
        "actions": [{"action_id": "file", "rule_id": "points", "channel": "FILE_FORWARDING",
                     "channel_detail": {"file_forwarding": {"path": str(out)}}}],
        "worker": {"state_dir": str(tmp_path / "state"), "linger_ms": 0}}))
    source = ListSource([[json.dumps(REPORT).encode()] * 2], name="list")
    worker = Worker.from_config(load_config([path]), sources=[source])
    await asyncio.wait_for(worker.run(), 60)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("service", r.get("payload", {}).get("service")) for r in rows] == \
        ["Battery", "Temp"] * 2
    found = samples(worker.metrics)
    assert found[("engine_rule_matched_total", (("rule", "points"),))] == 2
    assert found[("engine_rule_outputs_total", (("rule", "points"),))] == 4
    action = (("action", "file"), ("channel", "FILE_FORWARDING"), ("rule", "points"))
    assert found[("engine_action_forwarded_total", action)] == 4
