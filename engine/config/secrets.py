"""Keeping secrets out of messages.

Models hold secrets as `SecretStr`, and error messages are built without
input values (see `errors`). As a second line of defence every message of a
`ConfigError` is passed through `redact` with the secret values found in the
raw configuration, so a validator that quotes its input cannot leak one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Keys whose values are secrets wherever they appear (IoTDA's and ours).
SECRET_KEYS = frozenset({"password", "sasl_password", "token", "tokens", "sk", "secret"})

# Shorter values would be "redacted" inside unrelated words.
_MIN_SECRET_LENGTH = 3

MASK = "***"


def is_secret_key(key: object) -> bool:
    return isinstance(key, str) and (key in SECRET_KEYS or key.endswith(("_password", "_secret")))


def collect_secrets(data: Any) -> set[str]:
    """Every secret value in a raw configuration tree: values of secret keys
    and passwords in URLs (`amqp://user:password@host/`)."""
    found: set[str] = set()

    def walk(node: Any, secret: bool) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, secret or is_secret_key(key))
        elif isinstance(node, list):
            for item in node:
                walk(item, secret)
        elif isinstance(node, str):
            if secret:
                found.add(node)
            password = _url_password(node)
            if password:
                found.add(password)
        elif secret and node is not None and not isinstance(node, bool):
            found.add(str(node))  # e.g. a numeric password

    walk(data, False)
    return {s for s in found if len(s) >= _MIN_SECRET_LENGTH}


def redact(text: str, secrets: set[str]) -> str:
    # Longest first, so a secret containing another is masked whole.
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def redact_url(url: str) -> str:
    """`amqp://guest:guest@host:5672/` -> `amqp://guest:***@host:5672/`, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))


def _url_password(value: str) -> str | None:
    if "://" not in value or "@" not in value:
        return None
    try:
        return urlsplit(value).password
    except ValueError:
        return None
