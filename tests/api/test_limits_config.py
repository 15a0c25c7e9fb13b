"""API limits come from the config's `api.limits` (then `--limit` overrides)."""

from engine.cli import main
from engine.config.limits import ApiLimits


def test_config_limits_then_overrides():
    limits = ApiLimits.from_config({"max_rules": 5, "rate": 2.5, "allow_file_channel": True},
                                   ["burst=7", "max_rules=6"])
    assert (limits.max_rules, limits.rate, limits.burst, limits.allow_file_channel) == (6, 2.5, 7, True)


def test_unknown_limit_is_a_config_error(tmp_path, capsys):
    f = tmp_path / "engine.yaml"
    f.write_text('rules: []\napi:\n  projects: {p1: {tokens: ["tok-0123456789"]}}\n'
                 "  limits: {max_rules: 5, nonsense: 3}\n")
    assert main(["check", str(f)]) == 2
    assert "engine.yaml:4: api.limits: unknown limit 'nonsense'" in capsys.readouterr().err
