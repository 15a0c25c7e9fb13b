"""Rule tests in rule files (`tests:`): engine.config.ruletests, `engine test`
and `engine check`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.config import ConfigError, load_config
from engine.config.ruletests import run_tests

REPO = Path(__file__).resolve().parents[2]

RULES = [
    {"rule_id": "low", "subject": {"resource": "device.property", "event": "report"},
     "select": "notify_data.header.device_id AS device, "
               "GET_SERVICE_PROPERTY('Battery', 'level') AS level",
     "where": "GET_SERVICE_PROPERTY('Battery', 'level') < 20"},
    {"rule_id": "hot", "dialect": "aliyun",
     "sql": "SELECT temp, deviceName() AS dev FROM '/pk/+/user/t' WHERE temp > 30"},
    {"rule_id": "off", "subject": {"resource": "device.status", "event": "update"},
     "app_type": "APP", "app_id": "app1", "active": False},
]
REPORT = {"resource": "device.property", "event": "report",
          "notify_data": {"header": {"device_id": "d1"},
                          "body": {"services": [{"service_id": "Battery",
                                                 "properties": {"level": 12}}]}}}
MESSAGE = {"resource": "device.message", "event": "report",
           "notify_data": {"header": {"device_id": "pk_d2", "node_id": "d2"},
                           "body": {"topic": "/pk/d2/user/t", "content": {"temp": 35}}}}
STATUS = {"resource": "device.status", "event": "update",
          "notify_data": {"header": {"device_id": "d3", "app_id": "app2"},
                          "body": {"status": "ONLINE"}}}


def write(tmp_path, tests, rules=RULES) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"rules": rules, "tests": tests}, sort_keys=False))
    return path


def results(path):
    return [(t.name, [f.rule for f in fails]) for t, fails in run_tests(load_config([path]))]


def test_passing_tests_run_each_rule_as_the_worker_does(tmp_path):
    path = write(tmp_path, [
        {"name": "low battery", "input": REPORT,
         "expect": [{"rule": "low", "output": {"device": "d1", "level": 12}},
                    {"rule": "hot", "no_match": True}]},
        {"name": "alibaba topic rule", "input": MESSAGE,
         "expect": [{"rule": "hot", "contains": {"dev": "d2"}},
                    {"rule": "low", "no_match": True}]},
        # An inactive rule is tested too; its app scope applies.
        {"name": "other app", "input": STATUS, "expect": [{"rule": "off", "no_match": True}]},
    ])
    assert results(path) == [("low battery", []), ("alibaba topic rule", []),
                             ("other app", [])]


def test_failures_name_the_test_and_rule_with_a_diff(tmp_path):
    path = write(tmp_path, [
        {"name": "wrong level", "input": REPORT,
         "expect": [{"rule": "low", "output": {"device": "d1", "level": 13}}]},
        {"name": "int is not decimal", "input": REPORT,
         "expect": [{"rule": "low", "output": {"device": "d1", "level": 12.0}}]},
        {"name": "expected no match", "input": MESSAGE,
         "expect": [{"rule": "hot", "no_match": True}]},
        {"name": "nested contains", "input": MESSAGE,
         "expect": [{"rule": "hot", "contains": {"temp": 36}}]},
    ])
    outcomes = list(run_tests(load_config([path])))
    assert [len(f) for _, f in outcomes] == [1, 1, 1, 1]
    text = outcomes[0][1][0].render()
    assert text.startswith("FAIL 'wrong level': rule low")
    assert '-  "level": 13' in text and '+  "level": 12' in text
    assert '+  "dev": "d2"' in outcomes[2][1][0].render()


@pytest.mark.parametrize("test,message", [
    ({"name": "t", "input": REPORT, "expect": [{"rule": "lowe", "no_match": True}]},
     "tests[0].expect[0].rule: no rule has rule_id 'lowe' (did you mean 'low'?)"),
    ({"name": "t", "input": REPORT, "expect": [{"rule": "low"}]},
     "give exactly one of output, contains or no_match"),
    ({"name": "t", "input": REPORT, "expect": [{"rule": "low", "no_match": True,
                                                "output": {}}]},
     "give exactly one of output, contains or no_match"),
    ({"name": "t", "expect": [{"rule": "low", "no_match": True}]},
     "tests[0]: give either input (one notification) or inputs"),
    ({"name": "t", "input": REPORT, "inputs": [REPORT],
      "expect": [{"rule": "low", "no_match": True}]}, "give either input"),
    ({"name": "t", "inputs": [], "expect": [{"rule": "low", "no_match": True}]},
     "tests[0].inputs: must have at least 1 item"),
    ({"name": "t", "input": REPORT, "expect": []}, "tests[0].expect"),
])
def test_invalid_tests_are_config_errors_with_their_line(tmp_path, test, message):
    path = write(tmp_path, [test])
    with pytest.raises(ConfigError) as err:
        load_config([path])
    text = str(err.value)
    assert message in text and f"{path}:" in text


def test_inputs_each_meet_every_expectation(tmp_path):
    other = {**REPORT, "notify_data": {**REPORT["notify_data"], "header": {"device_id": "d9"}}}
    path = write(tmp_path, [
        {"name": "two reports", "inputs": [REPORT, other],
         "expect": [{"rule": "low", "contains": {"level": 12}},
                    {"rule": "hot", "no_match": True}]},
        {"name": "the second differs", "inputs": [REPORT, other],
         "expect": [{"rule": "low", "contains": {"device": "d1"}}]},
    ])
    outcomes = list(run_tests(load_config([path])))
    assert outcomes[0][1] == []
    (failure,) = outcomes[1][1]
    assert failure.input == 1
    text = failure.render()
    assert text.startswith("FAIL 'the second differs' (inputs[1]): rule low")
    assert '-  "device": "d1"' in text and '+  "device": "d9",' in text


def test_foreach_outputs_are_a_list(tmp_path):
    rules = [{"rule_id": "each", "subject": {"resource": "device.property", "event": "report"},
              "select": "FOREACH notify_data.body.services AS s DO s.service_id AS service, "
                        "notify_data.header.device_id AS device"}]
    two = {**REPORT, "notify_data": {**REPORT["notify_data"], "body": {"services": [
        {"service_id": "A", "properties": {}}, {"service_id": "B", "properties": {}}]}}}
    path = write(tmp_path, [
        {"name": "exact", "input": two, "expect": [{"rule": "each", "output": [
            {"service": "A", "device": "d1"}, {"service": "B", "device": "d1"}]}]},
        {"name": "contained, in order", "input": two,
         "expect": [{"rule": "each", "contains": [{"service": "A"}, {"service": "B"}]}]},
        {"name": "wrong order", "input": two,
         "expect": [{"rule": "each", "contains": [{"service": "B"}, {"service": "A"}]}]},
        {"name": "one object for two outputs", "input": two,
         "expect": [{"rule": "each", "contains": {"service": "A"}}]},
        {"name": "one of two outputs", "input": two,
         "expect": [{"rule": "each", "contains": [{"service": "A"}]}]},
    ], rules=rules)
    assert results(path) == [("exact", []), ("contained, in order", []),
                             ("wrong order", ["each"]), ("one object for two outputs", ["each"]),
                             ("one of two outputs", ["each"])]


def test_duplicate_test_names_are_an_error(tmp_path):
    test = {"name": "same", "input": REPORT, "expect": [{"rule": "low", "no_match": False,
                                                         "contains": {}}]}
    path = write(tmp_path, [test, test])
    with pytest.raises(ConfigError) as err:
        load_config([path])
    assert "tests[1].name: name 'same' is defined more than once" in str(err.value)


def test_the_schema_has_the_section_and_its_choices():
    import jsonschema

    from engine.config.rulefile_schema import rule_file_schema

    validator = jsonschema.Draft202012Validator(rule_file_schema())
    rules = [{"rule_id": "r", "subject": {"resource": "device.status", "event": "update"}}]

    def valid(test):
        return not list(validator.iter_errors({"rules": rules, "tests": [test]}))

    expect = [{"rule": "r", "no_match": True}]
    assert valid({"name": "t", "input": STATUS, "expect": expect})
    assert valid({"name": "t", "inputs": [STATUS], "expect": expect})
    assert not valid({"name": "t", "expect": expect})
    assert not valid({"name": "t", "input": STATUS, "inputs": [STATUS], "expect": expect})
    assert valid({"name": "t", "input": STATUS,
                  "expect": [{"rule": "r", "output": {}, "no_match": False}]})
    assert not valid({"name": "t", "input": STATUS,
                      "expect": [{"rule": "r", "output": {}, "no_match": True}]})
    assert not valid({"name": "t", "input": STATUS, "expect": [{"rule": "r"}]})
    assert not valid({"name": "t", "input": STATUS, "expect": expect, "extra": 1})


def cli(*args):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def test_engine_test_and_check_exit_codes(tmp_path):
    good = write(tmp_path, [{"name": "ok", "input": REPORT,
                             "expect": [{"rule": "low", "contains": {"level": 12}}]}])
    r = cli("test", str(good))
    assert r.returncode == 0 and "ok   'ok'" in r.stdout and "1 test passed" in r.stdout
    assert cli("check", str(good)).returncode == 0

    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = write(bad_dir, [{"name": "fails", "input": REPORT,
                           "expect": [{"rule": "low", "no_match": True}]}])
    for command in ("test", "check"):
        r = cli(command, str(bad))
        assert r.returncode == 1, (command, r.stderr)
        assert "FAIL 'fails': rule low" in r.stderr and "1 of 1 test failed" in r.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("rules: [{rule_id: x}]\ntests: []\n")
    assert cli("test", str(broken)).returncode == 2
    unknown_dir = tmp_path / "unknown"
    unknown_dir.mkdir()
    unknown = write(unknown_dir, [{"name": "typo", "input": REPORT,
                                   "expect": [{"rule": "lwo", "no_match": True}]}])
    line = unknown.read_text().splitlines().index("  - rule: lwo") + 1
    for command in ("test", "check"):
        r = cli(command, str(unknown))
        assert r.returncode == 2, (command, r.stderr)
        assert f"{unknown}:{line}: tests[0].expect[0].rule: no rule has rule_id 'lwo' " \
               "(did you mean 'low'?)" in r.stderr
    none = tmp_path / "none.yaml"
    none.write_text(yaml.safe_dump({"rules": RULES[:1]}))
    r = cli("test", str(none))
    assert r.returncode == 2 and "no tests: section" in r.stderr


def test_the_worker_ignores_tests_but_validates_them(tmp_path):
    """A failing test does not stop the runtime (`engine replay` builds the
    worker `engine run` builds); an invalid section does, with its line."""
    failing = write(tmp_path, [{"name": "fails", "input": REPORT,
                                "expect": [{"rule": "low", "no_match": True}]}])
    events = tmp_path / "events.ndjson"
    events.write_text(json.dumps(REPORT) + "\n")
    r = cli("replay", "--dry-run", "--rules", str(failing), str(events))
    assert r.returncode == 0, r.stderr
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    invalid = write(bad_dir, [{"name": "x", "input": REPORT,
                               "expect": [{"rule": "hott", "no_match": True}]}])
    r = cli("replay", "--dry-run", "--rules", str(invalid), str(events))
    assert r.returncode == 2
    assert f"{invalid}:" in r.stderr and "did you mean 'hot'?" in r.stderr


@pytest.mark.parametrize("example", ["rules.yaml", "rules.json"])
def test_the_shipped_examples_carry_passing_tests(example):
    config = load_config([REPO / "examples" / example])
    assert config.tests
    assert all(not failures for _, failures in run_tests(config))
