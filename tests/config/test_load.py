"""Loading valid files (YAML, JSON, several files) and the loader's own errors."""

from __future__ import annotations

import pytest

from engine.config import (
    ConfigError,
    EngineConfig,
    load_config,
    validate_config_dict,
)
from engine.destinations.http import HttpForwarding
from engine.sources.http import HttpOptions
from engine.sources.kafka import KafkaOptions
from tests.config.conftest import EXAMPLES, RULE


def test_example_yaml_loads():
    config = load_config([EXAMPLES / "rules.yaml"], env={})
    assert isinstance(config, EngineConfig)
    assert [r.rule_id for r in config.rules][:2] == ["battery-low", "device-status"]
    assert {a.channel for a in config.actions} >= {"HTTP_FORWARDING", "AMQP_FORWARDING"}
    assert config.sources[0].kind == "http"
    assert isinstance(config.sources[0].options, HttpOptions)
    assert config.dead_letter is not None and config.dead_letter.kind == "file"
    assert config.flowcontrol_policies[0].limit == 5000  # the >1000 extension


def test_example_json_loads():
    config = load_config([EXAMPLES / "rules.json"], env={})
    assert len(config.rules) == 2 and len(config.actions) == 2
    assert config.sources[0].kind == "file"


def test_defaults_follow_iotda(load):
    config = load(
        RULE
        + "flowcontrol_policies:\n  - policy_id: p1\n"
        + "backlog_policies:\n  - policy_id: b1\n"
    )
    rule = config.rules[0]
    assert (rule.app_type, rule.select, rule.where, rule.active) == ("GLOBAL", None, None, True)
    assert config.flowcontrol_policies[0].scope == "USER"
    assert config.flowcontrol_policies[0].limit == 1000
    assert config.backlog_policies[0].backlog_size == 1073741823
    assert config.backlog_policies[0].backlog_time == 86399


def test_channel_detail_becomes_the_destination_model(load):
    action = load(RULE).actions[0]
    assert isinstance(action.detail, HttpForwarding)
    assert action.channel_detail == {"http_forwarding": action.detail}


def test_iotda_response_body_pastes(load):
    # An IoTDA "create rule action" response carries app_id; it is accepted.
    config = load(
        RULE.replace(
            "    channel: HTTP", "    app_id: 1a7ffc5cd89c44dd8265b1653d951ce0\n    channel: HTTP"
        )
    )
    assert config.actions[0].app_id == "1a7ffc5cd89c44dd8265b1653d951ce0"


def test_kafka_source_options(load):
    config = load(
        """\
        sources:
          - kafka:
              bootstrap_servers: "a:9092, b:9092"
              topics: [iot.notifications]
              group_id: forwarder
              auto_offset_reset: earliest
        """
    )
    kafka = config.sources[0].options
    assert isinstance(kafka, KafkaOptions)
    assert kafka.bootstrap_servers == ["a:9092", "b:9092"]
    assert (kafka.max_batch, kafka.session_timeout_ms) == (500, 10_000)


def test_models_are_frozen(load):
    config = load(RULE)
    with pytest.raises(ValueError):
        config.rules[0].active = False  # type: ignore[misc]


def test_empty_file_is_an_empty_config(load):
    config = load("")
    assert config.rules == [] and config.sources == []


def test_json_errors_have_lines(problems):
    issues = problems(
        '{\n  "rules": [\n    {"rule_id": "r1",\n     "subject": {"resource": "device", "event": "report"}}\n  ]\n}\n',
        name="rules.json",
    )
    (issue,) = issues
    assert (issue.line, issue.path) == (4, "rules[0].subject.event")


def test_json_duplicate_keys_are_reported_with_their_line(problems):
    issues = problems('{\n  "rules": [],\n  "rules": []\n}\n', name="rules.json")
    assert [(i.line, i.message) for i in issues] == [(3, "duplicate key 'rules'")]


def test_json_syntax_error(problems):
    (issue,) = problems('{"rules": [}\n', name="rules.json")
    assert issue.line == 1 and "JSON syntax error" in issue.message


def test_yaml_syntax_error(problems):
    (issue,) = problems("rules:\n  - rule_id: r1\n    subject: [\n")
    assert issue.line is not None and issue.message.startswith("YAML syntax error")


def test_missing_file():
    with pytest.raises(ConfigError) as info:
        load_config(["/nonexistent/rules.yaml"], env={})
    (issue,) = info.value.issues
    assert issue.file == "/nonexistent/rules.yaml" and "cannot read file" in issue.message


def test_files_are_merged_and_errors_point_to_their_own_file(write):
    rules = write(RULE.split("actions:")[0], "rules.yaml")
    actions = write(
        """\
        actions:
          - action_id: a1
            rule_id: r1
            channel: HTTP_FORWARDING
            channel_detail: {http_forwarding: {url: "http://h/"}}
          - action_id: a2
            rule_id: r2
            channel: HTTP_FORWARDING
            channel_detail: {http_forwarding: {url: "http://h/"}}
        """,
        "actions.yaml",
    )
    with pytest.raises(ConfigError) as info:
        load_config([rules, actions], env={})
    (issue,) = info.value.issues
    assert issue.file == str(actions)
    assert (issue.line, issue.path) == (7, "actions[1].rule_id")

    ok = write(
        RULE.split("actions:")[0]
        + "  - rule_id: r2\n    subject: {resource: device, event: delete}\n"
    )
    config = load_config([ok, actions], env={})
    assert [a.rule_id for a in config.actions] == ["r1", "r2"]


def test_single_sections_may_not_repeat_across_files(write):
    a = write("metrics: {listen: '127.0.0.1:9108'}\n", "a.yaml")
    b = write("metrics: {listen: '127.0.0.1:9109'}\n", "b.yaml")
    with pytest.raises(ConfigError) as info:
        load_config([a, b], env={})
    (issue,) = info.value.issues
    assert (issue.file, issue.line, issue.path) == (str(b), 1, "metrics")
    assert issue.message == f"already defined in {a}"


def test_issues_are_sorted_by_file_then_line(write):
    a = write("rules:\n  - rule_id: x\n    subject: {resource: nope, event: x}\n", "a.yaml")
    b = write("sources:\n  - {}\n", "b.yaml")
    with pytest.raises(ConfigError) as info:
        load_config([b, a], env={})
    assert [i.file for i in info.value.issues] == [str(a), str(b)]


def test_load_config_is_pure(write, tmp_path):
    path = write(RULE)
    before = sorted(p.name for p in tmp_path.iterdir())
    first = load_config([path], env={})
    second = load_config([path], env={})
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_validate_config_dict_same_rules_without_lines():
    config = validate_config_dict(
        {"rules": [{"rule_id": "r1", "subject": {"resource": "device", "event": "create"}}]},
        "api",
    )
    assert config.rules[0].rule_id == "r1"
    with pytest.raises(ConfigError) as info:
        validate_config_dict(
            {"rules": [{"rule_id": "r1", "subject": {"resource": "device", "event": "x"}}]},
            "PUT /rules",
        )
    (issue,) = info.value.issues
    assert str(issue).startswith("PUT /rules: rules[0].subject.event: 'x' is not a valid event")
