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

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson
from pydantic import Field, SecretStr, model_validator

from engine.destinations.base import Failure, Record, Sink, SinkError, Unavailable, WriteResult
from engine.destinations.common import (
    ColumnMapping,
    JsonKey,
    NetAddress,
    _Model,
    client_ssl_context,
    event_time_ms,
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
        # Tags sorted by key: InfluxDB's preferred order.
        self._tags = sorted(((escape_key(m.column_name), JsonKey(m.json_key))
                             for m in config.column_mappings if m.column_name in tags),
                            key=lambda t: t[0])
        self._fields = [(escape_key(m.column_name), JsonKey(m.json_key))
                        for m in config.column_mappings if m.column_name not in tags]
        self._measurement = escape_measurement(config.measurement)
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
        p = rec.payload
        fields = []
        for key, path in self._fields:
            text = field_value(path.resolve(p))
            if text is not None:
                fields.append(f"{key}={text}")
        if not fields:
            return Failure("InfluxDB point has no field value (all field mappings missing)", False)
        parts = [self._measurement]
        for key, path in self._tags:
            v = tag_value(path.resolve(p))
            if v is not None:
                if (why := unrepresentable(v)) is not None:
                    return Failure(f"InfluxDB tag value {why}, which line protocol cannot carry", False)
                parts.append(f"{key}={escape_key(v)}")
        ts = event_time_ms(rec.event_time)
        return f"{','.join(parts)} {','.join(fields)} {ts if ts is not None else now_ms}"

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
        failures: dict[int, Failure] = {}
        lines: list[str] = []
        idx: list[int] = []
        for i, rec in enumerate(records):
            line = self.line(rec, now_ms)
            if isinstance(line, Failure):
                failures[i] = line
            else:
                lines.append(line)
                idx.append(i)
        step = self.config.max_points_per_request
        for start in range(0, len(lines), step):
            await self._send(lines[start:start + step], idx[start:start + step], failures)
        return WriteResult(failures)

    async def _send(self, lines: list[str], idx: list[int], failures: dict[int, Failure]) -> None:
        try:
            await (self._post_v2 if self._v2 else self._post_v1)("\n".join(lines))
            return
        except _Status as e:
            status, reason = e.status, f"InfluxDB {e.status}: {e.text[:300]}"
            retryable = status == 0 or status >= 500 or status in (408, 429)
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
