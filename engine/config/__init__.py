"""Configuration: rule files (YAML/JSON) -> a validated `EngineConfig`."""
