"""What a worker with an `api:` section runs: its rule files plus every
project stored through the API.

Project objects are namespaced inside the worker: rule `r1` of project
`proj-a` runs as `proj-a/r1` (actions and policy ids likewise, and a RULE
or ACTION policy's `scope_value`). Ids cannot contain `/`, so API objects
never collide with each other or with rule-file objects, which keep their
ids. USER and CHANNEL policies of a project apply worker-wide (as the file
ones do). A project's Alibaba rules (engine.api.aliyun) run as its rules
`aliyun-<RuleId>` with actions `aliyun-<ActionId>`.

Products and devices (engine.api.devices) are not namespaced: a device id
is what a device says on the wire (its MQTT topics, its device API calls),
so the registry is one for the worker: the rule files' `registry:` plus
every project's products and devices. A product or device id that is
already there (in the rule files, or an earlier project in name order)
keeps its first record; the later one is left out with a warning.
"""

from __future__ import annotations

import logging
from typing import Any

from engine.api.aliyun import engine_items
from engine.api.devices import registry_of
from engine.api.service import project_config
from engine.api.storage import KINDS, Store
from engine.config import EngineConfig, validate_config_dict
from engine.sources.device_registry import RegistryConfig

log = logging.getLogger(__name__)

SEP = "/"


def qualify(project: str, object_id: str) -> str:
    return f"{project}{SEP}{object_id}"


def namespaced(project: str, config: EngineConfig) -> dict[str, list[Any]]:
    """The project's rules, actions and policies with worker-internal ids."""
    def q(object_id: str) -> str:
        return qualify(project, object_id)

    def policy(p: Any) -> Any:
        update = {"policy_id": q(p.policy_id)}
        if p.scope in ("RULE", "ACTION") and p.scope_value:
            update["scope_value"] = q(p.scope_value)
        return p.model_copy(update=update)

    return {
        "rules": [r.model_copy(update={"rule_id": q(r.rule_id)}) for r in config.rules],
        "actions": [a.model_copy(update={"action_id": q(a.action_id), "rule_id": q(a.rule_id)})
                    for a in config.actions],
        "flowcontrol_policies": [policy(p) for p in config.flowcontrol_policies],
        "backlog_policies": [policy(p) for p in config.backlog_policies],
    }


async def effective_config(files: EngineConfig, store: Store) -> EngineConfig:
    """`files` plus every project in `store` (each validated as a rule file
    is; raises ConfigError if one is not valid)."""
    parts: dict[str, Any] = {kind: list(getattr(files, kind)) for kind in KINDS}
    registries: list[tuple[str, RegistryConfig]] = []
    broker = republish_broker(files)
    for project in sorted(await store.projects()):
        records = await store.load(project)
        registry = registry_of(records)
        if registry is not None:
            registries.append((project, registry))
        configs = [project_config(records, project)]
        alibaba = engine_items(records, broker)
        if alibaba["rules"]:  # checked when stored; validated apart so export never sees them
            configs.append(validate_config_dict(alibaba, f"project {project} (Alibaba rules)"))
        for config in configs:
            for kind, items in namespaced(project, config).items():
                parts[kind].extend(items)
    if registries:
        parts["registry"] = merged_registry(files.registry, registries)
    return files.model_copy(update=parts)


def republish_broker(files: EngineConfig) -> str | None:
    """Where Alibaba REPUBLISH actions publish: the broker of the worker's
    first MQTT source (the one its devices publish to), or None."""
    for entry in files.sources:
        if entry.kind == "mqtt":
            return entry.options.url.get_secret_value()  # type: ignore[attr-defined]
    return None


def merged_registry(files: RegistryConfig | None,
                    projects: list[tuple[str, RegistryConfig]]) -> RegistryConfig:
    """The rule files' registry plus the projects' (first record of an id wins)."""
    base = files or RegistryConfig()
    products = {p.product_id: p for p in base.products}
    devices = {d.device_id: d for d in base.devices}
    for project, registry in projects:
        for product in registry.products:
            if products.setdefault(product.product_id, product) is not product:
                log.warning("project %s: product %s is already registered elsewhere; its "
                            "record there is used", project, product.product_id)
        for device in registry.devices:
            if devices.setdefault(device.device_id, device) is not device:
                log.warning("project %s: device %s is already registered elsewhere; its "
                            "record there is used", project, device.device_id)
    return base.model_copy(update={"products": list(products.values()),
                                   "devices": list(devices.values())})
