"""`engine run` with an `api:` section: the management API in the worker.

The worker runs its rule files plus every project in the API store (see
`engine.api.effective` for how project ids are namespaced). The API server
listens on `api.listen` in the worker's event loop; every change event of
the store (this worker's API, another process's, or - with PostgreSQL -
another host's, via LISTEN/NOTIFY) requests a reload, which rebuilds the
configuration (`StoreConfig`, the reloader's config provider: the rule files
plus the store) and swaps it in exactly like a rule-file reload
(`Reloader.reload`/`Worker.apply`). The worker's counters answer
`GET .../rules/{rule_id}/metrics`. The store's products and devices are the
worker's device registry, and the notifications their changes produce reach
the rules through one more source (`engine.api.outbox.RegistryEvents`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from aiohttp import web

from engine.api.app import ApiRunner, create_app
from engine.api.effective import SEP, effective_config, qualify, republish_broker
from engine.api.metrics import ActionCounters, RuleCounters
from engine.api.outbox import RegistryEvents
from engine.api.storage import EVENTS, ChangeEvent, Store, open_store
from engine.app.main import serve
from engine.config import EngineConfig
from engine.config.limits import ApiLimits
from engine.config.models import parse_listen
from engine.runtime.reloader import RuleFiles
from engine.runtime.status import StatusReporter
from engine.runtime.worker import Worker, WorkerOptions
from engine.sources.listen import start_site

log = logging.getLogger(__name__)


class WorkerMetrics:
    """The API's MetricsProvider, from a worker's counters."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def rule_metrics(self, project: str, rule_id: str) -> RuleCounters | None:
        key = qualify(project, rule_id)
        metrics = self.worker.metrics
        rules = metrics.rules
        if key not in rules.matched:
            return None  # not running (inactive, or not applied yet)
        actions: dict[str, ActionCounters] = {}
        config = self.worker.config
        for action in config.actions_of(key) if config is not None else ():
            c = metrics.actions.of(action.action_id, key, action.channel)
            actions[action.action_id.split(SEP, 1)[1]] = ActionCounters(
                matched=c.matched, forwarded=c.forwarded, failed=c.failed,
                backlogged=c.backlogged, dead_lettered=c.dead_lettered, inflight=c.inflight)
        return RuleCounters(evaluated=rules.well_formed, matched=rules.matched.get(key, 0),
                            failed=rules.failed.get(key, 0), actions=actions)


class StoreConfig:
    """The reload's configuration provider: the rule files (as last
    accepted when `files=False`) plus every project of the API store."""

    def __init__(self, files: RuleFiles, store: Store) -> None:
        self.files, self.store = files, store

    @property
    def paths(self) -> Sequence[str]:
        return self.files.paths

    async def load(self, files: bool) -> EngineConfig:
        return await effective_config(await self.files.load(files), self.store)

    def accept(self) -> None:
        self.files.accept()


async def run_with_api(config: EngineConfig,
                       status: Callable[[Worker], StatusReporter | None],
                       config_paths: Sequence[str] | None = None,
                       options: WorkerOptions | None = None) -> Worker:
    """Run a worker for `config` (which has an `api:` section) with the
    management API, until its sources end or SIGTERM/SIGINT. Returns the
    stopped worker. `options`: see `Worker.from_config`."""
    api = config.api
    assert api is not None
    async with open_store(api.storage) as store:
        worker: Worker | None = None
        early: list[ChangeEvent] = []

        def on_change(event: ChangeEvent) -> None:
            if event.kind == EVENTS:
                return  # the registry's notifications: RegistryEvents reads them
            if worker is None:
                early.append(event)  # before the worker exists: reload once it does
            else:
                worker.request_reload(f"api: {event.op} {event.kind} {event.project}/{event.id}",
                                      files=False)

        unsubscribe = store.subscribe(on_change)
        reload_early = None
        try:
            files = RuleFiles(config_paths or (), config)
            worker = Worker.from_config(await effective_config(config, store),
                                        provider=StoreConfig(files, store),
                                        extra_sources=[RegistryEvents(store)],
                                        options=options)
            runner = ApiRunner(create_app(api, store, ApiLimits.from_config(api.limits),
                                               metrics=WorkerMetrics(worker),
                                               broker=republish_broker(config)))
            await runner.setup()
            try:
                host, port = parse_listen(api.listen)
                site = web.TCPSite(runner, host, port)
                await start_site(site, "management API (api.listen)", host, port)
                bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                log.info("management API listening on http://%s:%d (storage: %s); projects "
                         "in the store are forwarded as PROJECT/ID", host, bound,
                         "memory" if not api.storage else api.storage.split("://")[0])
                if early:  # missed by the configuration just loaded, perhaps
                    reload_early = asyncio.create_task(_reload_when_ready(worker))
                await serve(worker, status(worker), config_paths=config_paths)
            finally:
                await runner.cleanup()
        finally:
            unsubscribe()
            if reload_early is not None:
                reload_early.cancel()
    return worker


async def _reload_when_ready(worker: Worker) -> None:
    while not worker.metrics.ready and not worker.stopping:
        await asyncio.sleep(0.05)
    worker.request_reload("api: changed during start-up", files=False)
