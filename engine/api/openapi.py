"""The OpenAPI 3.1 document served at `/openapi.json`, generated from the
route table (`engine.api.app.ROUTES`) and the JSON schemas of the very
pydantic models that validate the configuration, so it cannot drift from
what the server accepts.

Derived schemas: `<Model>Create` is the model without its id required (the
server generates it), `<Model>Update` the fields IoTDA's PUT takes, and
`ChannelDetail` spells out, per supported channel, the destination's own
detail model (the `Action` model only says "an object").
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from engine.api import pagination, params
from engine.api.route import Route
from engine.api.service import KIND, Kind
from engine.config import channels

REF = "#/components/schemas/{model}"

_ERRORS = {
    "400": "Bad Request", "401": "Unauthorized", "403": "Forbidden", "404": "Not Found",
    "413": "Request body too large", "415": "Unsupported Media Type",
    "429": "Too many requests from this credential",
}

def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _schemas(extra_models: Sequence[type[BaseModel]]) -> dict[str, Any]:
    sinks = channels.registry()
    models = [kind.model for kind in KIND.values()] + [s.Config for s in sinks.values()]
    models += list(extra_models)
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas: dict[str, Any] = top["$defs"]

    schemas["ChannelDetail"] = {
        "type": "object",
        "description": "Exactly one key: the detail key of the action's channel.",
        "properties": {sink.detail_key: _ref(sink.Config.__name__) for sink in sinks.values()},
        "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
    }
    schemas["Action"]["properties"]["channel"]["enum"] = sorted(sinks)
    schemas["Action"]["properties"]["channel_detail"] = _ref("ChannelDetail")

    for kind in KIND.values():
        name = kind.model.__name__
        full = schemas[name]
        for field in kind.file_only:
            del full["properties"][field]
        create = copy.deepcopy(full)
        create["required"] = [f for f in full.get("required", []) if f != kind.id_field]
        create["properties"][kind.id_field]["description"] = (
            "Extension: a client-chosen id (IoTDA generates it; so does this server when absent)."
        )
        if kind.name == "rules":
            create["properties"]["active"]["default"] = False
        schemas[f"{name}Create"] = create
        schemas[f"{name}Update"] = {
            "type": "object", "additionalProperties": False,
            "properties": {f: _without_default(full["properties"][f])
                           for f in sorted(kind.updatable)},
        }
        schemas[f"{name}List"] = {
            "type": "object", "required": [kind.name, "count", "marker"],
            "properties": {
                kind.name: {"type": "array", "items": _ref(name)},
                "count": {"type": "integer", "minimum": 0},
                "marker": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
        }
    schemas["Error"] = {
        "type": "object", "required": ["error_code", "error_msg"],
        "properties": {"error_code": {"type": "string"}, "error_msg": {"type": "string"}},
    }
    schemas["TestResult"] = {
        "type": "object", "required": ["result"],
        "properties": {
            "result": {"type": "string", "enum": ["match", "no_match", "error"]},
            "output": {"type": "object"},
            "error": {"type": "object", "properties": {
                "type": {"type": "string"}, "clause": {"type": "string"},
                "line": {"type": "integer"}, "column": {"type": "integer"},
                "message": {"type": "string"}, "snippet": {"type": "string"}}},
        },
    }
    counters = {name: {"type": "integer"} for name in ("matched", "forwarded", "failed",
                                                       "backlogged", "dead_lettered", "inflight")}
    schemas["RuleMetrics"] = {
        "type": "object",
        "properties": {
            "rule_id": {"type": "string"}, "worker_attached": {"type": "boolean"},
            "evaluated": {"type": "integer"}, "matched": {"type": "integer"},
            "failed": {"type": "integer"},
            "actions": {"type": "array", "items": {"type": "object", "properties": {
                "action_id": {"type": "string"}, **counters}}},
        },
    }
    return schemas


def _without_default(schema: dict[str, Any]) -> dict[str, Any]:
    # In an update an absent field is unchanged, not reset to the default.
    return {k: v for k, v in schema.items() if k != "default"}


def _parameters(route: Route) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name in _path_names(route.path):
        schema = ({"type": "string", "maxLength": 64} if name == "project_id"
                  else {"type": "string", "pattern": params.ID_PATTERN})
        out.append({"name": name, "in": "path", "required": True, "schema": schema})
    if route.operation == "list" and route.kind is not None:
        for name, schema in params.filter_schemas(route.kind.name).items():
            out.append({"name": name, "in": "query", "schema": schema})
        out += [
            {"name": "limit", "in": "query", "schema": {
                "type": "integer", "minimum": 1, "maximum": pagination.LIMIT_MAX,
                "default": pagination.LIMIT_DEFAULT}},
            {"name": "marker", "in": "query", "schema": {
                "type": "string", "pattern": "^[0-9a-fA-F]{24}$",
                "default": pagination.MARKER_DEFAULT}},
            {"name": "offset", "in": "query", "schema": {
                "type": "integer", "minimum": 0, "maximum": pagination.OFFSET_MAX, "default": 0}},
        ]
    return out


def _registry_ok(operation: str) -> tuple[str, dict[str, Any] | None]:
    # The product and device routes (engine.api.devices): IoTDA's bodies,
    # described by the seed rather than by a model of this engine.
    if operation.startswith("create"):
        return "201", {"type": "object"}
    if operation.startswith("delete"):
        return "204", None
    return "200", {"type": "object"}


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _operation(route: Route) -> dict[str, Any]:
    kind: Kind | None = route.kind
    name = kind.model.__name__ if kind is not None else ""
    op: dict[str, Any] = {
        "operationId": f"{route.operation}{name}",
        "summary": route.summary,
        "parameters": _parameters(route),
    }
    body = {"create": f"{name}Create", "update": f"{name}Update"}.get(route.operation)
    if route.body is not None:
        body = route.body.__name__
    if body is not None:
        op["requestBody"] = {"required": True, **_json(_ref(body))}
    ok = {
        "create": ("201", _ref(name)), "list": ("200", _ref(f"{name}List")),
        "show": ("200", _ref(name)), "update": ("200", _ref(name)), "delete": ("204", None),
        "test_rule": ("200", _ref("TestResult")), "test": ("200", _ref("TestResult")),
        "metrics": ("200", _ref("RuleMetrics")), "openapi": ("200", {"type": "object"}),
    }.get(route.operation) or _registry_ok(route.operation)
    responses: dict[str, Any] = {ok[0]: {"description": "OK", **(_json(ok[1]) if ok[1] else {})}}
    for status, text in _ERRORS.items():
        responses[status] = {"description": text, **_json(_ref("Error"))}
    op["responses"] = responses
    if route.operation == "openapi":
        op["operationId"] = "openapi"
    return op


@functools.cache
def document(routes: tuple[Route, ...]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if route.operation == "console":  # a page and its files, not API operations
            continue
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    extra = tuple(route.body for route in routes if route.body is not None)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "IoT forwarding engine management API",
            "version": "5",
            "description": "Huawei IoTDA-compatible data forwarding rule management "
                           "(rules, actions, flow control and backlog policies) plus extensions. "
                           "See docs/api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(extra),
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"},
                "aksk": {"type": "apiKey", "in": "header", "name": "Authorization",
                         "description": "SDK-HMAC-SHA256 request signature with X-Sdk-Date "
                                        "(Huawei Cloud APIG AK/SK signing)."},
            },
        },
        "security": [{"token": []}, {"aksk": []}],
    }
