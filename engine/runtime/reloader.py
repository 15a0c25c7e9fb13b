"""Hot reload: a `Reloader` asks a config provider for the configuration,
decides whether it may be applied and has the worker swap it in
(`Worker.apply`).

Providers (`ConfigProvider`): `RuleFiles` - the rule files alone, read once
they settled (engine.runtime.watch) - or, with the management API, the rule
files plus the API store (`engine.app.managed.StoreConfig`). A provider's
`load(files)` returns the whole configuration (`files=False`: keep the rule
files as last accepted, e.g. for a change in the API store) and raises
`ConfigError` or `ReloadRefused`; `accept()` tells it the last load was taken
(applied, or nothing to change), so a later `files=False` load starts from it.

The reloader refuses a configuration that changes a restart-only section
(RESTART_SECTIONS) as a whole, with one log line; the worker checks nothing
else of it. Requests (SIGHUP, a file change, an API change event) that
arrive while a reload runs are merged into one more reload.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from typing import Protocol

from engine.config import ConfigError, EngineConfig, load_config
from engine.runtime.metrics import Metrics
from engine.runtime.watch import ConfigWatcher, digests

log = logging.getLogger("engine.runtime.worker")  # the reload lines keep their logger

# Sections a reload cannot apply: a reload that changes one is refused.
# (`registry` reloads: the sources' registry is changed in place, Worker.apply.)
RESTART_SECTIONS = ("sources", "metrics", "dead_letter", "backlog_policies", "api",
                    "worker.state_dir")
RELOAD_READ_TRIES = 10


def reload_poll() -> float:
    """Seconds between polls of the rule files: `ENGINE_RELOAD_POLL` (default 1; 0: off)."""
    return float(os.environ.get("ENGINE_RELOAD_POLL", "1") or 0)


def restart_only(config: EngineConfig, section: str) -> object:
    if section == "worker.state_dir":
        return config.worker.state_dir
    return getattr(config, section)


class ReloadRefused(Exception):
    """A configuration a reload must not apply; the message says why."""


class Reloadable(Protocol):
    """What the reloader needs of a worker (`engine.runtime.worker.Worker`)."""

    config: EngineConfig | None
    config_overrides: Callable[[EngineConfig], EngineConfig] | None
    metrics: Metrics
    stopping: bool

    async def apply(self, config: EngineConfig) -> bool: ...


class ConfigProvider(Protocol):
    @property
    def paths(self) -> Sequence[str]: ...  # the rule files to watch (may be none)

    async def load(self, files: bool) -> EngineConfig: ...

    def accept(self) -> None: ...


class RuleFiles:
    """The configuration of the rule files `paths`; `current`: the one
    running (what `load(files=False)` returns)."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], current: EngineConfig, *,
                 settle: float | None = None) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.current = current
        self.settle = max(reload_poll(), 0.2) if settle is None else settle
        self._loaded: EngineConfig | None = None

    async def load(self, files: bool) -> EngineConfig:
        if not files or not self.paths:
            self._loaded = self.current
            return self.current
        config = await self._read()
        if not config.rules and self.current.rules:
            raise ReloadRefused("the rule files define no rules (cut off while being "
                                "written?); the running configuration is kept - to forward "
                                "nothing, set active: false on the rules")
        self._loaded = config
        return config

    def accept(self) -> None:
        if self._loaded is not None:
            self.current = self._loaded

    async def _read(self) -> EngineConfig:
        """The files read while none changed (content hash before and after;
        a writer still at it is waited for, up to RELOAD_READ_TRIES reads).
        A reload never takes an empty file for an empty configuration."""
        for _ in range(RELOAD_READ_TRIES):
            before = await asyncio.to_thread(digests, self.paths)
            config = await asyncio.to_thread(load_config, self.paths, allow_empty=False)
            if await asyncio.to_thread(digests, self.paths) == before:
                return config
            await asyncio.sleep(self.settle)
        raise ReloadRefused(f"{', '.join(self.paths)} kept changing while being read; the "
                            "running configuration is kept")


class Reloader:
    def __init__(self, worker: Reloadable, provider: ConfigProvider, *,
                 interval: float = 1.0) -> None:
        self.worker = worker
        self.provider = provider
        self.interval = interval  # seconds between polls of the files; 0: SIGHUP only
        assert worker.config is not None
        self._running = {k: restart_only(worker.config, k) for k in RESTART_SECTIONS}
        self._reasons: list[str] = []
        self._files = False
        self._requests: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    @property
    def paths(self) -> Sequence[str]:
        return self.provider.paths

    def start(self) -> None:
        """Watch the rule files (when there are any and polling is on)."""
        if self.paths and self.interval > 0 and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="config watcher")

    def stop(self) -> None:
        for task in (self._watcher, self._requests):
            if task is not None:
                task.cancel()
        self._watcher = None

    def request(self, reason: str, *, files: bool = True) -> None:
        """Reload soon (safe from a signal handler); requests that arrive
        while a reload runs are merged into one more reload. `files=False`
        (a change in the API store): keep the last loaded rule files."""
        if self.worker.stopping:
            return
        self._reasons.append(reason)
        self._files |= files
        if self._requests is None or self._requests.done():
            self._requests = asyncio.create_task(self._requested(), name="reload")

    async def _requested(self) -> None:
        while self._reasons and not self.worker.stopping:
            reason = ", ".join(dict.fromkeys(self._reasons))
            self._reasons.clear()
            files, self._files = self._files, False
            await self.reload(reason, files=files)

    async def _watch(self) -> None:
        watcher = ConfigWatcher(list(self.paths), interval=self.interval)
        await watcher.prime()
        async for changed in watcher.changes():
            self.request("changed: " + ", ".join(changed))

    async def reload(self, reason: str = "reload", *, files: bool = True) -> bool:
        """Load the configuration again and apply it if it is valid. Returns
        whether a new configuration was applied; never raises (problems are
        logged, one line each, and the running rules stay)."""
        log.info("reloading the configuration (%s)", reason)
        worker = self.worker
        try:
            config = await self.provider.load(files)
            if worker.config_overrides is not None:  # as at start-up (engine run's options)
                config = worker.config_overrides(config)
        except ConfigError as e:
            worker.metrics.reload_result(False)
            for issue in e.issues:
                # One line each (a rule's syntax error also draws a caret
                # under the clause: its first line already names the column).
                log.error("reload rejected: %s", str(issue).splitlines()[0])
            log.error("reload rejected: %d problem(s); the running configuration is kept",
                      len(e.issues))
            return False
        except ReloadRefused as e:
            worker.metrics.reload_result(False)
            log.error("reload refused: %s", e)
            return False
        except Exception as e:  # e.g. the API store unreachable
            worker.metrics.reload_result(False)
            log.error("reload failed: %s: %s; the running configuration is kept",
                      type(e).__name__, e)
            return False
        applied = await self.apply(config)
        accepted = worker.config is config  # applied, or nothing to change
        if accepted:
            self.provider.accept()
        worker.metrics.reload_result(accepted)
        return applied

    async def apply(self, config: EngineConfig) -> bool:
        """Have the worker swap in `config`, unless it changes a restart-only
        section: applying the rest would run new rules against old sources
        or stores - half a configuration (a cut-off file loses its tail)."""
        differ = [k for k in RESTART_SECTIONS if restart_only(config, k) != self._running[k]]
        if differ:
            log.error("reload refused: the new configuration changes %s, which only a "
                      "restart applies; nothing was applied, the running configuration is "
                      "kept (undo that change to reload, or restart)", ", ".join(differ))
            return False
        return await self.worker.apply(config)
