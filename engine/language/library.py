"""The built-in functions, one declaration each (see engine/language/functions.py).

The decorated Python function is the reference form (the test oracle, over
the reference interpreter's values: JSON values plus MISSING); `compiled`
names the core's implementation. A function never raises at run time: wrong
types, nulls and MISSING give MISSING unless its `doc` says otherwise.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import math
import random
import re
import time
import uuid
from typing import Any

from engine.language.functions import Example, Registry, declare
from engine.language.values import MISSING, is_number, is_string, render, resolve

FUNCTIONS = Registry()


def fn(name, category, args, **kw):
    return declare(FUNCTIONS, name, category, args, **kw)


# ---------------------------------------------------------------- IoTDA (9)

def _tags(event: Any) -> list | None:
    """notify_data.header.tags if it is an array, else notify_data.body.tags if
    that is an array, else None."""
    for where in ("header", "body"):
        t = resolve(event, ("notify_data", where, "tags"))
        if type(t) is list:
            return t
    return None


def _services(event: Any) -> list | None:
    """notify_data.body.services, only on property reports; None when unusable."""
    if type(event) is not dict or event.get("resource") != "device.property":
        return None
    s = resolve(event, ("notify_data", "body", "services"))
    return s if type(s) is list else []


def _service_matches(service: Any, service_id: str, fuzzy: bool) -> bool:
    if type(service) is not dict or not is_string(service.get("service_id")):
        return False
    sid = service["service_id"]
    return service_id in sid if fuzzy else sid == service_id


def _matching_services(event: Any, service_id: Any, fuzzy: bool) -> list | None:
    """Matching services in array order; None when not a property report or the
    id is not a string (the callers turn that into MISSING / false)."""
    svcs = _services(event)
    if svcs is None or not is_string(service_id):
        return None
    return [s for s in svcs if _service_matches(s, service_id, fuzzy)]


def _first_tag(event: Any, key: Any) -> Any:
    if not is_string(key):
        return MISSING
    for tag in _tags(event) or []:
        if type(tag) is dict and tag.get("tag_key") == key:
            return tag
    return MISSING


def _fuzzy_flag(node) -> bool:
    return len(node.args) > 1 and node.args[1].value is True


_PROPERTY_REPORT = {"resource": "device.property", "notify_data": {"header": {"device_id": "d1"},
                    "body": {"services": [{"service_id": "Battery",
                                           "properties": {"batteryLevel": 80}}]}}}
_TAGGED = {"notify_data": {"header": {"tags": [{"tag_key": "site", "tag_value": "north"}]}}}


@fn("GET_TAG", "IoTDA", 1, uses_event=True, fold=False,
    compiled=lambda core, a, node: core.GetTag(a[0]),
    signature="GET_TAG(tagKey)",
    doc="tag_value of the first tag whose tag_key equals tagKey (header tags, else body "
        "tags); MISSING if none or it has no tag_value",
    examples=(Example("GET_TAG('site')", "north", _TAGGED),))
def get_tag(event, key):
    tag = _first_tag(event, key)
    if tag is MISSING or "tag_value" not in tag:
        return MISSING
    return tag["tag_value"]


@fn("CONTAINS_TAG", "IoTDA", 1, uses_event=True, fold=False,
    compiled=lambda core, a, node: core.ContainsTag(a[0]),
    signature="CONTAINS_TAG(tagKey)",
    doc="true if a tag with that key exists; false otherwise (also for a non-string key)",
    examples=(Example("CONTAINS_TAG('site')", True, _TAGGED),))
def contains_tag(event, key):
    return _first_tag(event, key) is not MISSING


def _svc(kind):
    def build(core, a, node):
        return core.ServiceFn(core.SVC[kind], a[0], _fuzzy_flag(node))
    return build


@fn("GET_SERVICE", "IoTDA", (1, 2), uses_event=True, fold=False, fuzzy_arg=1,
    compiled=_svc("GET_SERVICE"), signature="GET_SERVICE(serviceId [, fuzzy])",
    doc="the first service of a property report whose service_id equals serviceId (contains "
        "it, with fuzzy true); MISSING if none or not a property report",
    examples=(Example("GET_SERVICE('Batt', true)",
                      {"service_id": "Battery", "properties": {"batteryLevel": 80}},
                      _PROPERTY_REPORT),))
def get_service(event, sid, fuzzy=False):
    found = _matching_services(event, sid, fuzzy is True)
    return found[0] if found else MISSING


@fn("GET_SERVICES", "IoTDA", (1, 2), uses_event=True, fold=False, fuzzy_arg=1,
    compiled=_svc("GET_SERVICES"), signature="GET_SERVICES(serviceId [, fuzzy])",
    doc="all matching services, in order ([] if none); MISSING if not a property report",
    examples=(Example("GET_SERVICES('Temp')", [], _PROPERTY_REPORT),))
def get_services(event, sid, fuzzy=False):
    found = _matching_services(event, sid, fuzzy is True)
    return MISSING if found is None else found


@fn("CONTAINS_SERVICES", "IoTDA", (1, 2), uses_event=True, fold=False, fuzzy_arg=1,
    compiled=_svc("CONTAINS_SERVICES"), signature="CONTAINS_SERVICES(serviceId [, fuzzy])",
    doc="true if a service matches; false otherwise (also on other notifications)",
    examples=(Example("CONTAINS_SERVICES('Battery')", True, _PROPERTY_REPORT),))
def contains_services(event, sid, fuzzy=False):
    return bool(_matching_services(event, sid, fuzzy is True))


def _properties(event, sid):
    found = _matching_services(event, sid, False)
    if not found:
        return MISSING
    props = found[0].get("properties", MISSING)
    return props if type(props) is dict else MISSING


@fn("GET_SERVICE_PROPERTIES", "IoTDA", 1, uses_event=True, fold=False,
    compiled=lambda core, a, node: core.ServiceFn(core.SVC["GET_SERVICE_PROPERTIES"], a[0]),
    signature="GET_SERVICE_PROPERTIES(serviceId)",
    doc="the properties object of the first exact match; MISSING if none or not an object",
    examples=(Example("GET_SERVICE_PROPERTIES('Battery')", {"batteryLevel": 80},
                      _PROPERTY_REPORT),))
def get_service_properties(event, sid):
    return _properties(event, sid)


@fn("GET_SERVICE_PROPERTY", "IoTDA", 2, uses_event=True, fold=False,
    compiled=lambda core, a, node: core.ServiceFn(core.SVC["GET_SERVICE_PROPERTY"], a[0],
                                                  False, a[1]),
    signature="GET_SERVICE_PROPERTY(serviceId, propertyKey)",
    doc="one property of the first exact match; MISSING if absent or the key is not a string",
    examples=(Example("GET_SERVICE_PROPERTY('Battery', 'batteryLevel')", 80,
                      _PROPERTY_REPORT),))
def get_service_property(event, sid, key):
    props = _properties(event, sid)
    if props is MISSING or not is_string(key) or key not in props:
        return MISSING
    return props[key]


@fn("STARTS_WITH", "string", 2, compiled=lambda core, a, node: core.StartsEnds(a[0], a[1], False),
    signature="STARTS_WITH(input, prefix)",
    doc="boolean; MISSING unless both are strings",
    examples=(Example("STARTS_WITH('Battery', 'Bat')", True),))
def starts_with(s, affix):
    if not (is_string(s) and is_string(affix)):
        return MISSING
    return s.startswith(affix)


@fn("ENDS_WITH", "string", 2, compiled=lambda core, a, node: core.StartsEnds(a[0], a[1], True),
    signature="ENDS_WITH(input, suffix)",
    doc="boolean; MISSING unless both are strings",
    examples=(Example("ENDS_WITH('Battery', 'ry')", True),))
def ends_with(s, affix):
    if not (is_string(s) and is_string(affix)):
        return MISSING
    return s.endswith(affix)


@fn("CONCAT", "string", 2, compiled=lambda core, a, node: core.ConcatFn(a[0], a[1]),
    signature="CONCAT(input1, input2)",
    doc="the two values rendered as text (as `||`); MISSING if either is null, MISSING, "
        "an object or an array",
    examples=(Example("CONCAT('t', 40.5)", "t40.5"),))
def concat(a, b):
    a, b = render(a), render(b)
    return MISSING if a is None or b is None else a + b


def _text_input(v: Any) -> str | None:
    """REPLACE / SUBSTRING input: a string, or a number rendered as text."""
    if is_string(v) or is_number(v):
        return render(v)
    return None


def _clamp_index(v: Any, length: int) -> int:
    i = math.trunc(v)
    return min(max(i, 0), length)


@fn("REPLACE", "string", 3, compiled=lambda core, a, node: core.ReplaceFn(a[0], a[1], a[2]),
    signature="REPLACE(input, target, replacement)",
    doc="every non-overlapping target replaced, left to right (a number input is its text); "
        "an empty target changes nothing; MISSING unless target and replacement are strings",
    examples=(Example("REPLACE('a-b-c', '-', '+')", "a+b+c"),))
def replace(s, target, replacement):
    s = _text_input(s)
    if s is None or not is_string(target) or not is_string(replacement):
        return MISSING
    if target == "":
        return s
    return s.replace(target, replacement)


@fn("SUBSTRING", "string", (2, 3), compiled=lambda core, a, node: core.SubstringFn(*a),
    signature="SUBSTRING(input, beginIndex [, endIndex])",
    doc="characters [begin, end) (0-based, indices truncated and clamped; end defaults to the "
        "length); MISSING if an index is not a number",
    examples=(Example("SUBSTRING('Battery', 0, 4)", "Batt"),))
def substring(s, begin, *end_arg):
    s = _text_input(s)
    end = end_arg[0] if end_arg else len(s or "")
    if s is None or not is_number(begin) or not is_number(end) or \
            (type(begin) is float and math.isnan(begin)) or (type(end) is float and math.isnan(end)):
        return MISSING
    b, e = _clamp_index(begin, len(s)), _clamp_index(end, len(s))
    return s[b:e] if b < e else ""


@fn("LOWER", "string", 1, compiled=lambda core, a, node: core.CaseFn(a[0], False),
    signature="LOWER(input)", doc="lower-case string; MISSING unless a string",
    examples=(Example("LOWER('OnLine')", "online"),))
def lower(s):
    return s.lower() if is_string(s) else MISSING


@fn("UPPER", "string", 1, compiled=lambda core, a, node: core.CaseFn(a[0], True),
    signature="UPPER(input)", doc="upper-case string; MISSING unless a string",
    examples=(Example("UPPER('online')", "ONLINE"),))
def upper(s):
    return s.upper() if is_string(s) else MISSING


# ---------------------------------------------------------------- the library
#
# Reference forms in plain Python. Numbers: int and float but never bool;
# an integer result outside the signed 64-bit range and a decimal result that
# is not finite are MISSING (as arithmetic).

E = Example
M = "MISSING"


def _num(v) -> bool:
    return is_number(v)


def _int(v) -> bool:
    return type(v) is int


def _dec(x: float) -> Any:
    return x if math.isfinite(x) else MISSING


def _i64(i: int) -> Any:
    return i if -(2**63) <= i < 2**63 else MISSING


def _float_op(f, *xs) -> Any:
    """A libm function on decimals; domain and range errors are MISSING."""
    try:
        return _dec(f(*(float(x) for x in xs)))
    except (ValueError, OverflowError):
        return MISSING


# -- math

@fn("abs", "math", 1, signature="abs(x)", doc="absolute value (int stays int); MISSING unless "
    "a number or when -2⁶³", examples=(E("abs(-2)", 2), E("abs(-2.5)", 2.5)))
def abs_(x):
    if not _num(x):
        return MISSING
    return _i64(abs(x)) if _int(x) else abs(x)


@fn("ceil", "math", 1, signature="ceil(x)", doc="smallest integer ≥ x, as an int; MISSING unless "
    "a number", examples=(E("ceil(1.2)", 2),))
def ceil_(x):
    if not _num(x):
        return MISSING
    return x if _int(x) else _i64(math.ceil(x))


@fn("floor", "math", 1, signature="floor(x)", doc="largest integer ≤ x, as an int; MISSING "
    "unless a number", examples=(E("floor(-1.2)", -2),))
def floor_(x):
    if not _num(x):
        return MISSING
    return x if _int(x) else _i64(math.floor(x))


@fn("round", "math", 1, signature="round(x)", doc="nearest integer, halves away from zero, as "
    "an int; MISSING unless a number", examples=(E("round(2.5)", 3), E("round(-2.5)", -3)))
def round_(x):
    if not _num(x):
        return MISSING
    if _int(x):
        return x
    m = abs(x)
    r = math.floor(m)
    if m - r >= 0.5:
        r += 1
    return _i64(-r if x < 0 else r)


@fn("sqrt", "math", 1, signature="sqrt(x)", doc="square root as a decimal; MISSING if x < 0 or "
    "not a number", examples=(E("sqrt(16)", 4.0),))
def sqrt_(x):
    return _float_op(math.sqrt, x) if _num(x) and x >= 0 else MISSING


@fn("power", "math", 2, aliases=("pow",), signature="power(x, y)", doc="x to the power y as a "
    "decimal; MISSING on overflow, a domain error (negative x, fractional y; 0 to a negative "
    "power) or a non-number", examples=(E("power(2, 10)", 1024.0),))
def power_(x, y):
    return _float_op(math.pow, x, y) if _num(x) and _num(y) else MISSING


def _unary(name, f, doc, example):
    def ref(x):
        return _float_op(f, x) if _num(x) else MISSING
    fn(name, "math", 1, signature=f"{name}(x)", doc=doc, examples=(example,))(ref)


_unary("exp", math.exp, "e to the power x (decimal); MISSING on overflow", E("exp(0)", 1.0))
for _name, _f in (("log", math.log), ("log10", math.log10), ("log2", math.log2)):
    def _log(x, _f=_f):
        return _float_op(_f, x) if _num(x) and x > 0 else MISSING
    fn(_name, "math", 1, signature=f"{_name}(x)", doc="logarithm (decimal); MISSING if x ≤ 0",
       aliases=("ln",) if _name == "log" else (),
       examples=(E(f"{_name}(1)", 0.0),))(_log)
for _name, _f in (("sin", math.sin), ("cos", math.cos), ("tan", math.tan), ("asin", math.asin),
                  ("acos", math.acos), ("atan", math.atan), ("sinh", math.sinh),
                  ("cosh", math.cosh), ("tanh", math.tanh), ("asinh", math.asinh),
                  ("acosh", math.acosh), ("atanh", math.atanh)):
    _unary(_name, _f, "radians, decimal result; MISSING outside the domain or on overflow",
           E(f"{_name}(0)", _f(0) if _name != "acosh" else M))


@fn("atan2", "math", 2, signature="atan2(y, x)", doc="angle of (x, y) in radians (decimal)",
    examples=(E("atan2(0, 1)", 0.0),))
def atan2_(y, x):
    return _float_op(math.atan2, y, x) if _num(x) and _num(y) else MISSING


@fn("fmod", "math", 2, signature="fmod(x, y)", doc="remainder of x / y with the sign of x, as "
    "a decimal; MISSING if y = 0", examples=(E("fmod(7.5, 2)", 1.5),))
def fmod_(x, y):
    return _float_op(math.fmod, x, y) if _num(x) and _num(y) and y != 0 else MISSING


@fn("mod", "math", 2, signature="mod(x, y)", doc="remainder with the sign of x: an int for two "
    "ints, else as fmod; MISSING if y = 0", examples=(E("mod(-7, 3)", -1),))
def mod_(x, y):
    if not (_num(x) and _num(y)) or y == 0:
        return MISSING
    if _int(x) and _int(y):
        r = abs(x) % abs(y)
        return -r if x < 0 else r
    return _float_op(math.fmod, x, y)


# -- type tests and conversions

def _test(name, pred, example):
    fn(name, "type", 1, signature=f"{name}(x)", doc="boolean, never MISSING",
       examples=(example,))(pred)


_test("is_null", lambda x: x is MISSING or x is None, E("is_null(data.nothing)", True))
_test("is_not_null", lambda x: not (x is MISSING or x is None), E("is_not_null(1)", True))
_test("is_num", lambda x: is_number(x), E("is_num('1')", False))
_test("is_int", lambda x: type(x) is int, E("is_int(1.0)", False))
_test("is_float", lambda x: type(x) is float, E("is_float(1.0)", True))
_test("is_str", lambda x: type(x) is str, E("is_str('a')", True))
_test("is_bool", lambda x: type(x) is bool, E("is_bool(false)", True))
_test("is_map", lambda x: type(x) is dict, E("is_map(data)", True, {"data": {}}))
_test("is_array", lambda x: type(x) is list, E("is_array(data)", True, {"data": []}))

_JSON_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?", re.ASCII)


def _number_of_text(s: str) -> Any:
    m = _JSON_NUMBER.fullmatch(s)
    if not m:
        return MISSING
    if m.group(2) or m.group(3):
        return _dec(float(s))
    return _i64(int(s))


@fn("int", "type", 1, signature="int(x)", doc="an integer: decimals truncated toward zero, "
    "true/false as 1/0, a string holding a JSON number parsed; MISSING otherwise or beyond "
    "64 bits", examples=(E("int('-12.7')", -12), E("int(true)", 1)))
def int_(x):
    if type(x) is bool:
        return int(x)
    if type(x) is str:
        x = _number_of_text(x)
    if not _num(x):
        return MISSING
    return _i64(math.trunc(x))


@fn("float", "type", 1, signature="float(x)", doc="a decimal: numbers converted, true/false as "
    "1.0/0.0, a string holding a JSON number parsed; MISSING otherwise",
    examples=(E("float('2')", 2.0),))
def float_(x):
    if type(x) is bool:
        return 1.0 if x else 0.0
    if type(x) is str:
        x = _number_of_text(x)
    return float(x) if _num(x) else MISSING


def _json_text(v) -> str:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@fn("str", "type", 1, aliases=("string",), signature="str(x)", doc="text: scalars as `||` "
    "renders them, objects and arrays as compact JSON; MISSING for null and MISSING",
    examples=(E("str(2.5)", "2.5"), E("str(data)", '{"a":[1,true]}', {"data": {"a": [1, True]}})))
def str_(x):
    if type(x) in (dict, list):
        return _json_text(x)
    t = render(x)
    return MISSING if t is None else t


@fn("bool", "type", 1, signature="bool(x)", doc="a boolean: booleans as is, numbers ≠ 0, the "
    "strings 'true'/'false'; MISSING otherwise", examples=(E("bool('true')", True),))
def bool_(x):
    if type(x) is bool:
        return x
    if _num(x):
        return x != 0
    if x == "true" or x == "false":
        return x == "true"
    return MISSING


@fn("coalesce", "type", (1, None), aliases=("ifnull",), signature="coalesce(x1, x2, …)",
    doc="the first argument that is neither null nor MISSING; MISSING if none",
    examples=(E("coalesce(data.t, data.temp, 0)", 21, {"data": {"temp": 21}}),))
def coalesce_(*xs):
    for x in xs:
        if x is not MISSING and x is not None:
            return x
    return MISSING


# -- strings

@fn("length", "string", 1, aliases=("len", "strlen"), signature="length(x)", doc="characters of a "
    "string, elements of an array, members of an object; MISSING otherwise",
    examples=(E("length('温度')", 2),))
def length_(x):
    return len(x) if type(x) in (str, list, dict) else MISSING


for _name, _m in (("trim", str.strip), ("ltrim", str.lstrip), ("rtrim", str.rstrip)):
    def _trim(s, _m=_m):
        return _m(s) if is_string(s) else MISSING
    fn(_name, "string", 1, signature=f"{_name}(s)", doc="white space removed (Unicode "
       "white space); MISSING unless a string", examples=(E(f"{_name}(' a ')", _m(" a ")),))(_trim)


@fn("reverse", "string", 1, signature="reverse(x)", doc="a string's characters or an array's "
    "elements in reverse order; MISSING otherwise", examples=(E("reverse('abc')", "cba"),))
def reverse_(x):
    if type(x) in (str, list):
        return x[::-1]
    return MISSING


def _count(v) -> int | None:
    """A count/position argument: truncated, negatives as 0, capped at 10⁹."""
    if not _num(v) or v != v:
        return None
    return min(max(math.trunc(v), 0), 10**9)


@fn("substr", "string", (2, 3), signature="substr(s, start [, length])", doc="length characters "
    "(default: the rest) from 0-based start; numbers truncated, negatives as 0; MISSING unless "
    "s is a string and the others numbers", examples=(E("substr('Battery', 1, 3)", "att"),))
def substr_(s, start, *n):
    b = _count(start)
    if not is_string(s) or b is None:
        return MISSING
    if not n:
        return s[b:]
    n = n[0]
    k = _count(n)
    return MISSING if k is None else s[b:b + k]


@fn("split", "string", 2, signature="split(s, sep)", doc="array of the parts between "
    "separators (empty parts kept); MISSING if sep is empty or either is not a string",
    examples=(E("split('a,b,,c', ',')", ["a", "b", "", "c"]),))
def split_(s, sep):
    if not (is_string(s) and is_string(sep)) or sep == "":
        return MISSING
    return s.split(sep)


@fn("join", "string", (1, 2), signature="join(array [, sep])", doc="the elements rendered as "
    "text (as `||`) joined by sep (default ''); MISSING if an element has no text (null, "
    "object, array)", examples=(E("join(data.a, '-')", "1-x-true", {"data": {"a": [1, "x", True]}}),))
def join_(arr, sep=""):
    if type(arr) is not list or not is_string(sep):
        return MISSING
    parts = [render(x) for x in arr]
    return MISSING if None in parts else sep.join(parts)


@fn("pad", "string", (2, 4), signature="pad(s, length [, 'trailing'|'leading'|'both' [, char]])",
    doc="s padded with char (default space) to length characters (extra on the right for "
    "'both'); MISSING for another side, a char that is not one character, or a length over "
    "65536", examples=(E("pad('7', 3, 'leading', '0')", "007"),))
def pad_(s, n, side="trailing", ch=" "):
    k = _count(n)
    if not is_string(s) or k is None or k > 65536 or not is_string(ch) or len(ch) != 1:
        return MISSING
    gap = max(k - len(s), 0)
    if side == "trailing":
        return s + ch * gap
    if side == "leading":
        return ch * gap + s
    if side == "both":
        return ch * (gap // 2) + s + ch * (gap - gap // 2)
    return MISSING


def _regex(p):
    if not is_string(p):
        return None
    try:
        return re.compile(p)
    except Exception:
        return None


@fn("regex_match", "string", 2, signature="regex_match(s, regex)", doc="true if the (Python "
    "`re` syntax) regular expression matches somewhere in s; MISSING for an invalid regex "
    "(patterns are compiled once and cached; avoid ones that backtrack catastrophically)",
    examples=(E("regex_match('dev-17', '[0-9]+$')", True),))
def regex_match_(s, p):
    rx = _regex(p)
    if not is_string(s) or rx is None:
        return MISSING
    return rx.search(s) is not None


@fn("regex_replace", "string", 3, signature="regex_replace(s, regex, replacement)",
    doc="every match replaced by the replacement, taken literally",
    examples=(E("regex_replace('a1b22', '[0-9]+', '#')", "a#b#"),))
def regex_replace_(s, p, r):
    rx = _regex(p)
    if not is_string(s) or rx is None or not is_string(r):
        return MISSING
    out, last = [], 0
    for m in rx.finditer(s):
        out.append(s[last:m.start()])
        out.append(r)
        last = m.end()
    # re.sub's rule for an empty match right after a match is finditer's too.
    out.append(s[last:])
    return "".join(out)


@fn("regex_extract", "string", 2, signature="regex_extract(s, regex)", doc="the groups of the "
    "first match as an array (the whole match if the regex has no groups; null for a group "
    "that did not take part); [] if no match",
    examples=(E("regex_extract('t=21.5C', '([0-9.]+)(C|F)')", ["21.5", "C"]),))
def regex_extract_(s, p):
    rx = _regex(p)
    if not is_string(s) or rx is None:
        return MISSING
    m = rx.search(s)
    if m is None:
        return []
    return list(m.groups()) if rx.groups else [m.group(0)]


@fn("find", "string", 2, signature="find(s, sub)", doc="the rest of s from the first "
    "occurrence of sub; '' if none", examples=(E("find('a/b/c', '/')", "/b/c"),))
def find_(s, sub):
    if not (is_string(s) and is_string(sub)):
        return MISSING
    i = s.find(sub)
    return "" if i < 0 else s[i:]


@fn("strpos", "string", 2, aliases=("instr",), signature="strpos(s, sub)", doc="0-based "
    "position of the first occurrence of sub; -1 if none", examples=(E("strpos('abc', 'c')", 2),))
def strpos_(s, sub):
    if not (is_string(s) and is_string(sub)):
        return MISSING
    return s.find(sub)


@fn("sprintf", "string", (1, None), aliases=("format",), signature="sprintf(fmt, x1, …)",
    doc="fmt with each %s replaced by the next argument as str() gives it, %d by int() of a "
    "number, %% by %; MISSING on another directive, a missing conversion or a count mismatch",
    examples=(E("sprintf('%s=%d%%', 'level', 80.6)", "level=80%"),))
def sprintf_(fmt, *xs):
    if not is_string(fmt):
        return MISSING
    out, k, i = [], 0, 0
    while i < len(fmt):
        c = fmt[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        d = fmt[i + 1:i + 2]
        i += 2
        if d == "%":
            out.append("%")
            continue
        if d not in ("s", "d") or k >= len(xs):
            return MISSING
        v = xs[k]
        k += 1
        t = str_(v) if d == "s" else (int_(v) if _num(v) else MISSING)
        if t is MISSING:
            return MISSING
        out.append(str(t))
    return "".join(out) if k == len(xs) else MISSING


# -- maps and arrays

@fn("map_get", "map", (2, 3), aliases=("mget",), signature="map_get(key, map [, default])", doc="the member; "
    "default (or MISSING) if absent; MISSING unless key is a string and map an object",
    examples=(E("map_get('a', data)", 1, {"data": {"a": 1}}),))
def map_get_(k, m, default=MISSING):
    if not is_string(k) or type(m) is not dict:
        return MISSING
    return m.get(k, default)


@fn("map_put", "map", 3, aliases=("mput",), signature="map_put(key, value, map)", doc="a copy of map with the "
    "member set; MISSING if value is MISSING", examples=(E("map_put('b', 2, data)", {"a": 1, "b": 2},
                                                           {"data": {"a": 1}}),))
def map_put_(k, v, m):
    if not is_string(k) or type(m) is not dict or v is MISSING:
        return MISSING
    return {**m, k: v}


@fn("map_keys", "map", 1, signature="map_keys(map)", doc="array of the member names",
    examples=(E("map_keys(data)", ["a"], {"data": {"a": 1}}),))
def map_keys_(m):
    return list(m) if type(m) is dict else MISSING


@fn("map_values", "map", 1, signature="map_values(map)", doc="array of the member values",
    examples=(E("map_values(data)", [1], {"data": {"a": 1}}),))
def map_values_(m):
    return list(m.values()) if type(m) is dict else MISSING


@fn("nth", "array", 2, signature="nth(n, array)", doc="the n-th element, 1-based; MISSING if "
    "out of range or n is not an integer", examples=(E("nth(2, data)", "y", {"data": ["x", "y"]}),))
def nth_(n, arr):
    if type(n) is not int or type(arr) is not list or not 1 <= n <= len(arr):
        return MISSING
    return arr[n - 1]


@fn("first", "array", 1, signature="first(array)", doc="the first element; MISSING if empty",
    examples=(E("first(data)", "x", {"data": ["x", "y"]}),))
def first_(arr):
    return arr[0] if type(arr) is list and arr else MISSING


@fn("last", "array", 1, signature="last(array)", doc="the last element; MISSING if empty",
    examples=(E("last(data)", "y", {"data": ["x", "y"]}),))
def last_(arr):
    return arr[-1] if type(arr) is list and arr else MISSING


def _same(a, b) -> bool:
    """The dialect's = on scalars: same type (numbers across int/decimal)."""
    if is_number(a) and is_number(b):
        return a == b
    return type(a) is type(b) and type(a) in (str, bool) and a == b


@fn("contains", "array", 2, signature="contains(x, array)", doc="true if an element equals x "
    "under `=`; MISSING if x is not a string, number or boolean",
    examples=(E("contains(2, data)", True, {"data": [1, 2.0]}),))
def contains_(x, arr):
    if type(arr) is not list or not (is_string(x) or is_number(x) or type(x) is bool):
        return MISSING
    return any(_same(x, e) for e in arr)


@fn("distinct", "array", 1, signature="distinct(array)", doc="elements without repeats (under "
    "`=`), first occurrences in order; MISSING if an element is null, an object or an array",
    examples=(E("distinct(data)", [1, "1", 2], {"data": [1, "1", 1.0, 2]}),))
def distinct_(arr):
    if type(arr) is not list:
        return MISSING
    out: list = []
    for e in arr:
        if not (is_string(e) or is_number(e) or type(e) is bool):
            return MISSING
        if not any(_same(e, o) for o in out):
            out.append(e)
    return out


@fn("sort", "array", 1, signature="sort(array)", doc="ascending; all numbers or all strings "
    "(code-point order), else MISSING", examples=(E("sort(data)", [1, 2.5, 3], {"data": [3, 1, 2.5]}),))
def sort_(arr):
    if type(arr) is not list:
        return MISSING
    if all(is_number(e) for e in arr) or all(is_string(e) for e in arr):
        return sorted(arr)
    return MISSING


@fn("range", "array", (2, 3), signature="range(start, end [, step])", doc="integers from start "
    "to end inclusive by step (default 1); MISSING for non-integers, step 0 or more than "
    "10,000 elements", examples=(E("range(1, 7, 3)", [1, 4, 7]),))
def range_(lo, hi, step=1):
    if not (type(lo) is int and type(hi) is int and type(step) is int) or step == 0:
        return MISSING
    r = range(lo, hi + (1 if step > 0 else -1), step)
    n = (hi - lo) // step + 1     # len(r) overflows a C size for huge spans
    return MISSING if n > 10000 else list(r)


@fn("sublist", "array", (2, 3), signature="sublist([start,] length, array)", doc="length "
    "elements from 1-based start (default 1); MISSING for non-integers or start < 1",
    examples=(E("sublist(2, 2, data)", ["b", "c"], {"data": ["a", "b", "c", "d"]}),))
def sublist_(*a):
    arr, n = a[-1], a[-2]
    start = a[0] if len(a) == 3 else 1
    if type(arr) is not list or type(n) is not int or type(start) is not int or start < 1:
        return MISSING
    b = min(start, 10**9 + 1) - 1
    return arr[b:b + min(max(n, 0), 10**9)]


# -- hashing and encoding

def _utf8(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


for _name in ("md5", "sha1", "sha256"):
    def _digest(s, _name=_name):
        return hashlib.new(_name, _utf8(s)).hexdigest() if is_string(s) else MISSING
    fn(_name, "hash", 1, aliases=("sha",) if _name == "sha1" else (),
       signature=f"{_name}(s)", doc="lower-case hex digest of the UTF-8 "
       "text; MISSING unless a string",
       examples=(E(f"{_name}('')", hashlib.new(_name, b"").hexdigest()),))(_digest)


def _decoded_text(b: bytes) -> Any:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return MISSING


@fn("base64_encode", "hash", 1, signature="base64_encode(s)", doc="standard base64 of the "
    "UTF-8 text", examples=(E("base64_encode('hi')", "aGk="),))
def base64_encode_(s):
    return base64.b64encode(_utf8(s)).decode() if is_string(s) else MISSING


@fn("base64_decode", "hash", 1, signature="base64_decode(s)", doc="the text base64 encodes; "
    "MISSING if s is not valid base64 or the bytes are not UTF-8",
    examples=(E("base64_decode('aGk=')", "hi"),))
def base64_decode_(s):
    if not is_string(s) or not s.isascii():
        return MISSING
    try:
        return _decoded_text(base64.b64decode(s, validate=True))
    except binascii.Error:
        return MISSING


@fn("hex_encode", "hash", 1, aliases=("bin2hexstr",), signature="hex_encode(s)",
    doc="lower-case hex of the UTF-8 text", examples=(E("hex_encode('hi')", "6869"),))
def hex_encode_(s):
    return _utf8(s).hex() if is_string(s) else MISSING


@fn("hex_decode", "hash", 1, aliases=("hexstr2bin",), signature="hex_decode(s)", doc="the text "
    "a hex string encodes; MISSING if not hex or not UTF-8", examples=(E("hex_decode('6869')", "hi"),))
def hex_decode_(s):
    if not is_string(s) or not s.isascii() or len(s) % 2:
        return MISSING
    try:
        return _decoded_text(bytes.fromhex(s))
    except ValueError:
        return MISSING


@fn("json_encode", "hash", 1, signature="json_encode(x)", doc="compact JSON text (non-ASCII "
    "kept, decimals as `||` renders them); MISSING for MISSING",
    examples=(E("json_encode(data)", '{"a":[1,null]}', {"data": {"a": [1, None]}}),))
def json_encode_(x):
    return MISSING if x is MISSING else _json_text(x)


def _json_int(text: str):
    # As the core's decoder (orjson): integers beyond 64 bits become decimals.
    i = int(text)
    return i if -(2**63) <= i < 2**64 else float(text)


def _no_constant(name: str):
    raise ValueError(name)


def _json_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):      # 1e400: the core's decoder rejects the text
        raise ValueError(text)
    return x


@fn("json_decode", "hash", 1, signature="json_decode(s)", doc="the value JSON text holds; "
    "MISSING if s is not valid JSON", examples=(E("json_decode('{\"a\":1}')", {"a": 1}),))
def json_decode_(s):
    if not is_string(s):
        return MISSING
    try:
        return json.loads(s, parse_int=_json_int, parse_float=_json_float,
                          parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return MISSING


# -- time (UTC)

def _unit(u) -> int | None:
    return {"second": 1, "s": 1, "millisecond": 1000, "ms": 1000}.get(u) if is_string(u) else None


@fn("now_timestamp", "time", (0, 1), fold=False, signature="now_timestamp(['second'|'millisecond'])",
    doc="the current Unix time as an int (seconds by default); never folded, e.g. "
    "`now_timestamp('millisecond')` → `1449922332000`", examples=())
def now_timestamp_(unit="second"):
    u = _unit(unit)
    return MISSING if u is None else int(time.time() * u)


@fn("now_rfc3339", "time", (0, 1), fold=False, signature="now_rfc3339(['second'|'millisecond'])",
    doc="the current UTC time as RFC 3339 text (with milliseconds for 'millisecond'); never "
    "folded, e.g. `now_rfc3339()` → `\"2015-12-12T12:12:12Z\"`",
    examples=())
def now_rfc3339_(unit="second"):
    u = _unit(unit)
    if u is None:
        return MISSING
    return unix_ts_to_rfc3339_(int(time.time() * u), "millisecond" if u == 1000 else "second")


@fn("rand", "math", 0, fold=False, aliases=("random",), signature="rand()",
    doc="a random decimal in [0, 1); never folded, e.g. `rand()` → `0.8444218515250481`",
    examples=())
def rand_():
    return random.random()


@fn("newuuid", "hash", 0, fold=False, aliases=("uuid_v4",), signature="newuuid()",
    doc="a random UUID (version 4) as text; never folded, e.g. `newuuid()` → "
    "`\"1b4e28ba-2fa1-41d2-883f-0016d3cca427\"`", examples=())
def newuuid_():
    return str(uuid.uuid4())


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _ms_of(ts, u: int) -> int:
    return math.floor(ts * (1000 // u)) if type(ts) is float else ts * (1000 // u)


@fn("unix_ts_to_rfc3339", "time", (1, 2), signature="unix_ts_to_rfc3339(ts [, unit])",
    doc="RFC 3339 UTC text, with milliseconds when unit is 'millisecond'; MISSING outside "
    "years 1-9999", examples=(E("unix_ts_to_rfc3339(1449922332)", "2015-12-12T12:12:12Z"),
                              E("unix_ts_to_rfc3339(1449922332000, 'millisecond')",
                                "2015-12-12T12:12:12.000Z")))
def unix_ts_to_rfc3339_(ts, unit="second"):
    u = _unit(unit)
    if not _num(ts) or u is None:
        return MISSING
    try:
        t = _EPOCH + datetime.timedelta(milliseconds=_ms_of(ts, u))
    except OverflowError:
        return MISSING
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    return text + (f".{t.microsecond // 1000:03d}Z" if u == 1000 else "Z")


_TIME_TEXT = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?"
                        r"(?:[Zz]|([+-])(\d\d):(\d\d))", re.ASCII)
_TIME_COMPACT = re.compile(r"(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z", re.ASCII)


def _time_ms(s) -> Any:
    if not is_string(s):
        return MISSING
    m = _TIME_TEXT.fullmatch(s)
    frac, sign, oh, om = (m.group(7), m.group(8), m.group(9), m.group(10)) if m else \
        (None, None, None, None)
    if m is None:
        m = _TIME_COMPACT.fullmatch(s)
        if m is None:
            return MISSING
    try:
        t = datetime.datetime(*(int(g) for g in m.groups()[:6]), tzinfo=datetime.UTC)
    except ValueError:
        return MISSING
    ms = int((frac or "").ljust(3, "0")[:3])
    offset = (int(oh) * 60 + int(om)) * 60_000 if sign else 0
    whole = (t - _EPOCH) // datetime.timedelta(seconds=1)
    return whole * 1000 + ms - (offset if sign == "+" else -offset)


@fn("rfc3339_to_unix_ts", "time", (1, 2), aliases=("date_to_unix_ts",),
    signature="rfc3339_to_unix_ts(text [, unit])", doc="Unix time (int, seconds by default, "
    "rounded down) of `2015-12-12T12:12:12[.fff]Z` (or `±hh:mm` for `Z`) or IoTDA's `20151212T121212Z`; "
    "MISSING for other text", examples=(E("rfc3339_to_unix_ts('20151212T121212Z')", 1449922332),
                                        E("rfc3339_to_unix_ts('2015-12-12T12:12:12.5Z', 'ms')",
                                          1449922332500)))
def rfc3339_to_unix_ts_(s, unit="second"):
    u, ms = _unit(unit), _time_ms(s)
    if u is None or ms is MISSING:
        return MISSING
    return ms // (1000 // u)


@fn("format_date", "time", (2, 3), signature="format_date(format, ts [, unit])",
    doc="UTC time formatted with strftime directives (%Y-%m-%d …)",
    examples=(E("format_date('%Y/%m/%d', 1449922332)", "2015/12/12"),))
def format_date_(fmt, ts, unit="second"):
    u = _unit(unit)
    if not is_string(fmt) or not _num(ts) or u is None:
        return MISSING
    try:
        return (_EPOCH + datetime.timedelta(milliseconds=_ms_of(ts, u))).strftime(fmt)
    except (OverflowError, ValueError):
        return MISSING
