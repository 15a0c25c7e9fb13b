"""Alibaba Cloud's RPC request signature (seed §2.4), verified.

    canonicalized query = the parameters (query string and form body, all but
        `Signature`), sorted by name, each name and value UTF-8 percent-encoded
        per RFC 3986 (A-Z a-z 0-9 - _ . ~ kept, space as %20), joined "k=v" by "&"
    string to sign      = METHOD + "&" + percentEncode("/") + "&" + percentEncode(canonicalized query)
    signature           = Base64(HMAC-SHA1(AccessKeySecret + "&", string to sign))

The AccessKey pairs are the `access_keys` of `api.projects`, the ones the
IoTDA side signs with. Besides the signature: `Timestamp` must be within 15
minutes of the server's clock, and a `SignatureNonce` is accepted once per
AccessKeyId in that window (kept in this process's memory: with several API
processes a replay to another process is refused only by the timestamp).
Signatures are compared in constant time; nothing here logs a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from engine.api.aliyun import errors
from engine.config.models import ApiConfig

WINDOW_SECONDS = 15 * 60
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
MAX_NONCES = 1_000_000  # live nonces (~150 MB): above, requests are refused, not forgotten


def percent_encode(text: str) -> str:
    return quote(text, safe="~")


def string_to_sign(method: str, params: Mapping[str, str]) -> str:
    pairs = sorted((k, v) for k, v in params.items() if k != "Signature")
    canonical = "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in pairs)
    return f"{method.upper()}&{percent_encode('/')}&{percent_encode(canonical)}"


def sign(secret: str, text: str) -> str:
    digest = hmac.new(f"{secret}&".encode(), text.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@dataclass(frozen=True)
class Caller:
    access_key_id: str
    projects: frozenset[str]


class Verifier:
    def __init__(self, api: ApiConfig) -> None:
        self._keys: dict[str, list[tuple[str, str]]] = {}
        for project, auth in api.projects.items():
            for key in auth.access_keys:
                self._keys.setdefault(key.ak, []).append((project, key.sk.get_secret_value()))
        self._nonces: dict[tuple[str, str], float] = {}  # (ak, nonce) -> expiry (monotonic)

    def verify(self, method: str, params: Mapping[str, str], now: float | None = None) -> Caller:
        """The caller of a signed request, or a GatewayError naming what is wrong.
        The nonce is recorded only once everything else checked out, so a
        forged request cannot burn the nonce of a genuine one."""
        for name in ("AccessKeyId", "Signature", "SignatureMethod", "SignatureNonce",
                     "Timestamp"):
            if not params.get(name):
                raise errors.missing_parameter(name)
        if params["SignatureMethod"] != "HMAC-SHA1":
            raise errors.unsupported_signature(f"SignatureMethod {params['SignatureMethod']!r}")
        if params.get("SignatureVersion", "1.0") != "1.0":
            raise errors.unsupported_signature(
                f"SignatureVersion {params['SignatureVersion']!r}")
        try:
            when = datetime.strptime(params["Timestamp"], TIMESTAMP_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            raise errors.bad_timestamp() from None
        wall = time.time() if now is None else now
        if abs(wall - when.timestamp()) > WINDOW_SECONDS:
            raise errors.stale_timestamp()
        ak = params["AccessKeyId"]
        keys = self._keys.get(ak)
        if not keys:
            raise errors.unknown_access_key()
        text = string_to_sign(method, params)
        given = params["Signature"].encode()
        projects = frozenset(project for project, sk in keys
                             if hmac.compare_digest(sign(sk, text).encode(), given))
        if not projects:
            raise errors.signature_mismatch(text)
        self._use_nonce(ak, params["SignatureNonce"])
        return Caller(ak, projects)

    def _use_nonce(self, ak: str, nonce: str) -> None:
        clock = time.monotonic()
        # Entries expire in insertion order (a fixed lifetime): drop the expired
        # ones from the front, so memory follows the request rate of one window.
        while self._nonces:
            oldest, expiry = next(iter(self._nonces.items()))
            if expiry > clock:
                break
            del self._nonces[oldest]
        key = (ak, nonce)
        if key in self._nonces:
            raise errors.nonce_used()
        if len(self._nonces) >= MAX_NONCES:
            raise errors.throttled()  # a replay could not be told apart: refuse rather than forget
        # A timestamp may be up to a window ahead, so remember the nonce for two.
        self._nonces[key] = clock + 2 * WINDOW_SECONDS
