"""The rule-file schema as pydantic models.

Rules, actions and policies use Huawei IoTDA's own field names, shapes and
limits (API reference sections 1.4.8.1, 1.4.8.6, 1.4.21, 1.4.22) so a request
body from the IoTDA API can be pasted in. Everything else (sources, metrics,
dead_letter, api, worker) is this engine's own.

These models check one object at a time. Checks that span objects (unique
ids, references between rules/actions/policies, rule-text compilation) live
in `engine.config.validate`; always go through `validate_config_dict` or
`load_config` rather than `EngineConfig.model_validate` alone.

Secrets are `SecretStr` (masked in reprs and dumps); read them with
`.get_secret_value()` at the point of use.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    SecretStr,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from engine.config import channels
from engine.config.limits import ApiLimits
from engine.language import RuleSpec
from engine.schema import (  # noqa: F401 - re-exported: parse_listen, RESOURCE_EVENTS
    RESOURCE_EVENTS,
    AmqpConnection,
    KafkaConnection,
    Listen,
    ListenerAuth,
    ListenerTls,
    NoAuth,
    RuleSubject,
    given,
    parse_listen,
)
from engine.schema import StrictModel as _Model
from engine.sources import SOURCES
from engine.sources.device_registry import RegistryConfig

# ------------------------------------------------------------------ shared types

# IoTDA: "a maximum of 36 characters. Only letters, digits, underscores (_),
# and hyphens (-) are allowed" (rule_id, action_id, app_id). IoTDA generates
# rule/action/policy ids; in a file the user chooses them, so they must be
# present and follow the same alphabet, which keeps them usable in URLs.
_ID = re.compile(r"[A-Za-z0-9_-]{1,36}")

# IoTDA names (rule_name, policy_name): at most 256 letters, digits and
# _?'#(),.&%@!- ("letters" includes non-ASCII letters: IoTDA accepts Chinese
# names; no spaces).
_NAME = re.compile(r"[\w?'#(),.&%@!-]{1,256}")


def _check_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise PydanticCustomError("id", "must be 1 to 36 letters, digits, _ or -")
    return value


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise PydanticCustomError(
            "name", "must be 1 to 256 letters, digits or _?'#(),.&%@!- (no spaces)"
        )
    return value


Id = Annotated[str, AfterValidator(_check_id)]
Name = Annotated[str, AfterValidator(_check_name)]


# ------------------------------------------------------------------ rules

class Rule(_Model):
    """A rule triggering condition (IoTDA 1.4.8.1) plus a file-given rule_id."""

    rule_id: Id
    rule_name: Name | None = None
    description: str | None = Field(default=None, max_length=256)
    subject: RuleSubject
    app_type: Literal["GLOBAL", "APP"] = "GLOBAL"
    app_id: Id | None = None
    select: str | None = Field(default=None, max_length=2500)
    where: str | None = Field(default=None, max_length=2500)
    # IoTDA creates rules inactive and activates them by a later update; a rule
    # written in a file is meant to run, so here the default is true.
    active: bool = True
    dialect: Literal["iotda", "aliyun"] = "iotda"
    """The language of select/where: IoTDA's (docs/language.md) or Alibaba's
    rules engine (docs/language-alibaba.md: paths into the MQTT payload)."""
    topic: str | None = Field(default=None, max_length=256)
    """An MQTT topic filter (`+`, `#`) the message's topic must match
    (`notify_data.body.topic`); Alibaba rules name theirs here or in `sql`."""
    sql: str | None = Field(default=None, max_length=5200)
    """Alibaba dialect only: the whole `SELECT … FROM 'topic' [WHERE …]`,
    instead of select, topic and where."""

    @model_validator(mode="before")
    @classmethod
    def _aliyun_defaults(cls, data: Any) -> Any:
        # An Alibaba rule reads device messages (what its topics become,
        # docs/devices.md): that is its subject unless the file says otherwise.
        if not isinstance(data, dict) or data.get("dialect") != "aliyun":
            return data
        if "subject" not in data:
            data = {**data, "subject": {"resource": "device.message", "event": "report"}}
        sql = data.get("sql")
        if isinstance(sql, str) and not any(k in data for k in ("select", "where", "topic")):
            from engine.language.aliyun import split_sql

            try:
                select, topic, where = split_sql(sql)
            except ValueError:
                return data   # _statement reports it, located at `sql`
            data = {**data, "select": select, "topic": topic, "where": where}
        return data

    @field_validator("topic")
    @classmethod
    def _topic_filter(cls, topic: str | None) -> str | None:
        from engine.language.aliyun import check_topic_filter

        if topic is not None and (problem := check_topic_filter(topic)):
            raise PydanticCustomError("topic", problem)
        return topic

    @model_validator(mode="after")
    def _statement(self) -> Rule:
        if self.sql is None:
            return self
        from engine.language.aliyun import check_topic_filter, split_sql

        if self.dialect != "aliyun":
            raise PydanticCustomError("sql", "sql is the Alibaba form: set dialect: aliyun "
                                      "(or write select/where)")
        try:
            select, topic, where = split_sql(self.sql)
        except ValueError as e:
            raise PydanticCustomError("sql", str(e)) from None
        if (self.select, self.topic, self.where) != (select, topic, where):
            raise PydanticCustomError("sql", "give either sql or select/where/topic, not both")
        if problem := check_topic_filter(topic):
            raise PydanticCustomError("sql", problem)
        return self

    @model_validator(mode="after")
    def _app_scope(self) -> Rule:
        # IoTDA falls back to a "default resource space"; a self-hosted engine
        # has none, so an APP rule must say which app it is for.
        if self.app_type == "APP" and not self.app_id:
            raise PydanticCustomError("app_id_required", "app_type APP requires app_id")
        return self

    def spec(self) -> RuleSpec:
        """The rule as the worker compiles it (engine.runtime.assembly): its
        subject, app scope, dialect and topic. Rule tests and `engine eval
        --rules` evaluate this same spec, so they see what `engine run` does."""
        return RuleSpec(key=self.rule_id, select=self.select, where=self.where,
                        resource=self.subject.resource, event=self.subject.event,
                        app_id=self.app_id if self.app_type == "APP" else None,
                        dialect=self.dialect, topic=self.topic)


# ------------------------------------------------------------------ actions


class Action(_Model):
    """A rule action (IoTDA 1.4.8.6) plus a file-given action_id.

    After validation `channel_detail` maps the channel's detail key to the
    destination's validated Config model, e.g.
    `{"http_forwarding": HttpForwarding(...)}`; `detail` returns that model.
    """

    action_id: Id
    rule_id: Id
    # Only in IoTDA responses (the rule's app); accepted so a response body
    # pastes, not used: an action follows its rule.
    app_id: Id | None = None
    channel: str = Field(min_length=1)
    channel_detail: dict[str, Any]
    error_action: bool = False
    """Receives the dead letters of the rule's other actions (what they
    could not deliver, with the reason) instead of the rule's outputs:
    Alibaba's error action. Not part of the IoTDA API."""

    @field_validator("channel")
    @classmethod
    def _known_channel(cls, channel: str) -> str:
        channels.check_channel(channel)
        return channel

    @field_validator("channel_detail")
    @classmethod
    def _detail(cls, detail: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        channel = info.data.get("channel")
        if channel is None:  # the channel error is already reported
            return detail
        # A ValidationError raised here is nested by pydantic under this
        # field's location, e.g. channel_detail.http_forwarding.url.
        return channels.validate_detail(channel, detail)

    @property
    def detail(self) -> BaseModel:
        (config,) = self.channel_detail.values()
        return config


# ------------------------------------------------------------------ policies

PolicyScope = Literal["USER", "CHANNEL", "RULE", "ACTION"]

# IoTDA caps flow control at 1000 TPS (its own platform limit). A self-hosted
# engine can go much faster, so larger limits are accepted; the upper bound
# only catches typos.
FLOW_LIMIT_MAX = 1_000_000


class _ScopedPolicy(_Model):
    policy_id: Id
    policy_name: Name | None = None
    description: Name | None = None  # IoTDA limits policy descriptions like names
    scope: PolicyScope = "USER"
    scope_value: str | None = Field(default=None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _scope_value(self) -> _ScopedPolicy:
        if self.scope != "USER" and not self.scope_value:
            raise PydanticCustomError(
                "scope_value_required",
                "scope {scope} requires scope_value (a {what})",
                {"scope": self.scope, "what": _SCOPE_WHAT[self.scope]},
            )
        return self


_SCOPE_WHAT = {"CHANNEL": "channel name", "RULE": "rule_id", "ACTION": "action_id"}


class FlowControlPolicy(_ScopedPolicy):
    """Data forwarding flow control policy (IoTDA 1.4.22): at most `limit`
    forwarded messages per second within the scope."""

    limit: int = Field(default=1000, ge=1, le=FLOW_LIMIT_MAX)


class BacklogPolicy(_ScopedPolicy):
    """Data transfer stacking (backlog) policy (IoTDA 1.4.21): how much
    undeliverable data is kept, by size and by age; the first limit reached
    applies, and 0 disables backlog. IoTDA's backlog policy has no scope (it
    is tenant-wide); `scope`/`scope_value` are an extension with the flow
    control meanings, default USER (tenant-wide, as in IoTDA)."""

    backlog_size: int = Field(default=1073741823, ge=0, le=1073741823)  # bytes
    backlog_time: int = Field(default=86399, ge=0, le=86399)  # seconds


# ------------------------------------------------------------------ sources


class _SourceEntry(_Model):
    """One item of `sources:` - an object with exactly one key naming the
    kind, e.g. `{kafka: {...}}`. Use `.kind` and `.options`. Its fields are
    the registered sources (`engine.sources.SOURCES`), each typed by the
    source's own `Options` model."""

    @model_validator(mode="after")
    def _exactly_one(self) -> _SourceEntry:
        if len(given(self)) != 1:
            raise PydanticCustomError(
                "one_source", "a source needs exactly one of: {kinds}",
                {"kinds": ", ".join(SOURCES)},
            )
        return self

    @property
    def kind(self) -> str:
        (kind,) = given(self)
        return kind

    @property
    def options(self) -> BaseModel:
        return getattr(self, self.kind)


if TYPE_CHECKING:
    SourceEntry = _SourceEntry
else:
    SourceEntry = create_model(
        "SourceEntry", __base__=_SourceEntry, __module__=__name__,
        **{kind: (source.Options | None, None) for kind, source in SOURCES.items()})


# ------------------------------------------------------------------ outputs of the engine


class MetricsConfig(_Model):
    """Prometheus metrics endpoint."""

    listen: Listen = "127.0.0.1:9108"
    path: str = Field(default="/metrics", pattern=r"^/")
    auth: NoAuth | ListenerAuth = "none"
    """Credentials for `path` (the health endpoints stay open)."""
    tls: ListenerTls | None = None


class DeadLetterKafka(KafkaConnection):
    topic: str = Field(min_length=1)


class DeadLetterAmqp(AmqpConnection):
    queue: str = Field(min_length=1, max_length=255)


class DeadLetterConfig(_Model):
    """Where records that cannot be delivered go: exactly one of a JSONL
    `file`, a Kafka topic or an AMQP queue."""

    file: str | None = Field(default=None, min_length=1)
    kafka: DeadLetterKafka | None = None
    amqp: DeadLetterAmqp | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DeadLetterConfig:
        if len(given(self)) != 1:
            raise PydanticCustomError(
                "one_dead_letter", "dead_letter needs exactly one of: file, kafka, amqp"
            )
        return self

    @property
    def kind(self) -> Literal["file", "kafka", "amqp"]:
        (kind,) = given(self)
        return kind  # type: ignore[return-value]


# ------------------------------------------------------------------ management API


def _check_ak(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9]{1,128}", value):
        raise PydanticCustomError("ak", "must be 1 to 128 letters or digits")
    return value


class AccessKey(_Model):
    ak: Annotated[str, AfterValidator(_check_ak)]
    sk: SecretStr = Field(min_length=1, max_length=256)


class ProjectAuth(_Model):
    tokens: list[SecretStr] = Field(default_factory=list)
    """Accepted X-Auth-Token values."""
    access_keys: list[AccessKey] = Field(default_factory=list)
    """AK/SK pairs for request signing."""

    @model_validator(mode="after")
    def _some_credential(self) -> ProjectAuth:
        if not self.tokens and not self.access_keys:
            raise PydanticCustomError(
                "no_credentials", "a project needs tokens or access_keys (nobody could use it)"
            )
        return self


def _check_project_id(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise PydanticCustomError("project_id", "must be 1 to 64 letters, digits, _ or -")
    return value


ProjectId = Annotated[str, AfterValidator(_check_project_id)]


class ApiConfig(_Model):
    """The IoTDA-compatible management REST API (docs/api.md)."""

    listen: Listen = "127.0.0.1:8080"
    storage: str | None = None
    """Where API-made changes are stored: `sqlite:///PATH`, a path, or
    `postgresql://…`; none: kept in memory."""
    projects: dict[ProjectId, ProjectAuth] = Field(default_factory=dict)
    limits: dict[str, int | float | bool] = Field(default_factory=dict)
    """Overrides of engine.config.limits.ApiLimits (max_body_bytes, rate, burst,
    max_rules, …); `engine api --limit NAME=VALUE` overrides these."""

    @field_validator("limits")
    @classmethod
    def _known_limits(cls, v: dict[str, int | float | bool]) -> dict[str, int | float | bool]:
        ApiLimits.parse([f"{k}={str(x).lower()}" for k, x in v.items()])  # ValueError names the bad one
        return v


# ------------------------------------------------------------------ worker


class WorkerConfig(_Model):
    batch_size: int = Field(default=500, ge=1, le=100_000)
    """Most records handed to a destination in one write."""
    linger_ms: int = Field(default=0, ge=0, le=60_000)
    """How long a partial batch may wait for more records once the action
    can write. 0: at once; under load records queue while the action's
    writes are under way, so batches grow with the arrival rate anyway."""
    shutdown_timeout: float = Field(default=30.0, ge=0, le=3600)
    """Seconds to drain in-flight batches on shutdown before giving up."""
    state_dir: str = Field(default="engine-state", min_length=1)
    """Directory of the worker's durable state: the backlog (`backlog.db`)
    and, when `dead_letter` is not configured, the dead letters
    (`dead-letters.jsonl`). Relative paths are relative to the working
    directory. One worker per directory (it is locked)."""


# ------------------------------------------------------------------ the whole file


# ------------------------------------------------------------------ rule tests


class Expectation(_Model):
    """What one rule must make of a test's input: exactly `output`, an output
    that `contains` these members, or `no_match`."""

    rule: Id
    output: dict[str, Any] | list[dict[str, Any]] | None = None
    """The exact output; for a FOREACH rule, the list of its outputs."""
    contains: dict[str, Any] | list[dict[str, Any]] | None = None
    """Members the output must have; for a FOREACH rule, a list: one object
    per output, in order."""
    no_match: bool = False

    @model_validator(mode="after")
    def _one(self) -> Expectation:
        given_ = [k for k in ("output", "contains") if getattr(self, k) is not None]
        if len(given_) + self.no_match != 1:
            raise PydanticCustomError("expectation", "give exactly one of output, contains "
                                      "or no_match: true")
        return self


class RuleTest(_Model):
    """`tests:` item: a notification (or several) and what each named rule
    must make of it (`engine test`, `engine check`; the worker ignores them)."""

    name: str = Field(min_length=1, max_length=256)
    input: dict[str, Any] | None = None
    """A notification, as a source delivers it (docs/notifications.md)."""
    inputs: list[dict[str, Any]] | None = Field(default=None, min_length=1)
    """Several notifications instead of `input`: each must meet every expectation."""
    expect: list[Expectation] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_input(self) -> RuleTest:
        if (self.input is None) == (self.inputs is None):
            raise PydanticCustomError("test_input", "give either input (one notification) "
                                      "or inputs (a list of them)")
        return self

    @property
    def notifications(self) -> list[dict[str, Any]]:
        return [self.input] if self.input is not None else list(self.inputs or ())


class EngineConfig(_Model):
    rules: list[Rule] = Field(default_factory=list)
    actions: list[Action] = Field(default_factory=list)
    flowcontrol_policies: list[FlowControlPolicy] = Field(default_factory=list)
    backlog_policies: list[BacklogPolicy] = Field(default_factory=list)
    sources: list[SourceEntry] = Field(default_factory=list)
    metrics: MetricsConfig | None = None
    dead_letter: DeadLetterConfig | None = None
    api: ApiConfig | None = None
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    registry: RegistryConfig | None = None
    """Products and devices (engine.sources.device_registry): the headers of
    device traffic (the mqtt and device_api sources)."""
    tests: list[RuleTest] = Field(default_factory=list)
    """Rule tests (engine.config.ruletests): not run by the worker."""

    def actions_of(self, rule_id: str) -> list[Action]:
        return [a for a in self.actions if a.rule_id == rule_id]


# Top-level keys that hold lists (merged across files) and single sections
# (allowed in one file only).
LIST_SECTIONS = ("rules", "actions", "flowcontrol_policies", "backlog_policies", "sources",
                 "tests")
SINGLE_SECTIONS = ("metrics", "dead_letter", "api", "worker", "registry")
