"""Settings building blocks shared by the rule-file models (`engine.config`)
and the options of the sources (`engine.sources`): the strict model base,
listen addresses, `host:port` lists, AMQP URLs, Kafka and AMQP connection
settings, and the IoTDA notification kinds. `KafkaClient` is the one
translation of Kafka connection settings (SASL/SSL) into the options of the
two client libraries: aiokafka (the Kafka sink, hence dead letters) and
librdkafka (the Kafka source).

They live below both so that a source module can own its options model and
`engine.config` can collect those models from the source registry without
an import circle.
"""

from __future__ import annotations

import difflib
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError


class StrictModel(BaseModel):
    # hide_input_in_errors: pydantic must never echo a value (it may be a secret).
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def _did_you_mean(value: str, choices: Any) -> str:
    near = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{near[0]}'?)" if near else ""


def given(model: BaseModel) -> list[str]:
    """Fields of a one-of model that hold a value (`kafka: null` is not given)."""
    return [name for name in type(model).model_fields if getattr(model, name) is not None]


# ------------------------------------------------------------------ addresses


def _split_host_port(value: str) -> str:
    """Check a `host:port` listen address (`[::1]:8080` for IPv6); port 0
    means "any free port" (useful in tests)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise PydanticCustomError("listen", "must be host:port with a port from 0 to 65535")
    return value


Listen = Annotated[str, AfterValidator(_split_host_port)]


def parse_listen(listen: str) -> tuple[str, int]:
    """`"127.0.0.1:8088"` -> `("127.0.0.1", 8088)`; `"[::1]:80"` -> `("::1", 80)`."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _comma_list(value: Any) -> Any:
    # Kafka users write bootstrap servers either way; normalise to a list.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


HostPorts = Annotated[list[Listen], BeforeValidator(_comma_list), Field(min_length=1)]


def check_amqp_url(value: SecretStr) -> SecretStr:
    """An amqp:// or amqps:// URL with a host and, if given, a numeric port.
    The URL holds a password: errors never echo it."""
    parts = urlsplit(value.get_secret_value())
    if parts.scheme not in ("amqp", "amqps"):
        raise PydanticCustomError("amqp_url", "must be an amqp:// or amqps:// URL")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError:
        raise PydanticCustomError("amqp_url", "the port of the URL must be a number from 1 "
                                  "to 65535") from None
    if not parts.hostname:
        raise PydanticCustomError("amqp_url",
                                  "the URL needs a host (amqp://user:password@host:port/vhost)")
    return value


AmqpUrl = Annotated[SecretStr, AfterValidator(check_amqp_url)]
"""The URL of an AMQP broker (a secret: it carries the password); shared by
the AMQP destination, source and dead-letter store."""


def check_mqtt_url(value: SecretStr) -> SecretStr:
    """An mqtt:// or mqtts:// URL with a host (errors never echo it)."""
    parts = urlsplit(value.get_secret_value())
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise PydanticCustomError("mqtt_url", "must be an mqtt:// or mqtts:// URL with a host")
    return value


MqttUrl = Annotated[SecretStr, AfterValidator(check_mqtt_url)]
"""The URL of an MQTT broker; shared by the MQTT source and MQTT_FORWARDING."""


# ------------------------------------------------------------------ listeners

_SIGNATURE_TOKEN = re.compile(r"[A-Za-z0-9]{3,32}")


def _bearer_token(value: SecretStr) -> SecretStr:
    if len(value.get_secret_value()) < 16 or any(c.isspace() for c in value.get_secret_value()):
        raise PydanticCustomError(
            "bearer_token", "a bearer token must be at least 16 characters without spaces "
            "(e.g. the output of `openssl rand -hex 16`)")
    return value


def _signature_token(value: SecretStr) -> SecretStr:
    # The same alphabet as HTTP_FORWARDING's token, so the two sides can pair up.
    if not _SIGNATURE_TOKEN.fullmatch(value.get_secret_value()):
        raise PydanticCustomError("signature_token", "a signature token is 3 to 32 letters or "
                                  "digits (as HTTP_FORWARDING's token)")
    return value


class ListenerAuth(StrictModel):
    """Who may use a listener: `Authorization: Bearer <token>` with one of
    `tokens`, or IoTDA's push signature (`timestamp`, `nonce`, `signature`
    headers, as HTTP_FORWARDING sends them) made with one of
    `signature_tokens`."""

    tokens: list[Annotated[SecretStr, AfterValidator(_bearer_token)]] = Field(
        default_factory=list)
    signature_tokens: list[Annotated[SecretStr, AfterValidator(_signature_token)]] = Field(
        default_factory=list)
    max_skew_s: float = Field(default=300.0, gt=0, le=3600)
    """How far a signed request's `timestamp` may be from this clock."""

    @model_validator(mode="after")
    def _some_credential(self) -> ListenerAuth:
        if not self.tokens and not self.signature_tokens:
            raise PydanticCustomError(
                "no_credentials", "auth needs tokens and/or signature_tokens (or write "
                "`auth: none` to let anyone in)")
        return self


class ListenerTls(StrictModel):
    """TLS on a listener."""

    cert_file: str = Field(min_length=1)
    """PEM certificate (chain) of the listener."""
    key_file: str = Field(min_length=1)
    """PEM private key."""
    client_ca_file: str | None = Field(default=None, min_length=1)
    """PEM CA bundle: when set, clients must present a certificate it signed."""


NoAuth = Literal["none"]


def _auth_required(value: Any) -> Any:
    if value is None:
        raise PydanticCustomError(
            "auth_required", "auth is required: give `auth: {tokens: [...]}` and/or "
            "`signature_tokens: [...]`, or `auth: none` to accept anyone who can connect")
    return value


RequiredAuth = Annotated[NoAuth | ListenerAuth | None, AfterValidator(_auth_required)]
"""A listener's `auth`: required (credentials, or `none` to accept anyone)."""


# ------------------------------------------------------------------ connections


@dataclass(frozen=True)
class KafkaClient:
    """Where and how a Kafka client connects, for either client library.
    Holds the password: never log it or the options made from it."""

    servers: Sequence[str]
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    """PEM CA bundle; without it TLS verifies against the system's CAs."""
    client_id: str | None = None

    @property
    def tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def aiokafka(self, ssl_context: ssl.SSLContext | None = None) -> dict[str, Any]:
        """AIOKafkaProducer/Consumer connection arguments. `ssl_context`
        replaces the default one (system or `ssl_cafile` CAs, host name
        checked) when TLS is used."""
        options: dict[str, Any] = {"bootstrap_servers": list(self.servers),
                                   "security_protocol": self.security_protocol}
        if self.client_id is not None:
            options["client_id"] = self.client_id
        if self.sasl_mechanism:
            options.update(sasl_mechanism=self.sasl_mechanism,
                           sasl_plain_username=self.sasl_username,
                           sasl_plain_password=self.sasl_password)
        if self.tls:
            options["ssl_context"] = ssl_context or ssl.create_default_context(
                cafile=self.ssl_cafile)
        return options

    def librdkafka(self) -> dict[str, Any]:
        """librdkafka settings. TLS verifies the broker's certificate and host
        name (librdkafka's defaults)."""
        config: dict[str, Any] = {"bootstrap.servers": ",".join(self.servers),
                                  "security.protocol": self.security_protocol.lower()}
        if self.client_id is not None:
            config["client.id"] = self.client_id
        if self.sasl_mechanism:
            config.update({"sasl.mechanism": self.sasl_mechanism,
                           "sasl.username": self.sasl_username,
                           "sasl.password": self.sasl_password})
        if self.tls and self.ssl_cafile:
            config["ssl.ca.location"] = self.ssl_cafile
        return config


class KafkaConnection(StrictModel):
    """How to reach a Kafka cluster (shared by the source and dead letters)."""

    bootstrap_servers: HostPorts
    client_id: str = "iot-forwarding-engine"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None

    @model_validator(mode="after")
    def _sasl(self) -> KafkaConnection:
        uses_sasl = self.security_protocol.startswith("SASL_")
        if uses_sasl and not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
            raise PydanticCustomError(
                "sasl",
                "security_protocol {protocol} needs sasl_mechanism, sasl_username "
                "and sasl_password",
                {"protocol": self.security_protocol},
            )
        if not uses_sasl and self.sasl_mechanism:
            raise PydanticCustomError(
                "sasl", "sasl_mechanism needs security_protocol SASL_PLAINTEXT or SASL_SSL"
            )
        return self

    def client(self) -> KafkaClient:
        password = self.sasl_password.get_secret_value() if self.sasl_password else None
        return KafkaClient(self.bootstrap_servers, self.security_protocol, self.sasl_mechanism,
                           self.sasl_username, password, self.ssl_cafile, self.client_id)


class AmqpConnection(StrictModel):
    url: AmqpUrl
    """amqp[s]://user:password@host:port/vhost - a secret (it holds the password)."""


# ------------------------------------------------------------------ notification kinds

# Rule subject resource -> its events (IoTDA Table 1-164; the 12 notification kinds).
RESOURCE_EVENTS: dict[str, tuple[str, ...]] = {
    "device": ("create", "delete", "update"),
    "device.property": ("report",),
    "device.message": ("report",),
    "device.message.status": ("update",),
    "device.status": ("update",),
    "batchtask": ("update",),
    "product": ("create", "delete", "update"),
    "device.command.status": ("update",),
}

Resource = Literal[
    "device",
    "device.property",
    "device.message",
    "device.message.status",
    "device.status",
    "batchtask",
    "product",
    "device.command.status",
]


class RuleSubject(StrictModel):
    """RoutingRuleSubject: which notification kind the rule receives."""

    resource: Resource
    event: str = Field(min_length=1, max_length=50)

    @field_validator("event")
    @classmethod
    def _event_of_resource(cls, event: str, info: ValidationInfo) -> str:
        resource = info.data.get("resource")  # absent if resource itself was invalid
        allowed = RESOURCE_EVENTS.get(resource or "")
        if allowed is not None and event not in allowed:
            raise PydanticCustomError(
                "event_for_resource",
                "'{event}' is not a valid event for resource '{resource}'{hint} "
                "(expected one of: {allowed})",
                {"event": event, "resource": resource, "allowed": ", ".join(allowed),
                 "hint": _did_you_mean(event, allowed)},
            )
        return event


Kind = RuleSubject  # a notification kind is a resource/event pair
