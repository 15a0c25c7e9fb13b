"""JSON Schema of the rule-file format, for editors (`engine schema`).

Built from the same pydantic models `load_config` validates with, so it
cannot drift from them. What the models check in code is spelled out for
the schema: each channel's `channel_detail` (the models take a dict and
look the channel up at validation time), the events of each resource, and
the one-of choices of a rule test (`input`/`inputs`; `output`/`contains`/
`no_match`).

The schema is a help for completion and early errors, not the validator:
`engine check` also compiles the rules, checks ids across files and resolves
`${ENV}` values (a `${DB_PORT}` where a number is expected is valid for the
engine but not for the schema).
"""

from __future__ import annotations

from typing import Any

from engine.config import channels
from engine.config.models import EngineConfig
from engine.schema import RESOURCE_EVENTS

SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"


def rule_file_schema() -> dict[str, Any]:
    schema = EngineConfig.model_json_schema(mode="validation")
    defs = schema.setdefault("$defs", {})
    schema = {**schema, "$schema": SCHEMA_URI, "title": "iot-forwarding-engine rule file",
              "description": "Rules, actions, policies, sources and worker options of "
              "`engine run` (docs/configuration.md)."}

    # Each channel's detail model, under its detail key; `channel` chooses one.
    cases = []
    for name, sink in sorted(channels.registry().items()):
        detail = sink.Config.model_json_schema(mode="validation", ref_template="#/$defs/{model}")
        defs.update(detail.pop("$defs", {}))
        defs[sink.Config.__name__] = detail
        cases.append({
            "if": {"properties": {"channel": {"const": name}}, "required": ["channel"]},
            "then": {"properties": {"channel_detail": {
                "type": "object", "additionalProperties": False,
                "required": [sink.detail_key],
                "properties": {sink.detail_key: {"$ref": f"#/$defs/{sink.Config.__name__}"}},
            }}},
        })
    action = defs["Action"]
    action["properties"]["channel"] = {"enum": sorted(channels.registry()),
                                       "description": "where the rule output goes"}
    action["allOf"] = cases

    subject = defs["RuleSubject"]
    subject["properties"]["resource"] = {"enum": list(RESOURCE_EVENTS)}
    subject["allOf"] = [
        {"if": {"properties": {"resource": {"const": resource}}, "required": ["resource"]},
         "then": {"properties": {"event": {"enum": list(events)}}}}
        for resource, events in RESOURCE_EVENTS.items()
    ]

    # Checked by the models' validators: one input form, one expectation form.
    defs["RuleTest"]["oneOf"] = [{"required": ["input"]}, {"required": ["inputs"]}]
    defs["Expectation"]["oneOf"] = [
        {"required": ["output"]}, {"required": ["contains"]},
        {"required": ["no_match"], "properties": {"no_match": {"const": True}}}]
    return schema
