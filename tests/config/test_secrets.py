"""Secrets never show up in errors or reprs."""

from __future__ import annotations

import pytest

from engine.config import ConfigError, load_config
from engine.config.secrets import collect_secrets, redact, redact_url

SECRET = "Sup3rS3cretValue"

# Every secret-bearing field, each with a value that is also invalid, next to
# other errors, so the messages about those very fields are produced.
INVALID = f"""\
rules:
  - rule_id: r1
    subject: {{resource: device, event: create}}
actions:
  - action_id: a1
    rule_id: r1
    channel: HTTP_FORWARDING
    channel_detail:
      http_forwarding: {{url: "http://h/", token: "{SECRET}!!"}}
  - action_id: a2
    rule_id: r1
    channel: MYSQL_FORWARDING
    channel_detail:
      mysql_forwarding:
        address: {{ip: 127.0.0.1}}
        db_name: iot
        username: u
        password: "{SECRET * 20}"
        table_name: t
        column_mappings: []
sources:
  - amqp: {{url: "http://guest:{SECRET}@h/", queue: q}}
  - kafka:
      bootstrap_servers: "h:9092"
      topics: [t]
      security_protocol: SASL_SSL
      sasl_password: "{SECRET}"
api:
  projects:
    p1:
      tokens: ["{SECRET}"]
      access_keys: [{{ak: "A B", sk: "{SECRET}"}}]
"""


def test_secrets_absent_from_error_text(write):
    with pytest.raises(ConfigError) as info:
        load_config([write(INVALID)], env={})
    text = str(info.value)
    assert len(info.value.issues) >= 6, text
    assert SECRET not in text
    assert SECRET not in repr(info.value.issues)


def test_secret_from_environment_absent_from_errors(write):
    text = "sources:\n  - amqp: {url: 'ftp://guest:${PW}@h/', queue: q}\n"
    with pytest.raises(ConfigError) as info:
        load_config([write(text)], env={"PW": SECRET})
    assert "amqp://" in str(info.value) and SECRET not in str(info.value)


def test_yaml_syntax_error_does_not_quote_the_line(write):
    with pytest.raises(ConfigError) as info:
        load_config([write(f"api:\n  projects:\n    p1: {{tokens: [{SECRET}: x: y]}}\n")], env={})
    assert "YAML syntax error" in str(info.value) and SECRET not in str(info.value)


def test_secrets_absent_from_reprs_of_a_loaded_config(write):
    valid = f"""\
    sources:
      - amqp: {{url: "amqp://guest:{SECRET}@h/", queue: q}}
      - kafka:
          bootstrap_servers: "h:9092"
          topics: [t]
          security_protocol: SASL_SSL
          sasl_mechanism: PLAIN
          sasl_username: u
          sasl_password: "{SECRET}"
    dead_letter:
      amqp: {{url: "amqp://guest:{SECRET}@h/", queue: dl}}
    api:
      projects:
        p1:
          tokens: ["{SECRET}"]
          access_keys: [{{ak: AK1, sk: "{SECRET}"}}]
    rules:
      - rule_id: r1
        subject: {{resource: device, event: create}}
    actions:
      - action_id: a1
        rule_id: r1
        channel: HTTP_FORWARDING
        channel_detail:
          http_forwarding: {{url: "http://h/", signature_enable: true, token: {SECRET}}}
    """
    config = load_config([write(valid)], env={})
    for text in (repr(config), str(config), config.model_dump_json()):
        assert SECRET not in text
    # ...but the value is there for whoever needs it.
    assert config.sources[1].options.sasl_password.get_secret_value() == SECRET


def test_redaction_helpers():
    assert redact_url("amqp://guest:pw123@host:5672/vh") == "amqp://guest:***@host:5672/vh"
    assert redact_url("amqp://host/") == "amqp://host/"
    found = collect_secrets(
        {"a": {"password": "abcd", "url": "amqp://u:efgh@h/"}, "tokens": ["ijkl"]}
    )
    assert found == {"abcd", "efgh", "ijkl"}
    assert redact("x abcd y", found) == "x *** y"
