"""`engine check`."""

from __future__ import annotations

import os
import subprocess
import sys

from engine.cli import EXIT_ERROR, EXIT_OK, main
from tests.config.conftest import EXAMPLES, REPO, RULE


def test_check_ok(write, capsys):
    assert main(["check", str(write(RULE))]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("OK: 1 rules (1 active), 1 actions, 0 flow control policies")


def test_check_reports_every_problem_and_exits_2(write, capsys):
    path = write(
        RULE.replace("event: update", "event: foo").replace("HTTP_FORWARDING", "OBS_FORWARDING")
    )
    assert main(["check", str(path)]) == EXIT_ERROR
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{path}:3: rules[0].subject.event: 'foo' is not a valid event for resource "
        "'device.status' (expected one of: update)",
        f"{path}:7: actions[0].channel: channel OBS_FORWARDING is not supported by this engine "
        + err[1].split("engine ", 1)[1],
        "2 problems found",
    ]


def test_check_examples_as_a_subprocess():
    env = {k: v for k, v in os.environ.items() if not k.endswith(("PASSWORD", "TOKEN"))}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "check",
            str(EXAMPLES / "rules.yaml"),
            str(EXAMPLES / "rules.json"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Both files define `sources`, a list: they merge.
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: 7 rules (6 active), 6 actions")


def test_check_missing_file_exits_2(capsys):
    assert main(["check", "/nonexistent.yaml"]) == EXIT_ERROR
    assert "/nonexistent.yaml: cannot read file" in capsys.readouterr().err
