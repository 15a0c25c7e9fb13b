"""${VAR} interpolation."""

from __future__ import annotations

from tests.config.conftest import RULE

URL = 'url: "http://127.0.0.1:9000/hook"'


def test_variable_is_substituted(load):
    config = load(
        RULE.replace(URL, 'url: "${HOOK_URL}"'), env={"HOOK_URL": "http://example.test/x"}
    )
    assert config.actions[0].detail.url == "http://example.test/x"


def test_default_when_unset_or_empty(load):
    text = RULE.replace(URL, 'url: "${HOOK_URL:-http://fallback.test/}"')
    assert load(text, env={}).actions[0].detail.url == "http://fallback.test/"
    assert load(text, env={"HOOK_URL": ""}).actions[0].detail.url == "http://fallback.test/"


def test_numbers_from_variables_are_converted(load):
    config = load("sources:\n  - simulator: {rate: '${RATE}', devices: 5}\n", env={"RATE": "250"})
    assert config.sources[0].options.rate == 250.0


def test_escaped_reference_is_literal(load):
    config = load(
        "rules:\n  - rule_id: r1\n    subject: {resource: device, event: create}\n"
        "    description: 'costs $${PRICE}'\n"
    )
    assert config.rules[0].description == "costs ${PRICE}"


def test_missing_variable_names_the_variable(problems):
    issues = problems(RULE.replace(URL, 'url: "${HOOK_URL}"'))
    # Only the missing variable: not also "url is too short" for the same field.
    assert [(i.line, i.path, i.message) for i in issues] == [
        (
            9,
            "actions[0].channel_detail.http_forwarding.url",
            "environment variable HOOK_URL is not set",
        )
    ]


def test_several_missing_variables_all_reported(problems):
    issues = problems(
        "sources:\n  - amqp: {url: '${AMQP_URL}', queue: '${QUEUE}'}\n"
        "  - file: {path: '${EVENTS}'}\n"
    )
    assert sorted(i.message for i in issues) == [
        "environment variable AMQP_URL is not set",
        "environment variable EVENTS is not set",
        "environment variable QUEUE is not set",
    ]


def test_malformed_and_unterminated_references(problems):
    issues = problems("sources:\n  - file: {path: '${not a name}'}\n  - file: {path: 'x${OPEN'}\n")
    assert [i.line for i in issues] == [2, 3]
    assert "malformed" in issues[0].message and "unterminated" in issues[1].message
    assert "not a name" not in str(issues[0])


def test_keys_are_not_interpolated(problems):
    issues = problems("${SECTION}: []\n", env={"SECTION": "rules"})
    assert [(i.path, i.message) for i in issues] == [("['${SECTION}']", "unknown field")]
