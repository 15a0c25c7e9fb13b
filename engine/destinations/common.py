"""Pieces shared by several destinations: the IoTDA address and column-mapping
objects, json_key paths, identifier checks and event_time parsing."""

from __future__ import annotations

import functools
import logging
import re
import ssl
import sys
from datetime import UTC, datetime, timedelta
from itertools import repeat
from operator import floordiv, sub
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from engine import _core
from engine.schema import AmqpUrl, check_amqp_url  # noqa: F401 - re-exported


class _Model(BaseModel):
    # hide_input_in_errors: a validation error must not echo a password or token.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class NetAddress(_Model):
    """IoTDA NetAddress (Table 1-196). The seed makes every member optional;
    a destination needs somewhere to connect, so `ip` or `domain` is required.
    When both are given, `domain` is used (it is what a TLS certificate names)."""

    ip: str | None = None
    port: int | None = Field(default=None, ge=0, le=65535)
    domain: str | None = Field(default=None, min_length=4, max_length=255)

    @model_validator(mode="after")
    def _need_host(self) -> NetAddress:
        if not (self.ip or self.domain):
            raise ValueError("address needs an ip or a domain")
        return self

    @property
    def host(self) -> str:
        return self.domain or self.ip or ""

    def port_or(self, default: int) -> int:
        # The seed allows port 0 and an absent port; neither is connectable.
        return self.port or default


class SupportPrivateLinkNetAddress(NetAddress):
    """IoTDA SupportPrivateLinkNetAddress (Table 1-193): same members as NetAddress."""


class ColumnMapping(_Model):
    """IoTDA ColumnMapping (Table 1-197)."""

    column_name: str = Field(min_length=1, max_length=256)
    json_key: str = Field(min_length=1, max_length=256)

    @field_validator("json_key")
    @classmethod
    def _parse(cls, v: str) -> str:
        parse_json_key(v)  # raises ValueError on a malformed path
        return v


# ---------------------------------------------------------------- json_key paths

_SEGMENT = re.compile(r'"([^"]+)"|([^.\[\]"]+)')
_INDEX = re.compile(r"\[(\d+)\]")


def parse_json_key(key: str) -> tuple[str | int, ...]:
    """`notify_data.body.services[0].service_id` ->
    ("notify_data", "body", "services", 0, "service_id").

    Members are separated by `.`, `[n]` indexes an array, and a member may be
    written in double quotes to hold `.`, `[` or `]` (`data."a.b"`), as in the
    rule language."""
    steps: list[str | int] = []
    pos = 0
    n = len(key)
    while True:
        m = _SEGMENT.match(key, pos)
        if not m:
            raise ValueError(f"malformed json_key {key!r} at position {pos}")
        steps.append(m.group(1) if m.group(1) is not None else m.group(2))
        pos = m.end()
        while (m := _INDEX.match(key, pos)) is not None:
            steps.append(int(m.group(1)))
            pos = m.end()
        if pos == n:
            return tuple(steps)
        if key[pos] != ".":
            raise ValueError(f"malformed json_key {key!r} at position {pos}")
        pos += 1


_MISSING = object()


class JsonKey:
    """A parsed json_key, resolved against one rule output.

    A rule that selects a path without an alias emits it under the path's own
    text (`SELECT notify_data.body.services[0].service_id` gives the key
    "notify_data.body.services[0].service_id"), while `SELECT *` emits the
    nested object. So the literal top-level key is tried first, then the path
    is walked. A missing member or index resolves to None (SQL NULL)."""

    __slots__ = ("key", "steps")

    def __init__(self, key: str) -> None:
        self.key = key
        self.steps = parse_json_key(key)

    def resolve(self, payload: dict[str, Any]) -> Any:
        v = payload.get(self.key, _MISSING)
        if v is not _MISSING:
            return v
        cur: Any = payload
        for step in self.steps:
            if type(cur) is dict:
                cur = cur.get(step)  # an int step never matches: JSON keys are strings
            elif type(cur) is list and type(step) is int and step < len(cur):
                cur = cur[step]
            else:
                return None
        return cur


def columns(mappings: list[ColumnMapping]) -> _core.Columns:
    """The compiled extractor of a destination's column values (same
    resolution as JsonKey.resolve, for a whole batch in one call)."""
    keys = [JsonKey(m.json_key) for m in mappings]
    return _core.Columns([k.key for k in keys], [k.steps for k in keys])


# ---------------------------------------------------------------- identifiers

# Table and column names are interpolated into SQL (quoted); values never are.
# Strict on purpose: no quotes, backquotes, spaces, dots or control characters.
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,63}$")
# The seed's db_name alphabet: letters, digits, _ and -, at most 64.
DB_NAME = r"^[A-Za-z0-9_-]{1,64}$"


def check_identifier(name: str, what: str) -> str:
    if not IDENTIFIER.match(name):
        raise ValueError(
            f"{what} {name!r} is not a plain identifier "
            "(letters, digits, _, $ or -, starting with a letter or _, at most 64)"
        )
    return name


# ---------------------------------------------------------------- time


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


@functools.lru_cache(maxsize=4096)  # a batch's records often share a second
def event_time_ms(event_time: str | None) -> int | None:
    """Epoch milliseconds of a notification time: the compact
    `20151212T121212Z` or the ISO `2015-12-12T12:12:12.000Z`; None if absent
    or unparseable (callers then use the current time). A time without an
    offset is UTC; sub-millisecond digits are dropped."""
    if not event_time:
        return None
    try:
        if len(event_time) == 16 and event_time[8] == "T" and event_time[15] == "Z":
            s = event_time
            dt = datetime(int(s[0:4]), int(s[4:6]), int(s[6:8]),
                          int(s[9:11]), int(s[11:13]), int(s[13:15]), tzinfo=UTC)
        else:
            dt = datetime.fromisoformat(event_time.replace("Z", "+00:00"))
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
    except (ValueError, TypeError):
        return None
    # Integer arithmetic: int(dt.timestamp() * 1000) is 1 ms short for some times.
    return (dt - _EPOCH) // _ONE_MS


def event_times_ms(times: list[str | None]) -> list[int | None]:
    """`event_time_ms` of each time. When every time is a string that
    `datetime.fromisoformat` reads with an offset or `Z` (both notification
    formats are), the whole list is converted in C; otherwise time by time."""
    try:
        # A None fails fromisoformat with TypeError: the slow path below takes it.
        return list(map(floordiv, map(sub, map(datetime.fromisoformat, times),  # type: ignore[arg-type]
                                      repeat(_EPOCH)),
                        repeat(_ONE_MS)))
    except (TypeError, ValueError):  # None, a malformed time, or one without an offset
        return list(map(event_time_ms, times))


_UNVERIFIED_WARNED: set[str] = set()


def client_ssl_context(ca_file: str | None, verify: bool = True) -> ssl.SSLContext:
    """A client TLS context: system CAs (or `ca_file`), hostname checked,
    unless `verify` is explicitly turned off (`verify_tls: false`) - which
    is logged as a warning once per calling destination module (sinks may
    build a context on every reconnect)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        caller = sys._getframe(1).f_globals.get("__name__", "?")
        if caller not in _UNVERIFIED_WARNED:
            _UNVERIFIED_WARNED.add(caller)
            logging.getLogger(caller).warning(
                "TLS certificate verification is OFF (verify_tls: false): the server's "
                "identity is not checked")
    return ctx


# ---------------------------------------------------------------- SQL tables


class SqlForwarding(_Model):
    """The shape of IoTDA MysqlForwarding (Table 1-194), shared by the MySQL
    channel and the PostgreSQL extension, plus engine options."""

    address: NetAddress
    db_name: str = Field(max_length=64, pattern=DB_NAME)
    username: str = Field(min_length=1, max_length=256)
    password: SecretStr = Field(min_length=1, max_length=256)
    enable_ssl: bool = True
    table_name: str = Field(min_length=1, max_length=64)
    column_mappings: list[ColumnMapping] = Field(min_length=1, max_length=32)
    # --- engine options (not in the seed) ---
    ca_file: str | None = None
    """PEM CA bundle that verifies the server when enable_ssl is true.
    Default: the system CAs."""
    verify_tls: bool = True
    """With enable_ssl, check the server certificate and host name."""
    pool_size: int = Field(default=4, ge=1, le=100)
    timeout_s: float = Field(default=15.0, gt=0, le=600)
    """Connect timeout and per-statement wait."""

    @field_validator("table_name")
    @classmethod
    def _table(cls, v: str) -> str:
        return check_identifier(v, "table_name")

    @model_validator(mode="after")
    def _columns(self) -> SqlForwarding:
        seen: set[str] = set()
        for m in self.column_mappings:
            check_identifier(m.column_name, "column_name")
            if m.column_name.lower() in seen:
                raise ValueError(f"column_name {m.column_name!r} is mapped twice")
            seen.add(m.column_name.lower())
        return self
