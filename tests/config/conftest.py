"""Fixtures for the configuration tests: write rule files, load them."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from engine.config import ConfigError, EngineConfig, Issue, load_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

# The smallest valid rule + action, to build failing variants on.
RULE = """\
rules:
  - rule_id: r1
    subject: {resource: device.status, event: update}
actions:
  - action_id: a1
    rule_id: r1
    channel: HTTP_FORWARDING
    channel_detail:
      http_forwarding: {url: "http://127.0.0.1:9000/hook"}
"""


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    def write(text: str, name: str = "rules.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def load(write: Callable[..., Path]) -> Callable[..., EngineConfig]:
    def load(text: str, name: str = "rules.yaml", env: Mapping[str, str] | None = None):
        return load_config([write(text, name)], env=env or {})

    return load


@pytest.fixture
def problems(write: Callable[..., Path]) -> Callable[..., list[Issue]]:
    """Load a file that must be invalid; return its issues."""

    def problems(text: str, name: str = "rules.yaml", env: Mapping[str, str] | None = None):
        with pytest.raises(ConfigError) as info:
            load_config([write(text, name)], env=env or {})
        return info.value.issues

    return problems
