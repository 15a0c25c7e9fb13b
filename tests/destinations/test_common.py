"""json_key paths, event times and the shared address model."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engine.destinations.common import (
    ColumnMapping,
    JsonKey,
    NetAddress,
    columns,
    event_time_ms,
    event_times_ms,
    parse_json_key,
)


def test_parse_json_key():
    assert parse_json_key("notify_data.body.services[0].service_id") == (
        "notify_data", "body", "services", 0, "service_id")
    assert parse_json_key('data."msg-type"[1][2]') == ("data", "msg-type", 1, 2)
    assert parse_json_key('"a.b".c') == ("a.b", "c")
    for bad in ["a..b", "a[x]", ".a", "a.", "a[0", 'a."b', "a[-1]", "[0]"]:
        with pytest.raises(ValueError, match="malformed json_key"):
            parse_json_key(bad)


def test_resolve():
    payload = {"a": {"b": [{"c": 1}, None], "n": None}, "a.x": 5, "s": "abc",
               "notify_data.header.device_id": "literal"}
    names = ["a.b[0].c", "a.b[1].c", "a.b[2]", "a.x", "s[0]", "a.b.c", "a.b[0]", "a.n", "zz",
             "notify_data.header.device_id"]
    got = {k: JsonKey(k).resolve(payload) for k in names}
    # The compiled extractor the SQL sinks use resolves exactly the same way.
    row = columns([ColumnMapping(column_name="c", json_key=k) for k in names]).rows([payload])[0]
    assert dict(zip(names, row, strict=True)) == got
    assert got == {"a.b[0].c": 1, "a.b[1].c": None, "a.b[2]": None, "a.x": 5, "s[0]": None,
                   "a.b.c": None, "a.b[0]": {"c": 1}, "a.n": None, "zz": None,
                   "notify_data.header.device_id": "literal"}


def test_event_time_ms():
    assert event_time_ms("20151212T121212Z") == 1449922332000
    assert event_time_ms("2015-12-12T12:12:12.345Z") == 1449922332345
    assert event_time_ms("2015-12-12T12:12:12Z") == 1449922332000
    for bad in [None, "", "garbage", "20151312T121212Z", "2015121xT121212Z"]:
        assert event_time_ms(bad) is None
    # Exact: int(timestamp() * 1000) gave ...410 for this one.
    assert event_time_ms("2039-03-08T19:46:13.411Z") == 2183226373411


def test_event_times_ms_same_as_one_by_one():
    times = ["20151212T121212Z", "2015-12-12T12:12:12.345Z", "2015-12-12T12:12:12.3456+08:00",
             "2004-03-15T07:55:47.472Z"]
    assert event_times_ms(times) == [event_time_ms(t) for t in times]
    # Not all with an offset: time by time, same answers (naive is UTC).
    odd = [*times, None, "garbage", "2015-12-12T12:12:12", "2015-12-12"]
    assert event_times_ms(odd) == [event_time_ms(t) for t in odd]
    assert event_times_ms(["2015-12-12T12:12:12"]) == [1449922332000]


def test_sql_values_objects_and_arrays_become_json_text():
    cols = columns([ColumnMapping(column_name=k, json_key=k) for k in ["o", "l", "s", "n", "f"]])
    row = cols.rows([{"o": {"a": [1, True]}, "l": [], "s": "x", "n": None, "f": 1.5}], True)[0]
    assert row == ('{"a":[1,true]}', "[]", "x", None, 1.5)


def test_net_address():
    assert NetAddress(ip="10.0.0.1").host == "10.0.0.1"
    assert NetAddress(ip="10.0.0.1", domain="db.example.com").host == "db.example.com"
    assert NetAddress(ip="h", port=0).port_or(3306) == 3306
    with pytest.raises(ValidationError, match="ip or a domain"):
        NetAddress(port=1)
    with pytest.raises(ValidationError):
        NetAddress(ip="h", port=70000)
    with pytest.raises(ValidationError):
        NetAddress(ip="h", extra=1)
