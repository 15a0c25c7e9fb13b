"""What a worker with an `api:` section runs: its rule files plus every
project stored through the API.

Project objects are namespaced inside the worker: rule `r1` of project
`proj-a` runs as `proj-a/r1` (actions and policy ids likewise, and a RULE
or ACTION policy's `scope_value`). Ids cannot contain `/`, so API objects
never collide with each other or with rule-file objects, which keep their
ids. USER and CHANNEL policies of a project apply worker-wide (as the file
ones do). A project's Alibaba rules (engine.api.aliyun) run as its rules
`aliyun-<RuleId>` with actions `aliyun-<ActionId>`.
"""

from __future__ import annotations

from typing import Any

from engine.api.aliyun import engine_items
from engine.api.service import project_config
from engine.api.storage import KINDS, Store
from engine.config import EngineConfig, validate_config_dict

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
    parts: dict[str, list[Any]] = {kind: list(getattr(files, kind)) for kind in KINDS}
    for project in sorted(await store.projects()):
        records = await store.load(project)
        configs = [project_config(records, project)]
        alibaba = engine_items(records)
        if alibaba["rules"]:  # checked when stored; validated apart so export never sees them
            configs.append(validate_config_dict(alibaba, f"project {project} (Alibaba rules)"))
        for config in configs:
            for kind, items in namespaced(project, config).items():
                parts[kind].extend(items)
    return files.model_copy(update=parts)
