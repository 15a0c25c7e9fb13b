"""Configuration: rule files (YAML/JSON) -> a validated `EngineConfig`.

    from engine.config import load_config, ConfigError
    config = load_config(["rules.yaml"])        # raises ConfigError

`validate_config_dict` validates an already-parsed tree the same way (for
the REST API). See docs/configuration.md for the file format.
"""

from engine.config.errors import ConfigError, Issue
from engine.config.loader import load_config
from engine.config.models import (
    Action,
    ApiConfig,
    BacklogPolicy,
    DeadLetterConfig,
    EngineConfig,
    FlowControlPolicy,
    MetricsConfig,
    Rule,
    SourceEntry,
    WorkerConfig,
)
from engine.config.validate import validate_config_dict

__all__ = [
    "Action",
    "ApiConfig",
    "BacklogPolicy",
    "ConfigError",
    "DeadLetterConfig",
    "EngineConfig",
    "FlowControlPolicy",
    "Issue",
    "MetricsConfig",
    "Rule",
    "SourceEntry",
    "WorkerConfig",
    "load_config",
    "validate_config_dict",
]
