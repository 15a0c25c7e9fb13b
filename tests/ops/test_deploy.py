"""The packaging files: Dockerfile, compose.yaml, the systemd unit.

This machine has a docker client but no daemon, so the image is built only
where `docker info` answers; everywhere the files are checked by linters
(hadolint, the Compose Specification's JSON Schema, systemd-analyze) and
the engine options in them are parsed by the engine's own parser."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.cli import build_parser
from tests.ops.support import ROOT, engine

DOCKERFILE = (ROOT / "Dockerfile").read_text()
BIN = Path(sys.executable).parent


def _stages() -> list[str]:
    return re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]


def test_hadolint_passes():
    r = subprocess.run([str(BIN / "hadolint"), "--no-color", "Dockerfile"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_is_multi_stage_slim_non_root_with_a_readiness_check():
    build, runtime = _stages()
    assert "build-essential" in build and "build-essential" not in runtime
    assert runtime.startswith("python:${PYTHON_VERSION}-slim")
    assert "COPY --from=build /wheels" in runtime
    user = re.search(r"^USER (\S+)", runtime, flags=re.M).group(1)
    assert user.split(":")[0] not in ("0", "root")
    health = re.search(r"^HEALTHCHECK .*?\n(?:.*\\\n)*.*CMD (.*)$", runtime, flags=re.M)
    assert "http://127.0.0.1:9108/readyz" in health.group(1)
    # the entry point's arguments are options the engine really has
    cmd = json.loads(re.search(r"^CMD (\[.*?\])", runtime.replace("\\\n", ""),
                               flags=re.M | re.S).group(1))
    args = build_parser().parse_args(cmd)
    assert args.command == "run" and args.metrics_listen == "0.0.0.0:9108"


def _container_runtime() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    answers = subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode == 0
    return docker if answers else None


DOCKER = _container_runtime()


@pytest.mark.skipif(DOCKER is None, reason="no container runtime answers here (docker info "
                    "fails): the image is checked by hadolint and test_dockerfile_* only")
@pytest.mark.timeout(1800)
def test_image_builds_and_runs_where_a_container_runtime_exists():
    docker = DOCKER
    assert docker is not None
    tag = "iot-forwarding-engine:test"
    subprocess.run([docker, "build", "-t", tag, "."], cwd=ROOT, check=True, timeout=1700)
    r = subprocess.run([docker, "run", "--rm", tag, "--version"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("engine ")


def test_compose_file_follows_the_compose_spec_and_its_rule_file_is_valid():
    r = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema",
                        "vendor.compose-spec", "compose.yaml"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert {"engine", "rabbitmq", "postgres"} <= set(compose["services"])
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("./"):
                assert (ROOT / host).exists(), host
    check = engine("check", "deploy/compose/rules.yaml", cwd=ROOT,
                   env={"PGPASSWORD": compose["services"]["engine"]["environment"]["PGPASSWORD"]})
    assert check.returncode == 0, check.stderr
    # the engine's rule file points at the services compose starts
    rules = (ROOT / "deploy" / "compose" / "rules.yaml").read_text()
    assert "rabbitmq:5672" in rules and "domain: postgres" in rules
    init = (ROOT / "deploy" / "compose" / "init.sql").read_text()
    for table in re.findall(r"table_name: (\w+)", rules):
        assert f"CREATE TABLE IF NOT EXISTS {table}" in init


def _unit(tmp_path: Path, replace: dict[str, str] | None = None) -> Path:
    text = (ROOT / "deploy" / "engine.service").read_text()
    # systemd-analyze checks that ExecStart's program exists: use this checkout's
    text = text.replace("/opt/iot-forwarding-engine/bin/engine", str(BIN / "engine"))
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    path = tmp_path / "iot-forwarding-engine.service"
    path.write_text(text)
    return path


def _verify(unit: Path) -> str:
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    return (r.stdout + r.stderr).strip()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_verifies_and_is_hardened(tmp_path):
    assert _verify(_unit(tmp_path)) == ""
    # the check can fail: a misspelt value is reported
    assert "protect home value" in _verify(_unit(tmp_path, {"ProtectHome=yes": "ProtectHome=maybe"}))
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(_unit(tmp_path))],
                       capture_output=True, text=True, timeout=60)
    level = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout).group(1))
    assert level < 2.0, r.stdout  # "OK" on systemd's 0-10 scale


def test_systemd_unit_runs_a_valid_engine_command():
    text = (ROOT / "deploy" / "engine.service").read_text()
    start = re.search(r"^ExecStart=((?:[^\n]*\\\n)*[^\n]*)", text, flags=re.M).group(1)
    argv = shlex.split(start.replace("\\\n", " "))
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.state_dir == "${STATE_DIRECTORY}"
    assert "DynamicUser=yes" in text and "NoNewPrivileges=yes" in text
