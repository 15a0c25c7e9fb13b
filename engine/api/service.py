"""What the API does with a project's configuration, independent of HTTP.

Every object is stored as the item a rule file would hold (ids included),
and every change is checked by building the project's configuration tree
with the change applied and running it through `engine.config`'s one
validator (`validate_config_dict`). So an object the API accepts is one a
rule file accepts and the other way round, cross-object rules included (an
action's rule must exist, one flow control policy per scope, every rule
text compiles), and the stored configuration always loads as a rule file
(`project_config`, `engine export`). The API is only stricter about JSON
types (`check_types`: `"yes"` is not a Boolean), where YAML users expect
leniency and API clients do not.

Rule texts already stored were compiled when they were stored; only the
texts of the objects being changed are compiled again (compiling is most of
the validation time: ~1 ms a rule).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.api import errors, params
from engine.api.storage import KINDS, Delete, Op, Put, Store, Stored
from engine.config import ConfigError, EngineConfig, channels, validate_config_dict
from engine.config.errors import format_loc, pydantic_message
from engine.config.limits import ApiLimits
from engine.config.models import Action, BacklogPolicy, FlowControlPolicy, Rule
from engine.config.secrets import is_secret_key

# What pydantic shows for a SecretStr in JSON; a client that sends it back
# (GET, edit, PUT) means "keep the stored secret".
MASK = "**********"


@dataclass(frozen=True)
class Kind:
    name: str  # the rule-file section, also IoTDA's list key
    id_field: str
    model: type[BaseModel]
    updatable: frozenset[str]  # fields IoTDA's PUT takes
    # Rule-file fields the IoTDA API neither takes nor shows (the Alibaba
    # dialect: Alibaba rules are managed through Alibaba's API, engine.api.aliyun).
    file_only: frozenset[str] = frozenset()


RULES = Kind("rules", "rule_id", Rule,
             frozenset({"rule_name", "description", "select", "where", "active"}),
             frozenset({"dialect", "topic", "sql"}))
ACTIONS = Kind("actions", "action_id", Action, frozenset({"channel", "channel_detail"}),
               frozenset({"error_action"}))
FLOWCONTROL = Kind("flowcontrol_policies", "policy_id", FlowControlPolicy,
                   frozenset({"policy_name", "description", "limit"}))
BACKLOG = Kind("backlog_policies", "policy_id", BacklogPolicy,
               frozenset({"policy_name", "description", "backlog_size", "backlog_time"}))
KIND = {kind.name: kind for kind in (RULES, ACTIONS, FLOWCONTROL, BACKLOG)}
assert tuple(KIND) == KINDS


def new_id() -> str:
    # IoTDA's ids look like "5bcaddda-75bf-4623-8c8d-26175c41fcca": a UUID,
    # 36 characters, inside the rule-file id alphabet.
    return str(uuid.uuid4())


# ------------------------------------------------------------------ reading


def present(kind: Kind, body: Mapping[str, Any]) -> dict[str, Any]:
    """The API representation of a stored object: every field of the model
    with defaults filled in, secrets masked. Unset optional fields are left
    out rather than shown as null, as in IoTDA's examples (seed 1.4.8.1,
    1.4.8.6): a client may not expect null where the seed has a string."""
    return kind.model.model_validate(body).model_dump(mode="json", exclude_none=True,
                                                       exclude=set(kind.file_only))


def of_kind(records: Iterable[Stored], kind: Kind) -> list[Stored]:
    return [r for r in records if r.kind == kind.name]


def find(records: Iterable[Stored], kind: Kind, object_id: str) -> Stored:
    for record in records:
        if record.kind == kind.name and record.id == object_id:
            return record
    raise errors.not_found(kind.name)


def filtered(
    records: list[Stored], kind: Kind, query: Mapping[str, str]
) -> list[tuple[int, dict[str, Any]]]:
    """(seq, representation) of the objects matching IoTDA's list filters
    (checked by `params.filters`: a malformed filter is 400)."""
    out = []
    rules = {r.id: present(RULES, r.body) for r in of_kind(records, RULES)}
    match = _MATCHERS[kind.name]
    wanted = params.filters(kind.name, query)
    for record in of_kind(records, kind):
        item = present(kind, record.body)
        if all(match(item, name, value, rules) for name, value in wanted.items()):
            out.append((record.seq, item))
    return out


def _rule_matches(item: dict, name: str, value: str, rules: dict) -> bool:
    if name in ("resource", "event"):
        return item["subject"][name] == value
    if name == "active":
        return item["active"] == (value == "true")
    return item.get(name) == value


def _action_matches(item: dict, name: str, value: str, rules: dict) -> bool:
    if name == "app_type":  # an action is in the scope of its rule
        rule = rules.get(item["rule_id"])
        return rule is not None and rule["app_type"] == value
    return item.get(name) == value


def _field_matches(item: dict, name: str, value: str, rules: dict) -> bool:
    return item.get(name) == value


_MATCHERS: dict[str, Callable[[dict, str, str, dict], bool]] = {
    "rules": _rule_matches,
    "actions": _action_matches,
    "flowcontrol_policies": _field_matches,
    "backlog_policies": _field_matches,
}


# ------------------------------------------------------------------ validation


def tree(records: Iterable[Stored]) -> dict[str, list[dict[str, Any]]]:
    """The project as a rule-file tree, objects oldest first."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in KINDS}
    for record in sorted(records, key=lambda r: r.seq):
        if record.kind in out:  # not the Alibaba API's kinds (engine.api.aliyun)
            out[record.kind].append(record.body)
    return out


def project_config(records: Iterable[Stored], project: str) -> EngineConfig:
    """The stored configuration of a project as the `EngineConfig` a rule
    file with the same items produces (fully validated, every rule text
    compiled): what a worker swaps in when the project changes."""
    return validate_config_dict(tree(records), f"project {project}")


async def load_project_config(store: Store, project: str) -> EngineConfig:
    return project_config(await store.load(project), project)


def validate(after: list[Stored], kind: Kind, changed: set[tuple[str, str]]) -> None:
    """Raise an ApiError if the project would not be a valid configuration
    with `after` as its objects. `changed` are the (kind, id) being written."""
    data: dict[str, list[dict[str, Any]]] = {name: [] for name in KINDS}
    labels: dict[str, str] = {}
    for record in sorted(after, key=lambda r: r.seq):
        if record.kind not in data:
            continue  # the Alibaba API's kinds are validated by engine.api.aliyun
        body = record.body
        section = data[record.kind]
        key = (record.kind, record.id)
        if record.kind == "rules" and key not in changed:
            # Compiled when stored; the validator still sees the id.
            body = {k: v for k, v in body.items() if k not in ("select", "where")}
        labels[f"{record.kind}[{len(section)}]"] = (
            "" if key in changed else f"{record.kind} '{record.id}'"
        )
        section.append(body)
        # engine.config's cross-object check hashes `scope` and raises TypeError
        # on a list or object there (found by fuzzing; reported upstream). Refuse
        # it here, in the model's words, until the validator does.
        if key in changed and not isinstance(body.get("scope", "USER"), str):
            raise errors.invalid(kind.name,
                                 "scope: Input should be 'USER', 'CHANNEL', 'RULE' or 'ACTION'")
    try:
        validate_config_dict(data, "request")
    except ConfigError as err:
        messages, rule_text = [], False
        for issue in err.issues:
            path = issue.path
            for prefix, label in labels.items():
                if path == prefix or path.startswith(prefix + ".") or path.startswith(prefix + "["):
                    path = (label + path[len(prefix):]).lstrip(".")
                    break
            rule_text |= kind is RULES and path.split(".")[0] in ("select", "where")
            messages.append(f"{path}: {issue.message}" if path else issue.message)
        detail = "; ".join(messages)
        if rule_text:
            raise errors.rule_text_invalid(detail) from None
        raise errors.invalid(kind.name, detail) from None


def check_types(kind: Kind, body: dict[str, Any], given: Iterable[str] | None = None) -> None:
    """400 unless the request's fields have the JSON types of the seed, exactly:
    `"yes"` or `1` is not a Boolean, `"10"` not an Integer. (The rule-file
    validator is lax, as YAML users expect; an API client that sends the
    wrong type has a bug the server should not paper over.) Also reports
    missing required fields, before anything is looked up: an action
    without `rule_id` is a bad request, not an unknown rule. `given`: the
    fields an update sends (others are stored and were checked before)."""
    fields = None if given is None else set(given)
    problems = _type_problems(kind.model, body, ())
    if kind is ACTIONS:
        # The Action model validates channel_detail leniently from inside;
        # what it reported there is the validator's to report.
        problems = [p for p in problems if p[0][:1] != ("channel_detail",) or len(p[0]) == 1]
        problems += _detail_type_problems(body)
    problems = [(loc, message) for loc, message in problems
                if fields is None or (loc and loc[0] in fields)]
    if problems:
        raise errors.invalid(kind.name, "; ".join(f"{format_loc(loc)}: {message}"
                                                  for loc, message in problems))


def _type_problems(model: type[BaseModel], data: Any, prefix: tuple[str | int, ...]
                   ) -> list[tuple[tuple[str | int, ...], str]]:
    try:
        model.model_validate(data, strict=True)
    except ValidationError as exc:
        return [((*prefix, *e["loc"]), pydantic_message(e)) for e in exc.errors()
                if e["type"] == "missing" or e["type"].endswith("_type")]
    return []


def _detail_type_problems(body: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    # channel_detail is validated by the destination's model from inside the
    # Action model, out of reach of its strict mode: check it on its own.
    sink = channels.registry().get(body.get("channel"))  # type: ignore[arg-type]
    detail = body.get("channel_detail")
    if sink is None or not isinstance(detail, dict) or not isinstance(
            detail.get(sink.detail_key), dict):
        return []  # the validator reports these
    return _type_problems(sink.Config, detail[sink.detail_key],
                          ("channel_detail", sink.detail_key))


def _restore_secrets(new: Any, old: Any, path: str = "") -> Any:
    """`new` with masked secrets replaced by the stored ones at the same place."""
    if isinstance(new, dict):
        old = old if isinstance(old, dict) else {}
        out = {}
        for key, value in new.items():
            where = f"{path}.{key}" if path else key
            if is_secret_key(key) and value == MASK:
                if not isinstance(old.get(key), str):
                    raise errors.invalid("actions", f"{where}: a masked secret can only be "
                                         "sent back where one is stored; give the value")
                out[key] = old[key]
            else:
                out[key] = _restore_secrets(value, old.get(key), where)
        return out
    if isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        return [_restore_secrets(n, o, f"{path}[{i}]") for i, (n, o) in enumerate(zip(new, old, strict=True))]
    return new


# ------------------------------------------------------------------ changes (plans for Store.change)


def plan_create(kind: Kind, body: dict[str, Any], limits: ApiLimits, api: bool = True
                ) -> Callable[[list[Stored]], list[Op]]:
    """Create one object from an IoTDA create body. The id is generated
    unless the body brings one (an extension: a rule-file item pastes)."""
    body = dict(body)
    for key in kind.file_only & set(body):
        raise errors.invalid(kind.name, f"{key}: not a field of IoTDA's API (Alibaba-dialect "
                             "rules are managed through Alibaba's API, or in rule files)")
    object_id = body.get(kind.id_field)
    if object_id is None:
        object_id = body[kind.id_field] = new_id()
    elif not isinstance(object_id, str):
        raise errors.invalid(kind.name, f"{kind.id_field}: must be a string")
    if kind is RULES:
        body.setdefault("active", False)  # IoTDA creates rules inactive
    if kind is ACTIONS and api and body.get("channel") == "FILE_FORWARDING" \
            and not limits.allow_file_channel:
        raise errors.invalid("actions", "channel: FILE_FORWARDING writes local files and is "
                             "disabled for the API (allow_file_channel)")
    if api:
        check_types(kind, body)

    def plan(records: list[Stored]) -> list[Op]:
        if any(r.kind == kind.name and r.id == object_id for r in records):
            raise errors.duplicate_id(kind.name)
        if kind is ACTIONS:
            rule_id = body.get("rule_id")
            rule = next((r for r in of_kind(records, RULES) if r.id == rule_id), None)
            if rule is None:
                raise errors.not_found("rules")
            if rule.body.get("app_id") and "app_id" not in body:
                body["app_id"] = rule.body["app_id"]  # IoTDA shows the rule's resource space
        _check_quota(kind, body, records, limits)
        new = Stored(kind.name, object_id, _next_seq(records), body)
        validate([*records, new], kind, {(kind.name, object_id)})
        return [Put(kind.name, object_id, body)]

    return plan


def plan_update(kind: Kind, object_id: str, changes: dict[str, Any], limits: ApiLimits
                ) -> Callable[[list[Stored]], list[Op]]:
    """Apply an IoTDA update body: the given fields replace the stored ones
    (null means "unchanged", as the SDKs omit unset fields)."""
    for key in changes:
        if key not in kind.updatable:
            reason = "cannot be changed" if key in kind.model.model_fields else "unknown field"
            raise errors.invalid(kind.name, f"{key}: {reason}")
    given = {k: v for k, v in changes.items() if v is not None}
    if kind is ACTIONS and given.get("channel") == "FILE_FORWARDING" \
            and not limits.allow_file_channel:
        raise errors.invalid("actions", "channel: FILE_FORWARDING writes local files and is "
                             "disabled for the API (allow_file_channel)")

    def plan(records: list[Stored]) -> list[Op]:
        old = find(records, kind, object_id)
        body = {**old.body, **given}
        if "channel_detail" in given:
            body["channel_detail"] = _restore_secrets(given["channel_detail"],
                                                      old.body.get("channel_detail"))
        check_types(kind, body, given)
        others = [r for r in records if r is not old]
        validate([*others, Stored(kind.name, object_id, old.seq, body)], kind,
                 {(kind.name, object_id)})
        return [Put(kind.name, object_id, body)]

    return plan


def plan_delete(kind: Kind, object_id: str) -> Callable[[list[Stored]], list[Op]]:
    def plan(records: list[Stored]) -> list[Op]:
        old = find(records, kind, object_id)
        if kind is RULES and any(a.body.get("rule_id") == object_id
                                 for a in of_kind(records, ACTIONS)):
            raise errors.rule_has_actions()
        # Policies may name the object (scope RULE/ACTION): the rest must stay valid.
        validate([r for r in records if r is not old], kind, set())
        return [Delete(kind.name, object_id)]

    return plan


def plan_import(data: Mapping[str, Any], replace: bool) -> Callable[[list[Stored]], list[Op]]:
    """Load rule-file items (already validated as a file) into a project:
    objects with the same id are replaced, others added; with `replace`,
    stored objects the file does not have are deleted. No quotas: importing
    is the operator's own act."""
    incoming = [(name, item[KIND[name].id_field], item)
                for name in KINDS for item in data.get(name) or []]

    def plan(records: list[Stored]) -> list[Op]:
        keys = {(name, object_id) for name, object_id, _ in incoming}
        kept = [r for r in records if (r.kind, r.id) not in keys and not replace
                and r.kind in KINDS]
        seq = _next_seq(records)
        after = kept + [Stored(n, i, seq + k, item) for k, (n, i, item) in enumerate(incoming)]
        validate(after, RULES, keys)
        deletes: list[Op] = [Delete(r.kind, r.id) for r in records  # IoTDA kinds only
                             if replace and r.kind in KINDS and (r.kind, r.id) not in keys]
        return deletes + [Put(n, i, item) for n, i, item in incoming]

    return plan


def _next_seq(records: list[Stored]) -> int:
    # Only orders the candidate in the validation tree; the store assigns the real one.
    return max((r.seq for r in records), default=0) + 1


def _check_quota(kind: Kind, body: dict[str, Any], records: list[Stored],
                 limits: ApiLimits) -> None:
    existing = of_kind(records, kind)
    if kind is RULES and len(existing) >= limits.max_rules:
        raise errors.quota_exceeded("rules", limits.max_rules)
    if kind is ACTIONS:
        siblings = [a for a in existing if a.body.get("rule_id") == body.get("rule_id")]
        if len(siblings) >= limits.max_actions_per_rule:
            raise errors.quota_exceeded("actions per rule", limits.max_actions_per_rule)
    if kind is FLOWCONTROL and len(existing) >= limits.max_flowcontrol_policies:
        raise errors.quota_exceeded("flowcontrol_policies", limits.max_flowcontrol_policies)
    if kind is BACKLOG and len(existing) >= limits.max_backlog_policies:
        raise errors.quota_exceeded("backlog policies", limits.max_backlog_policies)
