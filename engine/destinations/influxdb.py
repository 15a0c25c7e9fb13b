"""INFLUXDB_FORWARDING: rule outputs as InfluxDB points (line protocol).

One point per record: `measurement`, the column mappings named in the `tags`
option as tags (values as strings), every other mapping as a field (integer
`i`, float, boolean, string; objects/arrays as JSON strings; a missing value
is left out), time = the record's event_time in milliseconds (now if absent).

InfluxDB 1.x: POST /write?db=...&precision=ms (the database is created at
open, as IoTDA does). InfluxDB 2.x/3.x (or anything speaking /api/v2/write):
set `token` and `org`, and the points go through influxdb-client's async
write API to `bucket` (default db_name), which must exist.

A 400 answer (unparseable line, field type conflict) splits the batch in
halves until the rejected points are isolated; rewriting a point InfluxDB
already stored is harmless (same series and time: overwritten).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from itertools import compress, repeat
from operator import is_
from typing import Any

import aiohttp
import orjson
from pydantic import Field, SecretStr, model_validator

from engine.destinations.base import Failure, Record, Sink, SinkError, Unavailable, WriteResult
from engine.destinations.common import (
    ColumnMapping,
    NetAddress,
    _Model,
    client_ssl_context,
    columns,
    event_times_ms,
)
from engine.destinations.registry import register


class InfluxDBForwarding(_Model):
    """IoTDA InfluxDBForwarding (Table 1-195) plus engine options.
    address.port defaults to 8086."""

    address: NetAddress
    db_name: str = Field(min_length=1, max_length=64)
    """Created at open if missing (v1 API)."""
    username: str = Field(min_length=1, max_length=256)
    password: SecretStr = Field(min_length=1, max_length=256)
    measurement: str = Field(min_length=1, max_length=64)
    column_mappings: list[ColumnMapping] = Field(min_length=1, max_length=32)
    # --- engine options (not in the seed) ---
    tags: list[str] = Field(default_factory=list, max_length=32)
    """column_names written as tags (values as strings); every other mapping
    is a field."""
    use_tls: bool = False
    """https instead of http."""
    ca_file: str | None = None
    verify_tls: bool = True
    timeout_s: float = Field(default=15.0, gt=0, le=600)
    max_points_per_request: int = Field(default=5000, ge=1, le=100_000)
    # InfluxDB 2.x/3.x API: set `token` (and `org`) to write through /api/v2/write.
    token: SecretStr | None = None
    org: str | None = Field(default=None, min_length=1, max_length=256)
    bucket: str | None = Field(default=None, min_length=1, max_length=256)
    """v2 bucket; default: db_name."""

    @model_validator(mode="after")
    def _check(self) -> InfluxDBForwarding:
        names = [m.column_name for m in self.column_mappings]
        if len(set(names)) != len(names):
            raise ValueError("a column_name is mapped twice")
        unknown = set(self.tags) - set(names)
        if unknown:
            raise ValueError(f"tags {sorted(unknown)} are not column_names of column_mappings")
        if len(self.tags) == len(names):
            raise ValueError("at least one column mapping must be a field, not a tag")
        for what, name in [("measurement", self.measurement)] + [("column_name", n) for n in names]:
            if (why := unrepresentable(name)) is not None:
                raise ValueError(f"{what} {name!r} {why}, which line protocol cannot carry")
        if (self.org or self.bucket) and self.token is None:
            raise ValueError("org/bucket select the v2 API, which needs token")
        if self.token is not None and not self.org:
            raise ValueError("the v2 API (token) needs org")
        return self


log = logging.getLogger(__name__)

DEFAULT_PORT = 8086
# Event-loop turns a write gives a request to go out (connection, headers,
# body) before it formats the next request's points.
_YIELDS = 6

# ------------------------------------------------------------------ line protocol

# Backslashes are not escaped: InfluxDB keeps them literally in names and
# tags. What line protocol cannot carry there at all: a newline, and a
# backslash at the very end (it would escape the following separator).
_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ "})
_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})


def unrepresentable(s: str) -> str | None:
    """Why `s` cannot be a measurement, tag or field key, or tag value."""
    if "\n" in s or "\r" in s:
        return "contains a line break"
    if s.endswith("\\"):
        return "ends with a backslash"
    return None


def escape_measurement(s: str) -> str:
    return s.translate(_MEASUREMENT)


def escape_key(s: str) -> str:
    """Tag keys, tag values and field keys."""
    return s.translate(_KEY)


def escape_string_field(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def field_value(v: Any) -> str | None:
    """Line-protocol text of a field value; None leaves the field out."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        if -(1 << 63) <= v < (1 << 63):
            return f"{v}i"
        return repr(float(v))  # beyond int64: store as a float
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else None  # NaN/inf have no line-protocol form
    if isinstance(v, str):
        return escape_string_field(v)
    return escape_string_field(orjson.dumps(v).decode())


def tag_value(v: Any) -> str | None:
    if v is None or v == "":
        return None  # InfluxDB has no empty tag values
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return orjson.dumps(v).decode()


def tag_text(v: Any) -> str | None:
    """The escaped tag value, or None to leave the tag out (also when line
    protocol cannot carry it: the record is then formatted on its own)."""
    text = tag_value(v)
    if text is None or unrepresentable(text) is not None:
        return None
    return escape_key(text)


_NO_FIELD = Failure("InfluxDB point has no field value (all field mappings missing)", False)


# ------------------------------------------------------------------ a batch at once
#
# InfluxDBSink.lines gives, for a whole batch, the same lines as formatting
# each record with field_value / tag_value / escape_key. It looks at each
# column of the batch once (in C: set(map(type, ...)), min, max, `in` on the
# joined strings) to find its kind, then fills every line with a formatter
# made for that combination of kinds: one f-string per line, compiled once per
# combination. Records with a value missing in a column that other records
# have, or with a tag value line protocol cannot carry, are formatted one by
# one.

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

# Column kinds, and the f-string part that formats a value @c of that kind
# under the escaped key @K. "-": no value in any record (left out). "x": the
# texts were made beforehand, value by value.
_TAG_EXPR = {"s": ",{@K}={@c}", "e": ",{@K}={@c.translate(KEY)}", "x": ",{@K}={@c}"}
# A stand-in of each kind for a missing value (that record's line is redone).
_DUMMY = {"s": "", "e": "", "i": 0, "f": 0.0, "q": "", "b": False}
_FIELD_EXPR = {"i": "{@K}={@c}i", "f": "{@K}={@c!r}", "s": '{@K}="{@c}"', "q": "{@K}={ESC(@c)}",
               "b": "{@K}={BOOL[@c]}", "x": "{@K}={@c}"}


def _tag_kind(values: list[Any]) -> str:
    """The kind of a tag column's values (None excluded, at least one)."""
    if set(map(type, values)) == {str} and "" not in values:
        joined = "".join(values)
        if "\n" not in joined and "\r" not in joined and "\\" not in joined:
            return "e" if ("," in joined or "=" in joined or " " in joined) else "s"
    return "x"


def _field_kind(values: list[Any]) -> str:
    """The kind of a field column's values (None excluded, at least one)."""
    types = set(map(type, values))
    if len(types) == 1:
        t = types.pop()
        if t is int and min(values) >= _INT64_MIN and max(values) <= _INT64_MAX:
            return "i"
        if t is float and all(map(math.isfinite, values)):
            return "f"
        if t is str:
            joined = "".join(values)
            return "q" if ('"' in joined or "\\" in joined) else "s"
        if t is bool:
            return "b"
    return "x"


def _make_formatter(measurement: str, keys: list[str], kinds: list[str], ntags: int):
    """A function (columns, times) -> lines for one combination of column
    kinds. Only generated names and the expressions above go into the source;
    the measurement and keys are passed in as values."""
    names = [f"c{j}" for j, k in enumerate(kinds) if k != "-"]
    tags = "".join(_TAG_EXPR[k].replace("@K", f"K{j}").replace("@c", f"c{j}")
                   for j, k in enumerate(kinds[:ntags]) if k != "-")
    fields = ",".join(_FIELD_EXPR[k].replace("@K", f"K{j}").replace("@c", f"c{j}")
                      for j, k in enumerate(kinds) if j >= ntags and k != "-")
    body = "{M}" + tags + " " + fields + " {t}"
    args = ", ".join(["M", *(f"K{j}" for j in range(len(kinds))), "KEY", "ESC", "BOOL"])
    src = (f"def make({args}):\n"
           f"    def fmt(columns, times):\n"
           f"        return [f'{body}' for {', '.join(names)}, t in zip(*columns, times)]\n"
           f"    return fmt\n")
    namespace: dict[str, Any] = {}
    exec(src, namespace)  # noqa: S102 - the source holds no configured or record text
    return namespace["make"](measurement, *keys, _KEY, escape_string_field, ("false", "true"))


class _Status(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(status, text)
        self.status, self.text = status, text


@register
class InfluxDBSink(Sink):
    channel = "INFLUXDB_FORWARDING"
    detail_key = "influxdb_forwarding"
    Config = InfluxDBForwarding
    config: InfluxDBForwarding

    def __init__(self, config: InfluxDBForwarding) -> None:
        super().__init__(config)
        tags = set(config.tags)
        # Tags sorted by key: InfluxDB's preferred order. Fields in mapping order.
        tag_maps = sorted((m for m in config.column_mappings if m.column_name in tags),
                          key=lambda m: escape_key(m.column_name))
        field_maps = [m for m in config.column_mappings if m.column_name not in tags]
        self._tag_keys = [escape_key(m.column_name) for m in tag_maps]
        self._field_keys = [escape_key(m.column_name) for m in field_maps]
        # One call of the core's extractor gives every mapping's value of a
        # whole batch: tags first, then fields.
        self._cols = columns(tag_maps + field_maps)
        self._measurement = escape_measurement(config.measurement)
        self._formatters: dict[tuple[str, ...], Any] = {}
        scheme = "https" if config.use_tls else "http"
        a = config.address
        host = f"[{a.host}]" if ":" in a.host else a.host
        self._base = f"{scheme}://{host}:{a.port_or(DEFAULT_PORT)}"
        self._v2 = config.token is not None
        self._session: aiohttp.ClientSession | None = None
        self._client: Any = None  # InfluxDBClientAsync on the v2 path
        self._ready = False

    # -------------------------------------------------------------- points

    def line(self, rec: Record, now_ms: int) -> str | Failure:
        """The record's line, or why it cannot be written."""
        lines, _, failures = self.lines([rec], now_ms)
        return failures[0] if failures else lines[0]

    def lines(self, records: Sequence[Record], now_ms: int
              ) -> tuple[list[str], list[int], dict[int, Failure]]:
        """The lines of the records that can be written, their positions in
        `records`, and why the others cannot be (see "a batch at once")."""
        n = len(records)
        if not n:
            return [], [], {}
        rows = self._cols.rows([r.payload for r in records], False)  # tags, then fields
        cols = list(zip(*rows, strict=True))
        times = self._times(records, now_ms)
        nt = len(self._tag_keys)
        kinds: list[str] = []
        inputs: list[Sequence[Any]] = []
        irregular: set[int] = set()
        for j, col in enumerate(cols):
            values = col
            if None in col:
                values = [v for v in col if v is not None]
                if not values:
                    kinds.append("-")
                    continue
                irregular.update(compress(range(n), map(is_, col, repeat(None))))
            kind = (_tag_kind if j < nt else _field_kind)(values)
            if kind == "x":
                texts = [tag_text(v) for v in col] if j < nt else list(map(field_value, col))
                if None in texts:
                    irregular.update(compress(range(n), map(is_, texts, repeat(None))))
                col = texts
            elif values is not col:  # the records without a value are redone one by one
                dummy = _DUMMY[kind]
                col = [dummy if v is None else v for v in col]
            kinds.append(kind)
            inputs.append(col)
        if all(k == "-" for k in kinds[nt:]):
            return [], [], dict.fromkeys(range(n), _NO_FIELD)
        key = tuple(kinds)
        fmt = self._formatters.get(key)
        if fmt is None:
            if len(self._formatters) >= 64:
                self._formatters.clear()
            fmt = self._formatters[key] = _make_formatter(
                self._measurement, self._tag_keys + self._field_keys, kinds, nt)
        out = fmt(inputs, times)
        if not irregular:
            return out, list(range(n)), {}
        failures: dict[int, Failure] = {}
        for i in irregular:
            line = self._point(rows[i], times[i])
            if isinstance(line, Failure):
                failures[i] = line
            else:
                out[i] = line
        if not failures:
            return out, list(range(n)), failures
        idx = [i for i in range(n) if i not in failures]
        return [out[i] for i in idx], idx, failures

    def _point(self, values: tuple[Any, ...], ts: int) -> str | Failure:
        """One record's line from its column values (tags, then fields),
        value by value."""
        nt = len(self._tag_keys)
        fields = []
        for key, v in zip(self._field_keys, values[nt:], strict=True):
            text = field_value(v)
            if text is not None:
                fields.append(f"{key}={text}")
        if not fields:
            return _NO_FIELD
        parts = [self._measurement]
        for key, v in zip(self._tag_keys, values, strict=False):
            text = tag_value(v)
            if text is not None:
                if (why := unrepresentable(text)) is not None:
                    return Failure(f"InfluxDB tag value {why}, which line protocol cannot carry", False)
                parts.append(f"{key}={escape_key(text)}")
        return f"{','.join(parts)} {','.join(fields)} {ts}"

    @staticmethod
    def _times(records: Sequence[Record], now_ms: int) -> list[int]:
        """Each record's event_time in ms, or now_ms. Parsed once per
        distinct time when many records share one (a notification time is
        often only precise to the second)."""
        times = [r.event_time for r in records]
        distinct = dict.fromkeys(times)
        if len(distinct) * 2 <= len(times):
            ms = dict(zip(distinct, event_times_ms(list(distinct)), strict=True))
            out = list(map(ms.__getitem__, times))
        else:
            out = event_times_ms(times)
        if None in out:
            out = [now_ms if t is None else t for t in out]
        return out

    # -------------------------------------------------------------- connection

    async def open(self) -> None:
        """Create the database (v1) and check the credentials. A server that
        is down is not an error here (writes report retryable failures)."""
        try:
            await self._connect()
        except Unavailable as e:
            log.warning("InfluxDB sink for %r: %s; will retry on write", self.config.measurement, e)

    async def _connect(self) -> None:
        if self._ready:
            return
        c = self.config
        ssl_ctx = client_ssl_context(c.ca_file, c.verify_tls) if c.use_tls else None
        if self._v2:
            if self._client is None:
                # Imported here: the v2 client is only needed by v2 users.
                from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

                assert c.token is not None
                kw: dict[str, Any] = {"ssl_context": ssl_ctx} if ssl_ctx else {}
                self._client = InfluxDBClientAsync(
                    self._base, token=c.token.get_secret_value(), org=c.org,
                    timeout=int(c.timeout_s * 1000), **kw)
            self._ready = True
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl_ctx if ssl_ctx else True),
                timeout=aiohttp.ClientTimeout(total=c.timeout_s),
                # Basic auth header rather than u/p query parameters: URLs get logged.
                headers={"Authorization": aiohttp.encode_basic_auth(
                    c.username, c.password.get_secret_value())},
            )
        q = 'CREATE DATABASE "' + c.db_name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        try:
            async with self._session.post(f"{self._base}/query", data={"q": q}) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as e:
            raise SinkError(f"InfluxDB TLS error: {e}") from None
        except (aiohttp.ClientError, TimeoutError) as e:
            raise Unavailable(f"cannot reach InfluxDB ({type(e).__name__})") from None
        if status == 401:
            raise SinkError("InfluxDB refused the login (check username and password)")
        if status >= 500:
            raise Unavailable(f"InfluxDB answered {status}")
        error = _json_error(text)
        if status == 403 or (error and "privilege" in error):
            # Not an admin: cannot create databases; writing may still be allowed.
            log.info("InfluxDB user may not create database %r; assuming it exists", c.db_name)
        elif status != 200 or error:
            raise SinkError(f"InfluxDB cannot create database {c.db_name!r}: {status} {error or text[:200]}")
        self._ready = True

    async def close(self) -> None:
        session, self._session = self._session, None
        client, self._client = self._client, None
        self._ready = False
        if session is not None:
            await session.close()
        if client is not None:
            await client.close()

    # -------------------------------------------------------------- writing

    async def write(self, records: Sequence[Record]) -> WriteResult:
        if not records:
            return WriteResult()
        if (failed := await self._connect_or_fail(len(records))) is not None:
            return failed
        now_ms = int(time.time() * 1000)
        n = len(records)
        step = self.config.max_points_per_request
        failures: dict[int, Failure] = {}
        sending: asyncio.Future[None] | None = None
        try:
            for start in range(0, n, step):
                lines, idx, fails = self.lines(records[start:start + step], now_ms)
                if start:
                    idx = [start + i for i in idx]
                    fails = {start + i: f for i, f in fails.items()}
                failures.update(fails)
                if sending is not None:
                    await sending  # one request at a time, in order
                    sending = None
                if not lines:
                    continue
                if start + step >= n:
                    await self._send(lines, idx, failures)
                    break
                # Give the loop a few turns so the request goes out, then
                # format the next one while the server works on this one.
                sending = asyncio.ensure_future(self._send(lines, idx, failures))
                for _ in range(_YIELDS):
                    await asyncio.sleep(0)
        finally:
            if sending is not None and not sending.done():
                sending.cancel()
        return WriteResult(failures)

    async def _send(self, lines: list[str], idx: list[int], failures: dict[int, Failure]) -> None:
        try:
            await (self._post_v2 if self._v2 else self._post_v1)("\n".join(lines))
            return
        except _Status as e:
            status, reason = e.status, f"InfluxDB {e.status}: {e.text[:300]}"
            retryable = status == 0 or status >= 500 or status in (408, 429)
            if status == 404 and not self._v2 and "database not found" in e.text:
                # Dropped under us (or InfluxDB 1.x briefly not seeing a
                # database it just created, influxdb#5547): the next write
                # creates it again, as Telegraf does, and nothing is dead-lettered.
                retryable, self._ready = True, False
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as e:
            status, reason = 0, f"InfluxDB TLS error: {e}"
            retryable = False
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            status, reason = 0, f"InfluxDB connection problem: {type(e).__name__}: {e}"
            retryable = True
        if status in (400, 413) and len(lines) > 1:
            # Bad data or too large: isolate the rejected points.
            mid = len(lines) // 2
            await self._send(lines[:mid], idx[:mid], failures)
            await self._send(lines[mid:], idx[mid:], failures)
            return
        f = Failure(reason, retryable)
        for i in idx:
            failures[i] = f

    async def _post_v1(self, body: str) -> None:
        assert self._session is not None
        async with self._session.post(
            f"{self._base}/write",
            params={"db": self.config.db_name, "precision": "ms"},
            data=body.encode(),
        ) as resp:
            text = await resp.text()
            if not 200 <= resp.status < 300:
                raise _Status(resp.status, _json_error(text) or text)

    async def _post_v2(self, body: str) -> None:
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        c = self.config
        try:
            await self._client.write_api().write(
                bucket=c.bucket or c.db_name, org=c.org, record=body,
                write_precision=WritePrecision.MS)
        except ApiException as e:
            raise _Status(int(e.status or 0), str(e.body or e.reason or "")) from None


def _json_error(text: str) -> str | None:
    """The `error` member of an InfluxDB JSON answer, if any."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("error"), str):
        return doc["error"]
    for r in doc.get("results") or []:
        if isinstance(r, dict) and isinstance(r.get("error"), str):
            return r["error"]
    return None
