"""The Alibaba Cloud IoT rules-engine dialect (docs/language-alibaba.md).

An Alibaba rule is `SELECT … FROM '<topic filter>' WHERE …` over the
payload of one MQTT message. Its text parses with the same grammar as the
IoTDA dialect; this module rewrites the tree onto the notification a device
message becomes (engine.sources.alink) and hands it to the same checker and
compiler, so both dialects run in the same compiled core:

- a field path is relative to the payload: `a.b` reads
  `notify_data.body.content.a.b`, and `*` copies the payload's members;
- an unaliased path keeps its written text as the output key;
- Alibaba's functions (`ALIBABA`) become paths of the notification
  (`deviceName()` is the header's `node_id`) or calls of the engine's own
  library; any other name is looked up in that library, so the engine's
  functions are an extension of the dialect;
- the topic filter becomes a condition on `notify_data.body.topic`
  (`topic_levels`; engine.language.ruleset), with the literal part as a
  pre-filter needle.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.language import ast
from engine.language.checker import check_select, check_where
from engine.language.errors import RuleSemanticError
from engine.language.parser import parse_select, parse_where

DIALECTS = ("iotda", "aliyun")

PAYLOAD = ("notify_data", "body", "content")
TOPIC = ("notify_data", "body", "topic")
BINARY = ("notify_data", "body", "binary")
FLAT_PROPERTIES = ("notify_data", "body", "properties")
DEVICE_NAME = ("notify_data", "header", "node_id")
PRODUCT_KEY = ("notify_data", "header", "product_id")
MESSAGE_ID = ("request_id",)


def _lit(value: Any, pos: ast.Pos = ast.NOPOS) -> ast.Literal:
    return ast.Literal(value, pos)


def _path(steps: tuple[str, ...], pos: ast.Pos = ast.NOPOS) -> ast.Path:
    return ast.Path(steps, pos)


def _call(name: str, *args: ast.Expr, pos: ast.Pos = ast.NOPOS) -> ast.Call:
    return ast.Call(name.upper(), tuple(args), pos)


def _is_binary(pos: ast.Pos) -> ast.Expr:
    return ast.Compare("=", _path(BINARY, pos), _lit(True, pos), pos)


def _payload_text(pos: ast.Pos) -> ast.Expr:
    # The payload as text: a binary one is carried base64-encoded.
    return ast.Case(((_is_binary(pos), _call("base64_decode", _path(PAYLOAD, pos), pos=pos)),),
                    _call("json_encode", _path(PAYLOAD, pos), pos=pos), pos)


_JAVA_FIELDS = {"yyyy": "%Y", "yy": "%y", "MM": "%m", "dd": "%d", "HH": "%H", "mm": "%M",
                "ss": "%S"}
_JAVA_TOKEN = re.compile(r"'([^']*)'|(yyyy|yy|MM|dd|HH|mm|ss)|([A-Za-z])|([^A-Za-z']+)")


def java_format(fmt: str) -> str | None:
    """A Java date pattern (`yyyy-MM-dd HH:mm:ss`, quoted literals) as strftime
    directives; None when it uses a letter other than those above."""
    out, i = [], 0
    while i < len(fmt):
        m = _JAVA_TOKEN.match(fmt, i)
        if m is None:
            return None
        quoted, field, letter, other = m.groups()
        if letter is not None:
            return None
        text = quoted if quoted is not None else other
        out.append(_JAVA_FIELDS[field] if field else text.replace("%", "%%"))
        i = m.end()
    return "".join(out)


@dataclass(frozen=True)
class Function:
    """An Alibaba function: arity and its rewrite onto the engine's tree."""

    min_args: int
    max_args: int
    rewrite: Callable[[ast.Call, tuple[ast.Expr, ...]], ast.Expr]
    signature: str
    doc: str


def _same(name: str) -> Callable[[ast.Call, tuple[ast.Expr, ...]], ast.Expr]:
    return lambda node, args: ast.Call(name.upper(), args, node.pos)


def _topic(node: ast.Call, args: tuple[ast.Expr, ...]) -> ast.Expr:
    if not args:
        return _path(TOPIC, node.pos)
    level = args[0]
    if not (isinstance(level, ast.Literal) and type(level.value) is int and level.value >= 1):
        raise _error("topic(n): n must be a whole number literal of at least 1", node)
    # "/pk/dn/user/x" splits into ["", "pk", …]: level n is element n + 1 (1-based).
    return _call("nth", _lit(level.value + 1, level.pos),
                 _call("split", _path(TOPIC, node.pos), _lit("/"), pos=node.pos), pos=node.pos)


def _log(node: ast.Call, args: tuple[ast.Expr, ...]) -> ast.Expr:
    if len(args) == 1:
        return _call("ln", args[0], pos=node.pos)
    base, x = args
    return ast.Arith("/", _call("ln", x, pos=node.pos), _call("ln", base, pos=node.pos), node.pos)


_DIGESTS = {"MD5": "md5", "SHA1": "sha1", "SHA256": "sha256"}


def _crypto(node: ast.Call, args: tuple[ast.Expr, ...]) -> ast.Expr:
    alg = args[1]
    name = _DIGESTS.get(alg.value.upper()) if isinstance(alg, ast.Literal) \
        and isinstance(alg.value, str) else None
    if name is None:
        raise _error("crypto(field, algorithm): the algorithm must be the literal 'MD5', "
                     "'SHA1' or 'SHA256'", node)
    return _call(name, args[0], pos=node.pos)


def _timestamp(node: ast.Call, args: tuple[ast.Expr, ...]) -> ast.Expr:
    now = _call("now_timestamp", _lit("millisecond"), pos=node.pos)
    if not args:
        return now
    fmt = args[0]
    strf = java_format(fmt.value) if isinstance(fmt, ast.Literal) \
        and isinstance(fmt.value, str) else None
    if strf is None:
        raise _error(f"{node.name.lower()}(format): the format must be a string literal using "
                     "yyyy, yy, MM, dd, HH, mm, ss and 'quoted' text", node)
    return _call("format_date", _lit(strf, fmt.pos), now, _lit("millisecond"), pos=node.pos)


def _payload(node: ast.Call, args: tuple[ast.Expr, ...]) -> ast.Expr:
    if not args:
        return _payload_text(node.pos)
    enc = args[0]
    kind = enc.value.lower() if isinstance(enc, ast.Literal) and isinstance(enc.value, str) \
        else None
    if kind == "json":
        return _path(PAYLOAD, node.pos)
    if kind in ("utf-8", "utf8"):
        return _payload_text(node.pos)
    raise _error("payload(encoding): the encoding must be the literal 'json' or 'utf-8'", node)


def _to_base64(node: ast.Call, args: tuple[ast.Expr, ...]) -> ast.Expr:
    if not node.star:
        raise _error("to_base64 takes `*` (the message payload): to_base64(*)", node)
    return ast.Case(((_is_binary(node.pos), _path(PAYLOAD, node.pos)),),
                    _call("base64_encode", _call("json_encode", _path(PAYLOAD, node.pos)),
                          pos=node.pos), node.pos)


def _const_path(steps: tuple[str, ...]) -> Callable[[ast.Call, tuple[ast.Expr, ...]], ast.Expr]:
    return lambda node, args: _path(steps, node.pos)


ALIBABA: dict[str, Function] = {
    "ATTRIBUTE": Function(1, 1, _same("GET_TAG"), "attribute(key)",
                          "the value of the device's tag `key` (the registry's tags)"),
    "CONCAT": Function(2, 2, _same("CONCAT"), "concat(s1, s2)", "the two values as one text"),
    "CRYPTO": Function(2, 2, _crypto, "crypto(field, 'MD5'|'SHA1'|'SHA256')",
                       "lower-case hex digest of the text"),
    "DEVICENAME": Function(0, 0, _const_path(DEVICE_NAME), "deviceName()",
                           "the DeviceName (the registry's node_id)"),
    "ENDSWITH": Function(2, 2, _same("ENDS_WITH"), "endswith(s, suffix)", "boolean"),
    "LOG": Function(1, 2, _log, "log(x) | log(base, x)", "natural logarithm, or to a base"),
    "MESSAGEID": Function(0, 0, _const_path(MESSAGE_ID), "messageId()",
                          "the message id (the notification's request_id)"),
    "NANVL": Function(2, 2, _same("coalesce"), "nanvl(value, default)",
                      "value unless null or missing, else default"),
    "PAYLOAD": Function(0, 1, _payload, "payload() | payload('json')",
                        "the payload as text (JSON re-encoded; binary decoded as UTF-8), or "
                        "as its JSON value"),
    "PRODUCTKEY": Function(0, 0, _const_path(PRODUCT_KEY), "productKey()",
                           "the ProductKey (the registry's product_id)"),
    "STARTSWITH": Function(2, 2, _same("STARTS_WITH"), "startswith(s, prefix)", "boolean"),
    "THINGPROPERTYFLATMAPNOTIFY": Function(
        0, 0, _const_path(FLAT_PROPERTIES), "thingPropertyFlatMapNotify()",
        "a property post's properties as {name: value}; missing on other topics"),
    "TIMESTAMP": Function(0, 1, _timestamp, "timestamp([format])",
                          "now: epoch milliseconds, or formatted (UTC)"),
    "TIMESTAMP_UTC": Function(0, 1, _timestamp, "timestamp_utc([format])",
                              "now: epoch milliseconds, or formatted (UTC)"),
    "TOPIC": Function(0, 1, _topic, "topic() | topic(n)",
                      "the message's topic, or its n-th level (1: the first after '/')"),
    "TO_BASE64": Function(0, 0, _to_base64, "to_base64(*)",
                          "the payload's bytes in base64 (a JSON payload as re-encoded)"),
}
# The others of Alibaba's list (abs, asin, cos, cosh, exp, floor, lower, mod,
# newuuid, power, rand, replace, sin, sinh, substring, tan, tanh, upper) are
# the engine library's functions of the same name and meaning.


def _error(message: str, node: ast.Call) -> RuleSemanticError:
    return RuleSemanticError(message, line=node.pos[0], column=node.pos[1])


class _Rewriter:
    def __init__(self, clause: str, text: str) -> None:
        self.clause, self.text = clause, text

    def expr(self, node: ast.Expr) -> ast.Expr:
        match node:
            case ast.Literal():
                return node
            case ast.Path(steps):
                return dataclasses.replace(node, steps=PAYLOAD + steps)
            case ast.Call(name, args):
                args = tuple(self.expr(a) for a in args)
                fn = ALIBABA.get(name)
                if fn is None:
                    return dataclasses.replace(node, args=args)
                if node.star and name != "TO_BASE64":
                    raise self._err(f"{name.lower()}(*): only to_base64 takes `*`", node)
                if not fn.min_args <= len(args) <= fn.max_args:
                    raise self._err(f"{fn.signature}: {len(args)} argument(s) given", node)
                try:
                    return fn.rewrite(node, args)
                except RuleSemanticError as e:
                    raise self._err(e.message, node) from None
            case ast.InList(operand, _, _):
                return dataclasses.replace(node, operand=self.expr(operand))   # items: constants
            case ast.Case(whens, else_):
                return dataclasses.replace(
                    node, whens=tuple((self.expr(c), self.expr(v)) for c, v in whens),
                    else_=None if else_ is None else self.expr(else_))
        changes = {f.name: self.expr(getattr(node, f.name)) for f in dataclasses.fields(node)
                   if f.name in ("operand", "left", "right", "pattern", "low", "high")}
        return dataclasses.replace(node, **changes)

    def _err(self, message: str, node: ast.Call) -> RuleSemanticError:
        return RuleSemanticError(message, clause=self.clause, text=self.text,
                                 line=node.pos[0], column=node.pos[1])

    def select(self, select: ast.Select) -> ast.Select:
        if select.foreach is not None:
            raise RuleSemanticError("FOREACH is not part of Alibaba's rule language (use the "
                                    "iotda dialect for it)", clause=self.clause, text=self.text,
                                    line=select.foreach.pos[0], column=select.foreach.pos[1])
        items = []
        for item in select.items:
            if item.is_star:
                items.append(item)
                continue
            alias = item.key   # an unaliased path keeps its written text as the key
            items.append(dataclasses.replace(item, expr=self.expr(item.expr), alias=alias))
        return ast.Select(tuple(items), star_root=PAYLOAD)


def parse_aliyun_rule(select: str | None, where: str | None) -> ast.Rule:
    """Parse, rewrite and check an Alibaba rule's SELECT and WHERE texts.
    Raises RuleError, positions in the texts as written."""
    sel = parse_select(select)
    whr = parse_where(where)
    sel = _Rewriter("select", select or "").select(sel)
    whr = None if whr is None else _Rewriter("where", where or "").expr(whr)
    check_select(sel, select or "")
    check_where(whr, where or "")
    return ast.Rule(sel, whr)


# ---------------------------------------------------------------- topic filters

def check_topic_filter(topic: str) -> str | None:
    """Why `topic` is not an MQTT topic filter an Alibaba rule can use, or None."""
    if not topic.startswith("/"):
        return "a topic filter starts with '/' (/${productKey}/${deviceName}/…)"
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) \
                or ("+" in level and level != "+"):
            return f"{topic!r} is not a valid MQTT topic filter"
    return None


def topic_levels(topic: str) -> tuple[tuple[str | None, ...], bool, str]:
    """A checked topic filter as (levels, None for `+`; ends with `#`; the
    literal text every matching topic starts with, for the pre-filter)."""
    levels = topic.split("/")
    rest = levels[-1] == "#"
    if rest:
        levels = levels[:-1]
    literal = []
    for level in levels:
        if level == "+":
            break
        literal.append(level)
    # No trailing '/' after the literal part: `/a/#` matches `/a` itself.
    return tuple(None if lv == "+" else lv for lv in levels), rest, "/".join(literal)


# ---------------------------------------------------------------- whole statements

_KEYWORD = re.compile(r"(?i)\b(select|from|where)\b")


def split_sql(sql: str) -> tuple[str, str, str | None]:
    """`SELECT s FROM 'topic' WHERE w` -> (s, topic, w or None). The topic is
    quoted with ' or " (Alibaba's console writes "…"). Raises ValueError
    naming what is missing."""
    marks: list[tuple[str, int, int]] = []   # keywords outside string literals
    i, quote = 0, None
    while i < len(sql):
        c = sql[i]
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        else:
            m = _KEYWORD.match(sql, i)
            if m and (i == 0 or not (sql[i - 1].isalnum() or sql[i - 1] in "_.")):
                marks.append((m.group(1).upper(), m.start(), m.end()))
                i = m.end()
                continue
        i += 1
    kinds = [k for k, _, _ in marks]
    if not kinds or kinds[0] != "SELECT" or marks[0][1] != len(sql) - len(sql.lstrip()):
        raise ValueError("an Alibaba rule statement starts with SELECT")
    if kinds.count("FROM") != 1:
        raise ValueError("an Alibaba rule statement names its topic once: SELECT … FROM "
                         "'/productKey/+/user/topic' [WHERE …]")
    start = marks[kinds.index("FROM")]
    after = [m for m in marks if m[1] > start[1] and m[0] == "WHERE"]
    end = after[0][1] if after else len(sql)
    topic = sql[start[2]:end].strip()
    if len(topic) < 2 or topic[0] not in "'\"" or topic[-1] != topic[0]:
        raise ValueError("FROM takes the topic filter in quotes: FROM '/productKey/+/user/topic'")
    select = sql[marks[0][2]:start[1]].strip()
    where = sql[after[0][2]:].strip() if after else None
    return select, topic[1:-1], where or None
