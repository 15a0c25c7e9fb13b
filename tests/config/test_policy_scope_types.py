"""A policy whose scope is not even a string is reported, not a crash (found by API fuzzing)."""

from engine.cli import main


def test_non_string_scope_is_a_validation_error(tmp_path, capsys):
    f = tmp_path / "rules.yaml"
    f.write_text("rules: []\nflowcontrol_policies:\n  - {policy_id: p1, scope: {}, limit: 10}\n")
    assert main(["check", str(f)]) == 2
    err = capsys.readouterr().err
    assert "rules.yaml:3: flowcontrol_policies[0].scope: must be one of: USER" in err
