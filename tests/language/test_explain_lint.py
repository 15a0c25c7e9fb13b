"""explain (why a rule matched or not, node by node) and lint (rules that
compile but probably do not do what was meant)."""

from __future__ import annotations

import pytest

from engine.language.errors import RuleError
from engine.language.explain import explain_where
from engine.language.lint import lint
from engine.language.tester import test_rule

STATUS = {"resource": "device.status", "event": "update", "event_time": "20260101T000000Z",
          "notify_data": {"header": {"device_id": "d1", "product_id": "p1"},
                          "body": {"status": "OFFLINE", "level": 3}}}


def test_the_first_conjunct_that_is_not_true_is_named_with_every_value():
    where = ("notify_data.body.level > 1 AND notify_data.body.status = 'ONLINE' "
             "AND UPPER(notify_data.body.nope) = 'X'")
    e = explain_where(where, STATUS)
    assert e.result == "FALSE" and e.decisive == "notify_data.body.status = 'ONLINE'"
    assert [t for _, t in e.conjuncts] == ["TRUE", "FALSE", "UNKNOWN"]
    nodes = {n.text: n for n in e.nodes}
    assert (nodes["notify_data.body.status"].value, nodes["notify_data.body.status"].type) \
        == ("OFFLINE", "string")
    assert nodes["notify_data.body.nope"].type == "MISSING"
    assert nodes["UPPER(notify_data.body.nope)"].type == "MISSING"
    assert nodes["UPPER(notify_data.body.nope) = 'X'"].truth == "UNKNOWN"
    assert "notify_data.body.status = 'ONLINE' is FALSE" in e.render()


def test_explain_agrees_with_the_compiled_core():
    for where in ("notify_data.body.level BETWEEN 1 AND 5", "notify_data.body.status IN ('A')",
                  "NOT (notify_data.body.level = 3) OR notify_data.body.x IS NULL",
                  "notify_data.body.status LIKE 'OFF%'"):
        core = test_rule(None, where, STATUS).matched
        assert (explain_where(where, STATUS).result == "TRUE") is core, where


def test_a_subject_mismatch_is_said_and_where_is_not_evaluated():
    e = explain_where("notify_data.body.level > 1", STATUS, ("device.property", "report"))
    assert e.result == "FALSE" and e.nodes == []
    assert "subject mismatch" in e.summary and "device.status/update" in e.summary


REPORT = {"resource": "device.property", "event": "report",
          "notify_data": {"header": {"device_id": "d1"}, "body": {"services": [
              {"service_id": "Battery", "properties": {"level": 12}},
              {"service_id": "Temp", "properties": {"t": 30}}]}}}


def test_foreach_is_explained_element_by_element_as_the_core_evaluates_it():
    select = ("FOREACH notify_data.body.services AS s DO s.service_id AS id "
              "INCASE s.properties.t > 20")
    e = explain_where("notify_data.header.device_id = 'd1'", REPORT, select=select)
    assert e.result == "TRUE" and e.foreach is not None
    assert e.foreach.count == 2
    assert [x.result for x in e.foreach.elements] == ["UNKNOWN", "TRUE"]
    assert len(test_rule(select, None, REPORT).output) == 1
    text = e.render()
    assert "2 elements, 1 kept by INCASE" in text
    assert "[0] INCASE is UNKNOWN: s.properties.t > 20 is UNKNOWN" in text
    assert "s.properties.t = MISSING (MISSING)" in text
    assert e.to_dict()["foreach"]["elements"][1]["result"] == "TRUE"
    e = explain_where(None, REPORT, select="FOREACH notify_data.body.nope AS s")
    assert e.foreach is not None and "not an array, no output" in e.render()


def test_explain_raises_rule_errors_like_compiling():
    with pytest.raises(RuleError):
        explain_where("notify_data.body.level >", STATUS)


@pytest.mark.parametrize(("select", "where", "subject", "expect"), [
    (None, 'notify_data.body.status = "ONLINE"', ("device.status", "update"),
     "Text is written in single quotes ('ONLINE')"),
    (None, "notify_data.body.staus = 'ONLINE'", ("device.status", "update"),
     "did you mean status?"),
    (None, "notify_data.header.device_id = 'x'", ("device", "create"),
     "device/create notifications have no notify_data.header"),
    ("GET_SERVICE_PROPERTY('a', 'b') AS v", None, ("device.message", "report"),
     "GET_SERVICE_PROPERTY reads the services of a property report"),
    (None, "notify_data.body.status = 1", ("device.status", "update"),
     "is a string in device.status/update notifications, compared with an integer"),
    (None, "1 = 1", None, "compares two constants"),
    (None, "notify_data.body.status = notify_data.body.status", None, "with itself"),
    (None, "notfy_data.body.status = 'A'", None, "did you mean notify_data?"),
    # Inside FOREACH: DO items and INCASE are checked too.
    ('FOREACH notify_data.body.services AS s INCASE s.service_id = "Battery"', None,
     ("device.property", "report"), "Text is written in single quotes ('Battery')"),
    ("FOREACH notify_data.body.services AS s DO notify_data.header.devce_id AS d", None,
     ("device.property", "report"), "did you mean device_id?"),
])
def test_lint_warns_with_the_reason(select, where, subject, expect):
    warnings = [str(w) for w in lint(select, where, subject)]
    assert any(expect in w for w in warnings), warnings


@pytest.mark.parametrize(("select", "where", "subject"), [
    (None, "notify_data.body.status = 'ONLINE'", ("device.status", "update")),
    ("notify_data.header.device_id AS d, GET_SERVICE_PROPERTY('Battery', 'level') AS l",
     "notify_data.body.services[0].properties.level < 10", ("device.property", "report")),
    ("*", "notify_data.body.content.t > 1", ("device.message", "report")),
    # Paths from the element's name read the element, not the notification.
    ("FOREACH notify_data.body.services AS s DO s.service_id AS id INCASE s.properties.t > 1",
     None, ("device.property", "report")),
])
def test_sound_rules_get_no_warning(select, where, subject):
    assert lint(select, where, subject) == []
