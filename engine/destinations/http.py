"""HTTP_FORWARDING: POST each rule output as JSON to the user's URL."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import Field, SecretStr, field_validator, model_validator

from engine.destinations.base import Record, Sink, WriteResult
from engine.destinations.common import _Model
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


@register
class HttpSink(Sink):
    channel = "HTTP_FORWARDING"
    detail_key = "http_forwarding"
    Config = HttpForwarding

    async def write(self, records: Sequence[Record]) -> WriteResult:
        return WriteResult.all_failed(len(records), "not implemented yet", False)
