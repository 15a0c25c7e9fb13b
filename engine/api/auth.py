"""Who is calling: `X-Auth-Token` or an AK/SK request signature.

Tokens and access keys are configured per project (`api.projects` of the
engine configuration). A request is accepted for a project when it carries
one of that project's tokens, or when it is signed with one of that
project's access keys the way the official Huawei Cloud SDKs sign
(APIG "SDK-HMAC-SHA256"):

    Authorization: SDK-HMAC-SHA256 Access=AK, SignedHeaders=host;x-sdk-date, Signature=HEX
    X-Sdk-Date: 20240101T120000Z

    canonical request = METHOD \\n canonical URI (each path segment percent-
        encoded, trailing "/") \\n canonical query (pairs sorted, encoded) \\n
        "name:value\\n" for each signed header \\n signed header names joined
        by ";" \\n hex SHA-256 of the body
    string to sign    = "SDK-HMAC-SHA256\\n" + X-Sdk-Date + "\\n" + hex SHA-256(canonical request)
    signature         = hex HMAC-SHA256(SK, string to sign)

Secrets are compared in constant time (`hmac.compare_digest`), every
configured token is compared (no early exit that would time which one
matched), and nothing here logs a token, a secret key or a signature.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote

from engine.config.models import ApiConfig

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_CLOCK_SKEW = timedelta(minutes=15)
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()

# Headers a signature must cover: without the date a captured request could
# be replayed forever, without the host it could be replayed elsewhere.
REQUIRED_SIGNED = frozenset({"host", "x-sdk-date"})

_AUTHORIZATION = re.compile(
    rf"{ALGORITHM}\s+Access=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-fA-F]+)\s*"
)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a stable id for rate limiting and logs (never
    the secret itself) and the projects its credential is valid for."""

    credential: str
    projects: frozenset[str]


# ------------------------------------------------------------------ the signing algorithm


def _encode(text: str) -> str:
    return quote(text, safe="~")


def canonical_uri(raw_path: str) -> str:
    segments = unquote(raw_path).split("/")
    path = "/".join(_encode(segment) for segment in segments)
    return path if path.endswith("/") else path + "/"


def canonical_query(raw_query: str) -> str:
    # Split by hand rather than parse_qsl: "+" must stay "+" (the SDKs encode
    # a space as %20), as must empty values.
    pairs = []
    for part in raw_query.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((unquote(key), unquote(value)))
    pairs.sort()
    return "&".join(f"{_encode(k)}={_encode(v)}" for k, v in pairs)


def canonical_request(
    method: str, raw_path: str, raw_query: str, headers: Mapping[str, str],
    signed_headers: list[str], body: bytes,
) -> str:
    """`headers` maps lower-case names to values."""
    canonical_headers = "".join(f"{name}:{headers[name].strip()}\n" for name in signed_headers)
    body_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_BODY_SHA256
    return "\n".join([
        method.upper(), canonical_uri(raw_path), canonical_query(raw_query),
        canonical_headers, ";".join(signed_headers), body_hash,
    ])


def string_to_sign(canonical: str, sdk_date: str) -> str:
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{sdk_date}\n{digest}"


def signature(sk: str, text: str) -> str:
    return hmac.new(sk.encode(), text.encode(), hashlib.sha256).hexdigest()


# ------------------------------------------------------------------ verification


def _digest(secret: str) -> bytes:
    # Compare fixed-length digests so the comparison time does not depend on
    # the length of the configured token either.
    return hashlib.sha256(secret.encode()).digest()


class Authenticator:
    def __init__(self, api: ApiConfig) -> None:
        self._tokens: list[tuple[str, bytes]] = []
        self._keys: dict[str, list[tuple[str, str]]] = {}
        for project, auth in api.projects.items():
            self._tokens += [(project, _digest(t.get_secret_value())) for t in auth.tokens]
            for key in auth.access_keys:
                self._keys.setdefault(key.ak, []).append((project, key.sk.get_secret_value()))

    def authenticate(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes,
        now: datetime | None = None,
    ) -> Principal | None:
        """The caller, or None when the request carries no valid credential.
        `raw_path` is the path as sent, with its query string; `headers`
        must look names up case-insensitively (aiohttp's CIMultiDictProxy)."""
        token = headers.get("X-Auth-Token")
        if token is not None:
            return self._by_token(token)
        authorization = headers.get("Authorization")
        if authorization is not None:
            return self._by_signature(method, raw_path, headers, body, authorization, now)
        return None

    def _by_token(self, token: str) -> Principal | None:
        given = _digest(token)
        projects = set()
        for project, expected in self._tokens:
            if hmac.compare_digest(given, expected):
                projects.add(project)
        if not projects:
            return None
        return Principal(f"token:{given.hex()[:16]}", frozenset(projects))

    def _by_signature(
        self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes,
        authorization: str, now: datetime | None,
    ) -> Principal | None:
        match = _AUTHORIZATION.fullmatch(authorization.strip())
        if match is None:
            return None
        ak, signed, given = match.group(1), match.group(2).split(";"), match.group(3).lower()
        if not set(signed) >= REQUIRED_SIGNED or signed != sorted(set(signed)):
            return None
        if any(headers.get(name) is None for name in signed):
            return None
        sdk_date = headers["x-sdk-date"].strip()
        try:
            when = datetime.strptime(sdk_date, DATE_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            return None
        if abs((now or datetime.now(UTC)) - when) > MAX_CLOCK_SKEW:
            return None
        path, _, query = raw_path.partition("?")
        values = {name: headers[name] for name in signed}
        text = string_to_sign(canonical_request(method, path, query, values, signed, body), sdk_date)
        projects = set()
        for project, sk in self._keys.get(ak, ()):
            if hmac.compare_digest(signature(sk, text), given):
                projects.add(project)
        if not projects:
            return None
        return Principal(f"ak:{ak}", frozenset(projects))
