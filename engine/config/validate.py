"""Validating one configuration tree: the models, the checks that span
objects (unique ids, references) and the compilation of every rule's
SELECT/WHERE text. Used by the file loader and, later, the REST API, so both
accept exactly the same configurations.

The cross-object checks and the compilation run on the raw tree, not on the
validated model, so that they report their problems even when some field
elsewhere is invalid: a user sees every problem in one pass.
"""

from __future__ import annotations

import difflib
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from engine.config import channels
from engine.config.errors import ConfigError, Issue, Loc, format_loc, pydantic_message
from engine.config.models import EngineConfig
from engine.config.secrets import collect_secrets, redact
from engine.language import RuleError, check_rule
from engine.language.aliyun import DIALECTS, split_sql

Problem = tuple[Loc, str]


def validate_config_dict(data: Any, source_name: str = "<config>") -> EngineConfig:
    """Validate a configuration tree (already parsed, already interpolated)
    and return it as an EngineConfig; raise ConfigError naming `source_name`."""
    config, problems = check(data)
    if problems:
        secrets = collect_secrets(data)
        raise ConfigError(
            Issue(source_name, None, format_loc(loc), redact(message, secrets))
            for loc, message in problems
        )
    assert config is not None
    return config


def check(data: Any) -> tuple[EngineConfig | None, list[Problem]]:
    """All problems of a configuration tree as (location, message) pairs,
    and the validated config when there are none."""
    if not isinstance(data, dict):
        return None, [((), "the configuration must be a mapping (rules:, actions:, ...)")]
    problems: list[Problem] = []
    config = None
    try:
        config = EngineConfig.model_validate(data)
    except ValidationError as exc:
        problems += _model_problems(exc.errors())
    problems += _cross_references(data)
    problems += _compile_rules(data)
    return (config if not problems else None), problems


# ------------------------------------------------------------------ model errors


def _is_branch(part: str | int) -> bool:
    # pydantic names the member of a union that failed inside the location:
    # `literal['none']`, `function-after[...]`, `str`, a model's name.
    return isinstance(part, str) and ("[" in part or part in _BRANCH_NAMES)


_BRANCH_NAMES = {"str", "int", "float", "bool", "none", "list", "dict", "tagged-union"}


def _model_problems(errors: list[Any]) -> list[Problem]:
    """One message per location: the errors of a union's members are said
    together ("must be one of: none, or must be an object")."""
    by_loc: dict[Loc, list[str]] = {}
    for e in errors:
        loc = tuple(p for p in e["loc"] if not _is_branch(p))
        message = pydantic_message(e, _fields_at(loc))
        if message not in by_loc.setdefault(loc, []):
            by_loc[loc].append(message)
    return [(loc, ", or ".join(messages)) for loc, messages in by_loc.items()]


def _fields_at(loc: Loc) -> list[str]:
    """The field names of the model that holds `loc[-1]` (for a did-you-mean)."""
    model: Any = EngineConfig
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        if isinstance(part, int):
            continue
        if part == "channel_detail" and parts:   # {detail_key: the sink's Config}
            detail = parts.pop(0)
            sinks = {s.detail_key: s for s in channels.registry().values()}
            model = sinks[detail].Config if detail in sinks else None
        else:
            field = getattr(model, "model_fields", {}).get(part)
            model = _model_in(field.annotation) if field is not None else None
        if model is None:
            return []
    fields = getattr(model, "model_fields", {})
    return sorted(set(fields) | {f.alias for f in fields.values() if f.alias})


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside an annotation (`X | None`, `list[X]`, …), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


# ------------------------------------------------------------------ cross references


def _items(data: dict[str, Any], section: str) -> list[tuple[int, dict[str, Any]]]:
    items = data.get(section)
    if not isinstance(items, list):
        return []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)]


def _unique_ids(data: dict[str, Any], section: str, key: str) -> tuple[set[str], list[Problem]]:
    seen: set[str] = set()
    problems: list[Problem] = []
    for i, item in _items(data, section):
        value = item.get(key)
        if not isinstance(value, str):
            continue
        if value in seen:
            problems.append(((section, i, key), f"{key} '{value}' is defined more than once"))
        seen.add(value)
    return seen, problems


def _cross_references(data: dict[str, Any]) -> list[Problem]:
    rule_ids, problems = _unique_ids(data, "rules", "rule_id")
    action_ids, more = _unique_ids(data, "actions", "action_id")
    problems += more
    _, more = _unique_ids(data, "tests", "name")   # a failure names its test
    problems += more

    for i, action in _items(data, "actions"):
        rule_id = action.get("rule_id")
        if isinstance(rule_id, str) and rule_id not in rule_ids:
            problems.append((("actions", i, "rule_id"),
                             f"no rule has rule_id '{rule_id}'{_near(rule_id, rule_ids)}"))

    for i, test in _items(data, "tests"):
        expect = test.get("expect")
        for j, item in enumerate(expect if isinstance(expect, list) else []):
            rule_id = item.get("rule") if isinstance(item, dict) else None
            if isinstance(rule_id, str) and rule_id not in rule_ids:
                problems.append((("tests", i, "expect", j, "rule"),
                                 f"no rule has rule_id '{rule_id}'{_near(rule_id, rule_ids)}"))

    for section, what in (
        ("flowcontrol_policies", "flow control"),
        ("backlog_policies", "backlog"),
    ):
        problems += _unique_ids(data, section, "policy_id")[1]
        problems += _policy_scopes(data, section, what, rule_ids, action_ids)
    return problems


def _near(name: str, names: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _policy_scopes(
    data: dict[str, Any], section: str, what: str, rule_ids: set[str], action_ids: set[str]
) -> list[Problem]:
    problems: list[Problem] = []
    scopes: set[tuple[str, str | None]] = set()
    for i, policy in _items(data, section):
        scope = policy.get("scope", "USER")
        if not isinstance(scope, str):
            continue  # the model reports the bad scope itself
        value = policy.get("scope_value")
        loc = (section, i, "scope_value")
        if not isinstance(value, str):
            value = None
        elif scope == "RULE" and value not in rule_ids:
            problems.append((loc, f"no rule has rule_id '{value}'"))
        elif scope == "ACTION" and value not in action_ids:
            problems.append((loc, f"no action has action_id '{value}'"))
        elif scope == "CHANNEL" and value not in channels.registry():
            problems.append((loc, _channel_problem(value)))
        if scope == "USER":
            value = None  # IoTDA: scope_value is optional and meaningless for USER
        # Several backlog policies may cover one scope (IoTDA's have no scope
        # and a tenant lists many): each bounds it, so the strictest wins.
        # Two flow limits for one scope would leave it unclear which applies.
        if section == "flowcontrol_policies" and (scope, value) in scopes:
            target = f"scope {scope}" + (f" '{value}'" if value else "")
            problems.append(((section, i), f"another {what} policy already applies to {target}"))
        scopes.add((scope, value))
    return problems


def _channel_problem(channel: str) -> str:
    if channel in channels.IOTDA_CHANNELS:
        return f"channel {channel} is not supported by this engine"
    return f"unknown channel '{channel}'"


# ------------------------------------------------------------------ rule texts


def _compile_rules(data: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for i, rule in _items(data, "rules"):
        select, where = rule.get("select"), rule.get("where")
        dialect, sql = rule.get("dialect", "iotda"), rule.get("sql")
        if dialect not in DIALECTS:
            continue  # the model reports it
        if dialect == "aliyun" and isinstance(sql, str):
            try:
                select, _, where = split_sql(sql)
            except ValueError:
                continue  # the model reports it
        if not all(text is None or isinstance(text, str) for text in (select, where)):
            continue  # the model reports the wrong type
        try:
            # Every rule, active or not: activating one later must not fail.
            check_rule(select or None, where or None, dialect)
        except RuleError as err:
            field = "sql" if sql is not None else err.clause or "where"
            problems.append((("rules", i, field), _rule_message(err)))
    return problems


def _rule_message(err: Any) -> str:
    position = f" (line {err.line}, column {err.column} of the clause)" if err.line else ""
    snippet = f"\n{err.snippet}" if err.snippet else ""
    return f"{err.message}{position}{snippet}"
