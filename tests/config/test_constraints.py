"""Each constraint class is rejected, located by file, line and field path."""

from __future__ import annotations

import pytest

from tests.config.conftest import RULE

# (id, file text, expected line, expected path, fragment of the message)
# fmt: off
RULE_CASES = [
    (
        "rule_id-alphabet",
        """\
        rules:
          - rule_id: "r 1"
            subject: {resource: device, event: create}
        """,
        2, "rules[0].rule_id", "letters, digits, _ or -",
    ),
    (
        "rule_id-length",
        """\
        rules:
          - rule_id: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
            subject: {resource: device, event: create}
        """,
        2, "rules[0].rule_id", "1 to 36",
    ),
    (
        "rule_id-missing",
        """\
        rules:
          - subject: {resource: device, event: create}
        """,
        2, "rules[0].rule_id", "required field is missing",
    ),
    (
        "rule_name-characters",
        """\
        rules:
          - rule_id: r1
            rule_name: "has space"
            subject: {resource: device, event: create}
        """,
        3, "rules[0].rule_name", "_?'#(),.&%@!-",
    ),
    (
        "rule_name-length",
        f"""\
        rules:
          - rule_id: r1
            rule_name: {"n" * 257}
            subject: {{resource: device, event: create}}
        """,
        3, "rules[0].rule_name", "1 to 256",
    ),
    (
        "description-length",
        f"""\
        rules:
          - rule_id: r1
            description: {"d" * 257}
            subject: {{resource: device, event: create}}
        """,
        3, "rules[0].description", "at most 256",
    ),
    (
        "resource-enum",
        """\
        rules:
          - rule_id: r1
            subject:
              resource: device.shadow
              event: update
        """,
        4, "rules[0].subject.resource", "device.property",
    ),
    (
        "resource-event-pair",
        """\
        rules:
          - rule_id: r1
            subject:
              resource: device.status
              event: foo
        """,
        5, "rules[0].subject.event",
        "'foo' is not a valid event for resource 'device.status' (expected one of: update)",
    ),
    (
        "event-missing",
        """\
        rules:
          - rule_id: r1
            subject:
              resource: device.status
        """,
        3, "rules[0].subject.event", "required field is missing",
    ),
    (
        "app_type-enum",
        """\
        rules:
          - rule_id: r1
            subject: {resource: device, event: create}
            app_type: TENANT
        """,
        4, "rules[0].app_type", "must be one of: GLOBAL, APP",
    ),
    (
        "app_type-APP-needs-app_id",
        """\
        rules:
          - rule_id: r1
            subject: {resource: device, event: create}
            app_type: APP
        """,
        2, "rules[0]", "app_type APP requires app_id",
    ),
    (
        "app_id-alphabet",
        """\
        rules:
          - rule_id: r1
            subject: {resource: device, event: create}
            app_type: APP
            app_id: "app/1"
        """,
        5, "rules[0].app_id", "letters, digits, _ or -",
    ),
    (
        "select-length",
        f"""\
        rules:
          - rule_id: r1
            subject: {{resource: device, event: create}}
            select: "{"a," * 1250}b"
        """,
        4, "rules[0].select", "at most 2500",
    ),
    (
        "where-syntax",
        """\
        rules:
          - rule_id: r1
            subject: {resource: device, event: create}
            where: "notify_data.body.status ="
        """,
        4, "rules[0].where", "(line 1, column",
    ),
    (
        "active-type",
        """\
        rules:
          - rule_id: r1
            subject: {resource: device, event: create}
            active: maybe
        """,
        4, "rules[0].active", "must be true or false",
    ),
    (
        "unknown-rule-field",
        """\
        rules:
          - rule_id: r1
            subject: {resource: device, event: create}
            enabled: true
        """,
        4, "rules[0].enabled", "unknown field",
    ),
    (
        "duplicate-rule_id",
        """\
        rules:
          - rule_id: r1
            subject: {resource: device, event: create}
          - rule_id: r1
            subject: {resource: device, event: update}
        """,
        4, "rules[1].rule_id", "rule_id 'r1' is defined more than once",
    ),
]

ACTION_CASES = [
    (
        "unknown-channel",
        RULE.replace("channel: HTTP_FORWARDING", "channel: SMTP_FORWARDING"),
        7, "actions[0].channel", "unknown channel 'SMTP_FORWARDING'",
    ),
    (
        "detail-key-missing",
        RULE.replace("http_forwarding:", "amqp_forwarding:"),
        9, "actions[0].channel_detail.amqp_forwarding", "unknown field",
    ),
    (
        "detail-field",
        RULE.replace('url: "http://127.0.0.1:9000/hook"', 'url: "ftp://host/x"'),
        9, "actions[0].channel_detail.http_forwarding.url", "must be an http:// or https:// URL",
    ),
    (
        "action-rule-missing",
        RULE.replace("rule_id: r1\n    channel", "rule_id: r2\n    channel"),
        6, "actions[0].rule_id", "no rule has rule_id 'r2'",
    ),
    (
        "duplicate-action_id",
        RULE + RULE.split("actions:\n")[1],
        10, "actions[1].action_id", "action_id 'a1' is defined more than once",
    ),
    (
        "amqp-queue_name-length",
        RULE.replace(
            'http_forwarding: {url: "http://127.0.0.1:9000/hook"}', "amqp_forwarding: {queue_name: short}"
        ).replace("HTTP_FORWARDING", "AMQP_FORWARDING"),
        9, "actions[0].channel_detail.amqp_forwarding.queue_name", "at least 8",
    ),
    (
        "mysql-33-column_mappings",
        RULE.replace("HTTP_FORWARDING", "MYSQL_FORWARDING").replace(
            '      http_forwarding: {url: "http://127.0.0.1:9000/hook"}\n',
            "      mysql_forwarding:\n"
            "        address: {ip: 127.0.0.1, port: 3306}\n"
            "        db_name: iot\n"
            "        username: u\n"
            "        password: p\n"
            "        table_name: t\n"
            "        column_mappings:\n"
            + "".join(f"          - {{column_name: c{i}, json_key: k{i}}}\n" for i in range(33)),
        ),
        15, "actions[0].channel_detail.mysql_forwarding.column_mappings", "at most 32",
    ),
]

POLICY_CASES = [
    (
        "flow-limit-zero",
        RULE + "flowcontrol_policies:\n  - policy_id: p1\n    limit: 0\n",
        12, "flowcontrol_policies[0].limit", "must be at least 1",
    ),
    (
        "flow-limit-above-extension",
        RULE + "flowcontrol_policies:\n  - policy_id: p1\n    limit: 1000001\n",
        12, "flowcontrol_policies[0].limit", "must be at most 1000000",
    ),
    (
        "flow-scope-enum",
        RULE + "flowcontrol_policies:\n  - policy_id: p1\n    scope: TENANT\n",
        12, "flowcontrol_policies[0].scope", "must be one of: USER, CHANNEL, RULE, ACTION",
    ),
    (
        "flow-scope_value-required",
        RULE + "flowcontrol_policies:\n  - policy_id: p1\n    scope: RULE\n",
        11, "flowcontrol_policies[0]", "scope RULE requires scope_value (a rule_id)",
    ),
    (
        "flow-scope-rule-exists",
        RULE + "flowcontrol_policies:\n  - policy_id: p1\n    scope: RULE\n    scope_value: r9\n",
        13, "flowcontrol_policies[0].scope_value", "no rule has rule_id 'r9'",
    ),
    (
        "flow-scope-action-exists",
        RULE + "flowcontrol_policies:\n  - policy_id: p1\n    scope: ACTION\n    scope_value: a9\n",
        13, "flowcontrol_policies[0].scope_value", "no action has action_id 'a9'",
    ),
    (
        "flow-scope-channel-unsupported",
        RULE + "flowcontrol_policies:\n  - policy_id: p1\n    scope: CHANNEL\n"
        "    scope_value: DIS_FORWARDING\n",
        13, "flowcontrol_policies[0].scope_value",
        "channel DIS_FORWARDING is not supported by this engine",
    ),
    (
        "flow-scope-channel-unknown",
        RULE + "flowcontrol_policies:\n  - policy_id: p1\n    scope: CHANNEL\n"
        "    scope_value: NOPE\n",
        13, "flowcontrol_policies[0].scope_value", "unknown channel 'NOPE'",
    ),
    (
        "flow-same-scope-twice",
        RULE + "flowcontrol_policies:\n  - policy_id: p1\n  - policy_id: p2\n    limit: 5\n",
        12, "flowcontrol_policies[1]", "another flow control policy already applies to scope USER",
    ),
    (
        "flow-duplicate-policy_id",
        RULE + "flowcontrol_policies:\n  - policy_id: p1\n    scope: RULE\n    scope_value: r1\n"
        "  - policy_id: p1\n",
        14, "flowcontrol_policies[1].policy_id", "policy_id 'p1' is defined more than once",
    ),
    (
        "flow-policy_name",
        RULE + "flowcontrol_policies:\n  - policy_id: p1\n    policy_name: 'a b'\n",
        12, "flowcontrol_policies[0].policy_name", "no spaces",
    ),
    (
        "backlog-size",
        RULE + "backlog_policies:\n  - policy_id: b1\n    backlog_size: 1073741824\n",
        12, "backlog_policies[0].backlog_size", "must be at most 1073741823",
    ),
    (
        "backlog-time",
        RULE + "backlog_policies:\n  - policy_id: b1\n    backlog_time: 86400\n",
        12, "backlog_policies[0].backlog_time", "must be at most 86399",
    ),
    (
        "backlog-negative",
        RULE + "backlog_policies:\n  - policy_id: b1\n    backlog_size: -1\n",
        12, "backlog_policies[0].backlog_size", "must be at least 0",
    ),
]

ENGINE_CASES = [
    (
        "source-exactly-one",
        "sources:\n  - file: {path: a.ndjson}\n    http: {auth: none}\n",
        2, "sources[0]", "exactly one of: amqp, device_api, file, http, kafka, mqtt, simulator",
    ),
    (
        "source-unknown-kind",
        "sources:\n  - nats: {url: x}\n",
        2, "sources[0].nats", "unknown field",
    ),
    (
        "kafka-bootstrap",
        "sources:\n  - kafka:\n      bootstrap_servers: localhost\n      topics: [t]\n",
        3, "sources[0].kafka.bootstrap_servers[0]", "host:port",
    ),
    (
        "kafka-topics-empty",
        "sources:\n  - kafka:\n      bootstrap_servers: 'h:9092'\n      topics: []\n",
        4, "sources[0].kafka.topics", "at least 1",
    ),
    (
        "kafka-sasl-incomplete",
        "sources:\n  - kafka:\n      bootstrap_servers: 'h:9092'\n      topics: [t]\n"
        "      security_protocol: SASL_SSL\n",
        2, "sources[0].kafka", "needs sasl_mechanism",
    ),
    (
        "amqp-url-scheme",
        "sources:\n  - amqp: {url: 'http://h/', queue: q}\n",
        2, "sources[0].amqp.url", "amqp://",
    ),
    (
        "http-listen",
        "sources:\n  - http: {listen: 'localhost'}\n",
        2, "sources[0].http.listen", "host:port",
    ),
    (
        "http-max_body_bytes",
        "sources:\n  - http:\n      max_body_bytes: 10\n",
        3, "sources[0].http.max_body_bytes", "must be at least 1024",
    ),
    (
        "simulator-kinds",
        "sources:\n  - simulator:\n      kinds:\n        - {resource: device.status, event: report}\n",
        4, "sources[0].simulator.kinds[0].event", "not a valid event",
    ),
    (
        "dead_letter-exactly-one",
        "dead_letter:\n  file: d.jsonl\n  amqp: {url: 'amqp://h/', queue: dl}\n",
        1, "dead_letter", "exactly one of: file, kafka, amqp",
    ),
    (
        "metrics-listen-port",
        "metrics: {listen: '127.0.0.1:70000'}\n",
        1, "metrics.listen", "port from 0 to 65535",
    ),
    (
        "api-project-without-credentials",
        "api:\n  projects:\n    proj1: {}\n",
        3, "api.projects.proj1", "needs tokens or access_keys",
    ),
    (
        "unknown-top-level",
        "rulez: []\n",
        1, "rulez", "unknown field",
    ),
    (
        "section-not-a-list",
        "rules: {rule_id: r1}\n",
        1, "rules", "must be a list",
    ),
    (
        "top-level-not-a-mapping",
        "- rules\n",
        1, "", "must be a mapping",
    ),
    (
        "duplicate-yaml-key",
        "metrics: {listen: '127.0.0.1:1'}\nmetrics: {listen: '127.0.0.1:2'}\n",
        2, "", "duplicate key 'metrics'",
    ),
]
# fmt: on

ALL = RULE_CASES + ACTION_CASES + POLICY_CASES + ENGINE_CASES


@pytest.mark.parametrize(
    ("text", "line", "path", "fragment"),
    [case[1:] for case in ALL],
    ids=[case[0] for case in ALL],
)
def test_rejected_with_file_line_and_path(problems, text, line, path, fragment):
    issues = problems(text)
    matching = [i for i in issues if i.path == path and fragment in i.message]
    assert matching, "\n".join(map(str, issues))
    issue = matching[0]
    assert issue.file.endswith("rules.yaml")
    assert issue.line == line, str(issue)


@pytest.mark.parametrize(
    "channel",
    [
        "DIS_FORWARDING",
        "OBS_FORWARDING",
        "ROMA_FORWARDING",
        "FUNCTIONGRAPH_FORWARDING",
        "MRS_KAFKA_FORWARDING",
    ],
)
def test_cloud_only_channels_are_unsupported(problems, channel):
    issues = problems(RULE.replace("HTTP_FORWARDING", channel))
    assert [str(i).split(": ", 1)[1] for i in issues if i.path == "actions[0].channel"] == [
        f"actions[0].channel: channel {channel} is not supported by this engine "
        + issues[0].message.split("engine ", 1)[1]
    ]
    assert issues[0].line == 7


def test_every_problem_is_reported(problems):
    issues = problems(
        """\
        rules:
          - rule_id: "bad id"
            subject: {resource: device.status, event: foo}
            where: "a ="
        actions:
          - action_id: a1
            rule_id: missing
            channel: OBS_FORWARDING
            channel_detail: {}
        flowcontrol_policies:
          - {policy_id: p1, limit: 0}
        sources:
          - {}
        """
    )
    assert [(i.line, i.path) for i in issues] == [
        (2, "rules[0].rule_id"),
        (3, "rules[0].subject.event"),
        (4, "rules[0].where"),
        (7, "actions[0].rule_id"),
        (8, "actions[0].channel"),
        (11, "flowcontrol_policies[0].limit"),
        (13, "sources[0]"),
    ]


def test_issue_text_format(problems):
    issues = problems(
        """\
        rules:
          - rule_id: r1
            subject: {resource: device.status, event: foo}
        """
    )
    assert str(issues[0]).endswith(
        "rules.yaml:3: rules[0].subject.event: 'foo' is not a valid event for resource "
        "'device.status' (expected one of: update)"
    )


def test_rule_text_error_has_clause_position_and_caret(problems):
    (issue,) = problems(
        """\
        rules:
          - rule_id: r1
            subject: {resource: device.status, event: update}
            where: |
              notify_data.body.status = 'ONLINE'
                AND AND
        """
    )
    assert issue.path == "rules[0].where" and issue.line == 4
    first, *snippet = issue.message.splitlines()
    assert "(line 2, column" in first
    assert snippet[-1].strip() == "^"
