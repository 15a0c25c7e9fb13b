"""Path and query parameters: IoTDA's formats, checked before anything is looked up.

- Path ids (`rule_id`, `action_id`, `policy_id`): "a maximum of 36
  characters. Only letters, digits, underscores (_), and hyphens (-)" (seed
  1.4.8.3, 1.4.8.4, 1.4.8.5, 1.4.8.8-1.4.8.10; policy ids have the same
  alphabet here). Any other id cannot name an object, so it is a bad
  request (400), not an unknown object (404).
- List filters, one model per resource kind, with the seed's parameter
  constraints (enumerations, lengths, id alphabet). A value outside them
  is 400 rather than an empty list: a typo in a filter must not look like
  "no such objects".

Both answer 400 `IOTDA.000006` naming the parameter; values are never
echoed (a caller could put anything there).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from engine.api import errors
from engine.config import channels
from engine.config.errors import pydantic_message
from engine.config.models import Id, Name, PolicyScope
from engine.schema import RESOURCE_EVENTS, Resource

ID_PATTERN = "^[A-Za-z0-9_-]{1,36}$"
_ID = re.compile(ID_PATTERN)

# The id alphabet spelled out for the OpenAPI document (Id checks it in code).
QueryId = Annotated[Id, WithJsonSchema({"type": "string", "pattern": ID_PATTERN})]
QueryName = Annotated[Name, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 256})]
_EVENTS = tuple(sorted({event for events in RESOURCE_EVENTS.values() for event in events}))


def check_id(name: str, value: str) -> str:
    """`value` of path parameter `name`, or 400 if no object can have it."""
    if not _ID.fullmatch(value):
        raise errors.invalid_input(
            f"The parameter '{name}' must be 1 to 36 letters, digits, _ or -.")
    return value


class _Filters(BaseModel):
    # Unknown query parameters are ignored, as IoTDA does; paging is Page's.
    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)


class RuleFilters(_Filters):
    """Query of GET /rules (seed Table 1-168)."""

    resource: Resource | None = None
    event: Literal[_EVENTS] | None = None  # type: ignore[valid-type]
    app_type: Literal["GLOBAL", "APP"] | None = None
    app_id: QueryId | None = None
    rule_name: str | None = Field(default=None, min_length=1, max_length=256)
    active: Annotated[Literal["true", "false"], WithJsonSchema({"type": "boolean"})] | None = None


class ActionFilters(_Filters):
    """Query of GET /actions (seed Table 1-213)."""

    rule_id: QueryId | None = None
    channel: str | None = Field(default=None, min_length=1, max_length=256)
    app_type: Literal["GLOBAL", "APP"] | None = None
    app_id: QueryId | None = None

    @field_validator("channel")
    @classmethod
    def _known_channel(cls, channel: str | None) -> str | None:
        # IoTDA's cloud-only channels are valid names (they just match
        # nothing here); anything else is a typo.
        if channel is not None and channel not in channels.IOTDA_CHANNELS \
                and channel not in channels.registry():
            raise PydanticCustomError("channel_unknown", "unknown channel")
        return channel


class FlowControlFilters(_Filters):
    """Query of GET /flowcontrol-policy (seed Table 1-726)."""

    scope: PolicyScope | None = None
    scope_value: str | None = Field(default=None, min_length=1, max_length=256)
    policy_name: QueryName | None = None


class BacklogFilters(_Filters):
    """Query of GET /backlog-policy (seed Table 1-708)."""

    policy_name: QueryName | None = None


FILTER_MODELS: dict[str, type[_Filters]] = {
    "rules": RuleFilters,
    "actions": ActionFilters,
    "flowcontrol_policies": FlowControlFilters,
    "backlog_policies": BacklogFilters,
}
FILTERS = {kind: tuple(model.model_fields) for kind, model in FILTER_MODELS.items()}


def filters(kind: str, query: Mapping[str, str]) -> dict[str, str]:
    """The list filters given in `query` (empty values count as absent),
    checked; raises 400 naming the first bad parameter."""
    model = FILTER_MODELS[kind]
    given = {name: query[name] for name in model.model_fields if query.get(name)}
    try:
        model.model_validate(given)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0])
        raise errors.invalid_input(
            f"The parameter '{name}' is invalid: {pydantic_message(error)}.") from None
    if kind == "rules" and "resource" in given and "event" in given \
            and given["event"] not in RESOURCE_EVENTS[given["resource"]]:
        raise errors.invalid_input("The parameter 'event' is not an event of 'resource'.")
    return given


def filter_schemas(kind: str) -> dict[str, dict[str, Any]]:
    """JSON schema of each filter of `kind` (for the OpenAPI document)."""
    properties = FILTER_MODELS[kind].model_json_schema()["properties"]
    out = {}
    for name, schema in properties.items():
        options = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
        (out[name],) = options
        out[name].pop("title", None)
    return out
