"""The IoTDA-compatible management REST API (docs/api.md).

- `app`: aiohttp routes, authentication and limits (`create_app`, `serve`)
- `service`: what each request does to a project's configuration, checked
  by `engine.config`'s validator; `project_config` for workers
- `storage`: SQLite and PostgreSQL stores with change subscription
- `params`: formats of path ids and list filters (IoTDA's constraints)
- `aliyun/`: Alibaba IoT Platform's rules-engine RPC API at `/` (docs/api-alibaba.md)
- `auth`, `ratelimit`, `pagination`, `errors`, `openapi`, `metrics`: one role each
  (the limits themselves, `ApiLimits`, are configuration: `engine.config.limits`)

A worker that takes its configuration from the store:

    store = open_store(config.api.storage); await store.open()
    rules = await load_project_config(store, "proj1")      # an EngineConfig
    async for event in store.changes():                    # within a second of any change
        rules = await load_project_config(store, event.project)
"""

from engine.api.app import create_app, serve
from engine.api.metrics import ActionCounters, MetricsProvider, RuleCounters
from engine.api.service import load_project_config, project_config
from engine.api.storage import ChangeEvent, PostgresStore, SqliteStore, Store, open_store
from engine.config.limits import ApiLimits

__all__ = [
    "ActionCounters",
    "ApiLimits",
    "ChangeEvent",
    "MetricsProvider",
    "PostgresStore",
    "RuleCounters",
    "SqliteStore",
    "Store",
    "create_app",
    "load_project_config",
    "open_store",
    "project_config",
    "serve",
]
