"""Who may use a listener (HTTP ingest, /metrics): bearer tokens, IoTDA push
signatures, and TLS with optional client certificates.

A request is let in when it carries either

* `Authorization: Bearer <token>` with one of the configured `tokens`, or
* the IoTDA token signature that HTTP_FORWARDING sends (`timestamp`,
  `nonce`, `signature` headers; `engine.destinations.http.verify_signature`
  checks it — the one implementation) for one of the `signature_tokens`,
  with a `timestamp` within `max_skew_s` of this clock and a `nonce` not
  seen before (replay protection). Nonces are remembered for twice the
  skew window (after that their timestamp is refused anyway), and only
  those of correctly signed requests: a client without a token cannot
  fill the memory.

Checking costs a few header lookups and one SHA-256 per signature token: it
runs before the body is read, so nothing a stranger sends is parsed.
"""

from __future__ import annotations

import hmac
import ssl
import time
from collections.abc import Mapping, Sequence

from engine.destinations.http import verify_signature
from engine.schema import ListenerAuth, ListenerTls


class Authenticator:
    def __init__(self, tokens: Sequence[str] = (), signature_tokens: Sequence[str] = (),
                 max_skew_s: float = 300.0) -> None:
        self._bearer = [f"Bearer {t}".encode() for t in tokens]
        self._signature_tokens = list(signature_tokens)
        self.max_skew_ms = int(max_skew_s * 1000)
        self._nonces: dict[str, float] = {}  # nonce -> forget after (monotonic); in arrival order

    @property
    def scheme(self) -> str:
        """For `WWW-Authenticate` on a 401."""
        return "Bearer" if self._bearer else "IoTDA-Signature"

    def allows(self, headers: Mapping[str, str]) -> bool:
        auth = headers.get("Authorization")
        if auth is not None and self._bearer:
            given = auth.encode()
            # Compare with every token (constant time each): which one
            # matched, or how many there are, does not show in the timing.
            ok = False
            for expected in self._bearer:
                ok |= hmac.compare_digest(given, expected)
            if ok:
                return True
        if self._signature_tokens:
            return self._signed(headers)
        return False

    def _signed(self, headers: Mapping[str, str]) -> bool:
        ts, nonce, sig = headers.get("timestamp"), headers.get("nonce"), headers.get("signature")
        if not (ts and nonce and sig) or not ts.isdigit() or len(ts) > 16 or len(nonce) > 128:
            return False
        if abs(time.time() * 1000 - int(ts)) > self.max_skew_ms:
            return False
        if not any(verify_signature(t, ts, nonce, sig) for t in self._signature_tokens):
            return False
        now = time.monotonic()
        self._forget(now)
        if nonce in self._nonces:
            return False  # a replay of a request already let in
        self._nonces[nonce] = now + 2 * self.max_skew_ms / 1000
        return True

    def _forget(self, now: float) -> None:
        nonces = self._nonces
        while nonces:  # arrival order = expiry order: the oldest first
            oldest = next(iter(nonces))
            if nonces[oldest] > now:
                break
            del nonces[oldest]


def authenticator_from_config(auth: ListenerAuth | str | None) -> Authenticator | None:
    """`auth: none` -> None (anyone may send); a ListenerAuth -> its Authenticator."""
    if not isinstance(auth, ListenerAuth):
        return None
    return Authenticator([t.get_secret_value() for t in auth.tokens],
                         [t.get_secret_value() for t in auth.signature_tokens], auth.max_skew_s)


def server_ssl_context(tls: ListenerTls | None) -> ssl.SSLContext | None:
    """A server TLS context: `cert_file`/`key_file`, and with `client_ca_file`
    client certificates signed by that CA are required."""
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"cannot load the TLS certificate {tls.cert_file} with key "
                         f"{tls.key_file}: {e}") from None
    if tls.client_ca_file:
        try:
            ctx.load_verify_locations(tls.client_ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"cannot load the client CA {tls.client_ca_file}: {e}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
