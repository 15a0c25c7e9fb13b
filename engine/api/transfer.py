"""`engine export` and `engine import`: a project's stored configuration to
and from a rule file.

Export writes the stored items as they are (a rule file is where this
engine keeps secrets too, so passwords and tokens are written in clear; the
CLI creates the file readable by its owner only). Import validates the file
exactly as `engine check` does (every problem with its line), then loads its
rules, actions and policies into the store in one change, so running workers
see it as one update.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from engine.api import service
from engine.api.storage import KINDS, Store
from engine.config import load_config
from engine.config.env import interpolate
from engine.config.loader import read_document


async def export_project(store: Store, project: str) -> str:
    records = await store.load(project)
    # Refuse to write a file that would not load (e.g. stored by an older engine).
    service.project_config(records, project)
    data = {name: items for name, items in service.tree(records).items() if items}
    header = f"# project {project}: {len(records)} objects exported by `engine export`\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def read_rule_file(path: str, env: Mapping[str, str] | None = None
                   ) -> tuple[dict[str, list[Any]], list[str]]:
    """The rules/actions/policies of a rule file, validated (raises
    ConfigError), with `${VAR}` resolved; and the other sections it has,
    which import ignores."""
    env = os.environ if env is None else env
    load_config([path], env)
    document, _ = read_document(Path(path))
    data, _ = interpolate((document.data if document else None) or {}, env)
    sections = {name: list(data.get(name) or []) for name in KINDS}
    ignored = sorted(key for key in data if key not in KINDS)
    return sections, ignored


async def import_sections(store: Store, project: str, sections: Mapping[str, list[Any]],
                          replace: bool = False) -> int:
    """Store the items (same id: replaced); with `replace`, delete what the
    file does not have. Returns the number of objects written."""
    written = await store.change(project, service.plan_import(sections, replace))
    return len(written)
