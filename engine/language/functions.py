"""The built-in function table: names and arities (checked at compile time).

Run-time behaviour lives in the core (engine/_core.pyx) and, as the test
oracle, in engine/language/reference.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    name: str
    min_args: int
    max_args: int
    fuzzy_arg: int | None = None   # index of the optional literal-boolean `fuzzy` argument
    signature: str = ""


FUNCTIONS: dict[str, FunctionSpec] = {
    f.name: f
    for f in (
        FunctionSpec("GET_TAG", 1, 1, signature="GET_TAG(tagKey)"),
        FunctionSpec("CONTAINS_TAG", 1, 1, signature="CONTAINS_TAG(tagKey)"),
        FunctionSpec("GET_SERVICE", 1, 2, 1, "GET_SERVICE(serviceId [, fuzzy])"),
        FunctionSpec("GET_SERVICES", 1, 2, 1, "GET_SERVICES(serviceId [, fuzzy])"),
        FunctionSpec("CONTAINS_SERVICES", 1, 2, 1, "CONTAINS_SERVICES(serviceId [, fuzzy])"),
        FunctionSpec("GET_SERVICE_PROPERTIES", 1, 1, signature="GET_SERVICE_PROPERTIES(serviceId)"),
        FunctionSpec("GET_SERVICE_PROPERTY", 2, 2,
                     signature="GET_SERVICE_PROPERTY(serviceId, propertyKey)"),
        FunctionSpec("STARTS_WITH", 2, 2, signature="STARTS_WITH(input, prefix)"),
        FunctionSpec("ENDS_WITH", 2, 2, signature="ENDS_WITH(input, suffix)"),
        FunctionSpec("CONCAT", 2, 2, signature="CONCAT(input1, input2)"),
        FunctionSpec("REPLACE", 3, 3, signature="REPLACE(input, target, replacement)"),
        FunctionSpec("SUBSTRING", 2, 3, signature="SUBSTRING(input, beginIndex [, endIndex])"),
        FunctionSpec("LOWER", 1, 1, signature="LOWER(input)"),
        FunctionSpec("UPPER", 1, 1, signature="UPPER(input)"),
    )
}
