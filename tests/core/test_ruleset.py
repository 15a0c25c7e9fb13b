"""Rule sets: the index must never change results, only the work done."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine

PRODUCTS = ["P0", "P1", "P2", "P3"]


def event(product, resource="device.property", app="app1", level=50, header_app=True):
    header = {"product_id": product, "device_id": "d1"}
    body = {"services": [{"service_id": "Battery", "properties": {"level": level}}]}
    if header_app:
        header["app_id"] = app
    else:
        body["app_id"] = app
    return {"resource": resource, "event": "report", "notify_data": {"header": header, "body": body}}


def test_results_follow_rule_order_and_scope():
    specs = [
        engine.RuleSpec("any", "notify_data.header.product_id AS p"),
        engine.RuleSpec("p1", "notify_data.header.product_id AS p",
                        "notify_data.header.product_id = 'P1'", "device.property", "report"),
        engine.RuleSpec("p1-low", None, "notify_data.header.product_id = 'P1' AND "
                        "GET_SERVICE_PROPERTY('Battery', 'level') < 20", "device.property", "report"),
        engine.RuleSpec("msg", None, None, "device.message", "report"),
        engine.RuleSpec("app2", "notify_data.header.product_id AS p", None, app_id="app2"),
    ]
    rs = engine.compile_ruleset(specs)
    assert [k for k, _ in rs.evaluate(event("P1"))] == ["any", "p1"]
    assert [k for k, _ in rs.evaluate(event("P1", level=10))] == ["any", "p1", "p1-low"]
    assert [k for k, _ in rs.evaluate(event("P1", resource="device.message"))] == ["any", "msg"]
    assert [k for k, _ in rs.evaluate(event("P2", app="app2"))] == ["any", "app2"]
    # The app id of device/product lifecycle events is in the body.
    assert [k for k, _ in rs.evaluate(event("P2", app="app2", header_app=False))] == ["any", "app2"]
    assert rs.evaluate(event("P1"))[1] == ("p1", {"p": "P1"})


wheres = st.one_of(
    st.none(),
    st.sampled_from(PRODUCTS).map(lambda p: f"notify_data.header.product_id = '{p}'"),
    st.tuples(st.sampled_from(PRODUCTS), st.integers(0, 100)).map(
        lambda t: f"notify_data.header.product_id = '{t[0]}' AND "
                  f"notify_data.body.services[0].properties.level > {t[1]}"),
    st.sampled_from(PRODUCTS).map(lambda p: f"notify_data.header.product_id <> '{p}'"),
)
specs_strategy = st.lists(st.tuples(wheres, st.sampled_from([None, "device.property", "device.message"]),
                                    st.sampled_from([None, "app1", "app2"])), min_size=1, max_size=12)
events_strategy = st.lists(st.builds(event, st.sampled_from(PRODUCTS + [None, 5]),
                                     st.sampled_from(["device.property", "device.message"]),
                                     st.sampled_from(["app1", "app2"]), st.integers(0, 100),
                                     st.booleans()), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(rules=specs_strategy, events=events_strategy)
def test_index_gives_the_same_results_as_each_rule_alone(rules, events):
    specs = [engine.RuleSpec(i, None, w, r, None if r is None else "report", a)
             for i, (w, r, a) in enumerate(rules)]
    rs = engine.compile_ruleset(specs)
    singles = [engine.compile_ruleset([s]) for s in specs]
    for ev in events:
        expected = [m for single in singles for m in single.evaluate(ev)]
        assert rs.evaluate(ev) == expected
        assert rs.evaluate_many([ev]) == [expected]


def test_bad_rule_names_its_key():
    with pytest.raises(engine.RuleError) as info:
        engine.compile_ruleset([engine.RuleSpec("ok", None, "a = 1"),
                                engine.RuleSpec("broken", None, "a = ")])
    assert info.value.rule_key == "broken"


def test_ten_thousand_rules_fit_in_200_mb():
    # Measured in a fresh interpreter so that nothing else in the test run counts.
    # Peak RSS from /proc (VmHWM): getrusage's ru_maxrss would include the
    # forking parent's size, which Linux carries across exec.
    code = textwrap.dedent("""
        import engine
        def peak_kb():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        before = peak_kb()
        rs = engine.compile_ruleset([engine.RuleSpec(i,
            "notify_data.header.device_id AS d, GET_SERVICE_PROPERTY('Battery', 'level') AS l",
            f"notify_data.header.product_id = 'P{i}' AND "
            "notify_data.body.services[0].properties.level > 20", "device.property", "report")
            for i in range(10000)])
        after = peak_kb()
        print(after // 1024, (after - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    total_mb, growth_mb = map(int, out.stdout.split())
    assert total_mb < 200, f"RSS {total_mb} MB with 10,000 rules (compile added {growth_mb} MB)"


def test_direct_dict_entry_read_is_enabled_and_agrees():
    """Path's inline cache reads dict entries directly when the import-time
    check finds CPython's table layout as expected (3.11-3.13); if that
    check ever fails the engine falls back to PyDict_Next, slower but
    correct, so this test says when the fast path silently went away."""
    from engine import _core
    if sys.version_info < (3, 14):
        assert _core._check_dict_layout()
    rule = engine.compile_rule("a.b AS v", "a.b = 'x'")
    events = [{"a": {"b": "x"}}, {"a": {"z": 1, "b": "x"}}, {"a": {"b": "y"}}, {"a": {}}]
    d = {"a": {"q": 0, "b": "x"}}
    del d["a"]["q"]                      # a deleted entry before the cached one
    events.append(d)
    for _ in range(3):                   # learn, then hit and miss the cache
        assert rule.apply_many(events) == [{"v": "x"}, {"v": "x"}, None, None, {"v": "x"}]
