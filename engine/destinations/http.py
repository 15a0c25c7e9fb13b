"""HTTP_FORWARDING: POST each rule output as JSON to the user's URL.

One request per record (as IoTDA pushes), over a keep-alive pool, with at
most `max_concurrency` requests in flight. Only a 2xx answer is a success.

A 429 or 503 with `Retry-After` (seconds or an HTTP date) is honoured, at
most `MAX_RETRY_AFTER` seconds: the rest of that write is not sent (a
retryable failure), and the next write first waits until then and sends
one record alone; only once that one succeeds do the others follow. So a
throttling server sees about one request per Retry-After, not a retry
storm.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime

import aiohttp
from pydantic import Field, SecretStr, field_validator, model_validator

from engine.destinations.base import Failure, Record, Sink, WriteResult
from engine.destinations.common import _Model, client_ssl_context
from engine.destinations.registry import register

_TOKEN = re.compile(r"^[A-Za-z0-9]{3,32}$")


class HttpForwarding(_Model):
    """IoTDA HttpForwarding (Table 1-188) plus engine options."""

    url: str = Field(min_length=1, max_length=256, pattern=r"^https?://")
    cert_id: str | None = Field(default=None, min_length=1, max_length=64)
    cn_name: str | None = Field(default=None, min_length=1, max_length=64)
    sni_enable: bool = False
    signature_enable: bool = False
    token: SecretStr | None = Field(default=None, min_length=3, max_length=32)
    # --- engine options (not in the seed) ---
    ca_file: str | None = None
    """PEM CA bundle that verifies an HTTPS server (IoTDA's cert_id names an
    uploaded CA; here the CA is this file). Default: the system CAs."""
    verify_tls: bool = True
    """Turn server-certificate verification off (testing only)."""
    timeout_s: float = Field(default=15.0, gt=0, le=600)
    """Whole-request timeout; a timeout is a retryable failure."""
    max_concurrency: int = Field(default=64, ge=1, le=10_000)
    """Requests in flight at once for one sink (the keep-alive pool size)."""

    @field_validator("token")
    @classmethod
    def _token_alphabet(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not _TOKEN.match(v.get_secret_value()):
            raise ValueError("token must be 3 to 32 letters or digits")
        return v

    @model_validator(mode="after")
    def _pairs(self) -> HttpForwarding:
        if self.sni_enable and not self.cn_name:
            raise ValueError("cn_name is required when sni_enable is true")
        if self.signature_enable and self.token is None:
            raise ValueError("token is required when signature_enable is true")
        if self.cert_id and not self.ca_file:
            raise ValueError("cert_id needs ca_file: the PEM file of that CA certificate")
        return self


def sign(token: str, timestamp: str, nonce: str) -> str:
    """IoTDA push signature: lowercase hex SHA-256 of token, timestamp and
    nonce sorted in dictionary order and concatenated."""
    return hashlib.sha256("".join(sorted((token, timestamp, nonce))).encode()).hexdigest()


def verify_signature(token: str, timestamp: str, nonce: str, signature: str) -> bool:
    """Receiver side: does `signature` (the `signature` header) match the
    `timestamp` and `nonce` headers for our shared token? Constant-time."""
    expected = sign(token, timestamp, nonce).encode()
    return hmac.compare_digest(expected, signature.strip().lower().encode())


# The longest wait a Retry-After can impose: the backlog's own longest
# backoff (engine.policies.retry.RetryPolicy.cap), so a server cannot park
# an action for hours.
MAX_RETRY_AFTER = 30.0


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP
    date), capped at MAX_RETRY_AFTER; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(when - (time.time() if now is None else now), 0.0), MAX_RETRY_AFTER)


def _retryable_status(status: int) -> bool:
    # 5xx: the server failed; 429: throttled; 408: the server timed out
    # reading the request. Every other non-2xx answer will not change on retry.
    return status >= 500 or status in (408, 429)


@register
class HttpSink(Sink):
    channel = "HTTP_FORWARDING"
    detail_key = "http_forwarding"
    Config = HttpForwarding
    config: HttpForwarding

    def __init__(self, config: HttpForwarding) -> None:
        super().__init__(config)
        self._session: aiohttp.ClientSession | None = None
        # Set by a Retry-After: no request before `_not_before` (monotonic),
        # and the failure reported for records held back until one succeeds.
        self._not_before = 0.0
        self._held: Failure | None = None
        self._token = config.token.get_secret_value() if config.signature_enable and config.token else None
        # "domain:8443" in cn_name: SNI and certificate checks use the host part.
        self._server_hostname = (
            config.cn_name.rsplit(":", 1)[0] if config.sni_enable and config.cn_name else None
        )

    async def open(self) -> None:
        if self._session is not None:
            return
        c = self.config
        ssl_ctx = client_ssl_context(c.ca_file, c.verify_tls) if c.url.startswith("https") else None
        connector = aiohttp.TCPConnector(limit=c.max_concurrency, ssl=ssl_ctx if ssl_ctx else True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=c.timeout_s),
            # The receiver gets exactly our headers; no cookies carried over.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def write(self, records: Sequence[Record]) -> WriteResult:
        await self.open()
        failures: dict[int, Failure] = {}
        start = 0
        if self._held is not None and records:
            # The server asked us to wait: wait, then try one record alone.
            delay = self._not_before - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            f = await self._post(records[0])
            if f is not None and f.retryable:
                rest = self._held or f
                return WriteResult({0: f, **{i: rest for i in range(1, len(records))}})
            if f is not None:  # refused for its own sake: the server is answering again
                self._held = None
                failures[0] = f
            start = 1
        todo = iter(enumerate(records[start:], start))

        # A fixed set of workers draining one iterator bounds the window
        # without creating a task per record.
        async def worker() -> None:
            for i, rec in todo:
                # Held back by a Retry-After another request just got: not sent.
                f = self._held if self._held is not None else await self._post(rec)
                if f is not None:
                    failures[i] = f

        n = min(len(records) - start, self.config.max_concurrency)
        await asyncio.gather(*(worker() for _ in range(n)))
        return WriteResult(failures)

    async def _post(self, rec: Record) -> Failure | None:
        assert self._session is not None
        headers = {"Content-Type": "application/json"}
        if self._token is not None:
            ts = str(int(time.time() * 1000))
            nonce = secrets.token_hex(16)
            headers["timestamp"] = ts
            headers["nonce"] = nonce
            headers["signature"] = sign(self._token, ts, nonce)
        try:
            async with self._session.post(
                self.config.url,
                data=rec.json_bytes(),
                headers=headers,
                allow_redirects=False,  # a redirect is not a delivery
                server_hostname=self._server_hostname,
            ) as resp:
                await resp.read()  # drain so the connection returns to the pool
                if 200 <= resp.status < 300:
                    self._held = None
                    return None
                reason = f"HTTP {resp.status} {resp.reason or ''}".rstrip()
                if resp.status in (429, 503):
                    wait = retry_after_seconds(resp.headers.get("Retry-After"))
                    if wait is not None:
                        self._not_before = max(self._not_before, time.monotonic() + wait)
                        self._held = Failure(f"{reason}; not sent: the server asked to retry "
                                             f"after {wait:g} s", True)
                        return Failure(f"{reason} (Retry-After {wait:g} s)", True)
                return Failure(reason, _retryable_status(resp.status))
        except TimeoutError:
            return Failure(f"HTTP timeout after {self.config.timeout_s:g} s", True)
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as e:
            # The server's certificate is not trusted: a configuration problem.
            return Failure(f"TLS error: {e}", False)
        except aiohttp.ClientError as e:
            return Failure(f"HTTP connection error: {type(e).__name__}: {e}", True)
