"""The forwarding worker's lifecycle: runs the sources, rule set and actions
built from an `EngineConfig` (engine.runtime.assembly), swaps in a reloaded
configuration (engine.runtime.reloader decides when and what), and shuts
down gracefully.

Lifecycle: open destinations (a destination that cannot be used at all stops
start-up) -> start sources -> serve metrics, ready -> consume until every
source ends (finite sources) or `stop()` (SIGTERM/SIGINT): intake stops, the
batches in flight drain for up to `shutdown_timeout` seconds and are acked
(committed); what did not drain in time stays unacked and is redelivered by
the source on the next start (at-least-once).

The swap (`apply()`, for a configuration the reloader accepted): new and
changed actions are opened first, then the rule set and routes are swapped
in one step (a batch is routed entirely by the old or entirely by the new
rules), and actions that were removed or changed are closed once every batch
routed by an older rule set is settled - a removed action with a backlog
delivers it first. Unchanged actions keep running (same queue, same order).
Changed flow-control policies apply at the swap (new token buckets for
every action).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.config import EngineConfig
from engine.config.models import parse_listen
from engine.destinations.base import Record
from engine.policies import Backlog, FlowControl
from engine.runtime.actions import ActionRunner, Parcel, expire_periodically
from engine.runtime.assembly import (
    RunnerSpec,
    active_rule_ids,
    active_rules,
    build_ruleset,
    build_source,
    durable_state,
    make_runner,
    runner_specs,
    source_context,
    split_routes,
)
from engine.runtime.deadletter import DeadLetters
from engine.runtime.memory import ScheduledCollection
from engine.runtime.metrics import Metrics
from engine.runtime.pipeline import Generation, Pipeline
from engine.runtime.reloader import ConfigProvider, Reloader, RuleFiles, reload_poll
from engine.sources import Source
from engine.sources.device_registry import Registry
from engine.sources.listener_auth import authenticator_from_config, server_ssl_context

__all__ = ["Worker", "WorkerOptions", "build_ruleset", "build_source"]

log = logging.getLogger(__name__)

RETIRE_POLL = 0.2  # seconds between checks of a removed action's backlog
BACKLOG_POLL = 0.1  # seconds between checks while waiting for the backlog to drain


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker runs, beyond its configuration (who runs it decides)."""

    deliver: bool = True
    """False: evaluate and count, deliver nothing, keep no state (a dry run)."""
    serve_metrics: bool = True
    """Serve the configuration's `metrics:` endpoint."""
    reload_interval: float = field(default_factory=reload_poll)
    """Seconds between polls of the rule files (`ENGINE_RELOAD_POLL`); 0: SIGHUP only."""
    drain_backlog_at_end: bool = False
    """Once the sources ended, wait for the backlog to drain (`engine replay`)."""
    adopt_backlogs: tuple[str, ...] = ()
    """Backlog databases of other state directories to take over at start
    (left by a different number of workers; `Backlog(adopt=...)`)."""


class Worker:
    def __init__(self, ruleset, runners: Sequence[ActionRunner], sources: Sequence[Source], *,
                 metrics: Metrics | None = None, dead_letters: DeadLetters | None = None,
                 metrics_listen: str | None = None, metrics_path: str = "/metrics",
                 shutdown_timeout: float = 30.0, rule_keys: Sequence[str] = (),
                 options: WorkerOptions | None = None, config: EngineConfig | None = None,
                 backlog: Backlog | None = None, flow: FlowControl | None = None) -> None:
        """The parts built (see `from_config`, the usual way in): `config`
        is what they were built from (None: no reload), `backlog` and
        `flow` the delivery policies the runners were given."""
        self.options = options or WorkerOptions()
        self.metrics = metrics or Metrics()
        self.dead_letters = dead_letters or DeadLetters()
        self.runners = list(runners)   # the actions of the current rule set
        self.sources = list(sources)
        routes, self.error_routes = split_routes(rule_keys, self.runners)
        self.dead_letters.on_stored = self._to_error_actions
        self.pipeline = Pipeline(ruleset, routes, metrics=self.metrics,
                                 dead_letters=self.dead_letters)
        self.metrics.watch_sources(self.sources)
        self.metrics_listen = metrics_listen
        self.metrics_path = metrics_path
        self.shutdown_timeout = shutdown_timeout  # a reload may change it
        self.backlog = backlog
        self.flow = flow or FlowControl()
        self.config = config                      # the running configuration
        self.registry: Registry | None = None     # the sources' device registry (from_config)
        self.reloader: Reloader | None = None     # see enable_reload
        self.reloads = 0                          # applied reloads
        self.stopping = False
        self.timed_out = False
        self.unconfigured_dead_lettered = 0   # backlog entries of removed actions, at start
        self._tasks: list[asyncio.Task[None]] = []
        self._abort_timer: asyncio.TimerHandle | None = None
        self._stop_deadline: float | None = None  # monotonic; set by stop()
        specs = runner_specs(config, self.options.deliver) if config is not None else {}
        self._specs: dict[str, RunnerSpec] = {r.action_id: specs[r.action_id]
                                              for r in self.runners if r.action_id in specs}
        # Command-line overrides (`engine run --metrics-listen/--state-dir`),
        # applied by the reloader to every reloaded configuration as at start-up.
        self.config_overrides: Callable[[EngineConfig], EngineConfig] | None = None
        self._open: list[ActionRunner] = []   # open runners: current and retiring
        self._reload_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(cls, config: EngineConfig, *, metrics: Metrics | None = None,
                    sources: Sequence[Source] | None = None, actions: bool = True,
                    serve_metrics: bool = True,
                    config_paths: Sequence[str | os.PathLike[str]] | None = None,
                    options: WorkerOptions | None = None,
                    provider: ConfigProvider | None = None,
                    extra_sources: Sequence[Source] = ()) -> Worker:
        """`sources` replaces the configured ones; `extra_sources` run
        besides them (e.g. the API store's registry notifications). `options` (or, short,
        `actions=False`: evaluate and count without delivering, a dry run;
        `serve_metrics=False`). Reload: `config_paths`, the files `config`
        was loaded from, watched and reloaded while running; or any
        `provider` of the configuration (rule files plus the API store)."""
        if options is None:
            options = WorkerOptions(deliver=actions, serve_metrics=serve_metrics)
        metrics = metrics or Metrics()
        dead_letters, backlog = durable_state(config, options.deliver, options.adopt_backlogs)
        flow = FlowControl(config.flowcontrol_policies)
        specs = runner_specs(config, options.deliver)
        runners = [make_runner(spec, metrics, dead_letters, flow, backlog)
                   for spec in specs.values()]
        context = source_context(config, dead_letters)
        if sources is None:
            sources = [build_source(e, batch_size=config.worker.batch_size, metrics=metrics,
                                    context=context)
                       for e in config.sources]
        sources = [*sources, *extra_sources]
        m = config.metrics if options.serve_metrics else None
        worker = cls(build_ruleset(config), runners, sources, metrics=metrics,
                     dead_letters=dead_letters, metrics_listen=m.listen if m else None,
                     metrics_path=m.path if m else "/metrics",
                     shutdown_timeout=config.worker.shutdown_timeout,
                     rule_keys=active_rule_ids(config), options=options, config=config,
                     backlog=backlog, flow=flow)
        worker.registry = context.registry
        if backlog is not None:
            metrics.watch_backlog(backlog)
        if provider is None and config_paths is not None:
            provider = RuleFiles(config_paths, config)
        if provider is not None:
            worker.enable_reload(provider)
        return worker

    def enable_reload(self, provider: ConfigProvider) -> Reloader:
        """Reload from `provider` while running (SIGHUP, file changes, API
        change events all go through `reloader.request`)."""
        assert self.config is not None, "a worker built from a configuration"
        self.reloader = Reloader(self, provider, interval=self.options.reload_interval)
        return self.reloader

    def enable_file_reload(self, paths: Sequence[str | os.PathLike[str]]) -> Reloader:
        """Reload from the rule files `paths` (what `config` was loaded from)."""
        assert self.config is not None, "a worker built from a configuration"
        return self.enable_reload(RuleFiles(paths, self.config))

    async def run(self, *, freeze_gc: bool = False) -> None:
        """Run until every source ended or `stop()` drained them. Raises when
        start-up fails or a source fails (after shutting down the rest).
        `freeze_gc`: a process-wide setting, for a process of its own
        (`main.serve`, benchmarks): freeze what start-up created."""
        metrics_runner = None
        collection: ScheduledCollection | None = None
        started: list[Source] = []
        dead_letters_open = backlog_open = False
        expiry = None
        try:
            await self.dead_letters.open()
            dead_letters_open = True
            if self.backlog is not None:  # before the actions: they drain it first
                await self.backlog.open()
                backlog_open = True
                self.unconfigured_dead_lettered = await self.backlog.settle_unconfigured()
            for runner in self.runners:
                await runner.open()
                self._open.append(runner)
            if self.backlog is not None:
                expiry = asyncio.create_task(
                    expire_periodically(self.backlog, lambda: self._open), name="backlog expiry")
            for source in self.sources:
                await source.start()
                started.append(source)
            if self.metrics_listen:
                host, port = parse_listen(self.metrics_listen)
                m = self.config.metrics if self.config is not None else None
                metrics_runner = await self.metrics.serve(
                    host, port, self.metrics_path,
                    auth=authenticator_from_config(m.auth) if m else None,
                    ssl_context=server_ssl_context(m.tls) if m else None)
            self.metrics.ready = not self.stopping
            if freeze_gc:
                # Modules, compiled rules, clients: alive for the whole run,
                # frozen; the rest collected on a timer (runtime/memory.py).
                collection = ScheduledCollection()
                collection.start()
            self._tasks = [asyncio.create_task(self.pipeline.consume(s), name=f"source {s.name}")
                           for s in self.sources]
            if self.reloader is not None:
                self.reloader.start()
            failure = await self._wait_sources()
            if failure is not None:
                raise failure
            if self.error_routes:
                await self._error_actions_settled()
            # An in-memory backlog (runners built without one) is gone with
            # the runner: the sources ended, so it is delivered first.
            if (self.options.drain_backlog_at_end or any(r.owns_backlog for r in self._open)) \
                    and not self.stopping:
                await self.drain_backlog()
        finally:
            self.metrics.ready = False
            if collection is not None:
                collection.stop()
            if self._abort_timer is not None:
                self._abort_timer.cancel()
            if self.reloader is not None:
                self.reloader.stop()
            for task in [*self._tasks, *self._background, expiry]:
                if task is not None:
                    task.cancel()
            # A drain step under way may finish within the shutdown time
            # left (cut off, its records would be sent again at the next start).
            deadline = (time.monotonic() if self.timed_out else self._stop_deadline
                        or time.monotonic() + self.shutdown_timeout)
            async with self._reload_lock:  # not while a reload opens actions
                for runner in self._open:
                    await runner.close(grace=max(0.0, deadline - time.monotonic()))
                self._open.clear()
            for source in started:
                await source.close()
            if backlog_open:
                await self.backlog.close()
            if dead_letters_open:
                await self.dead_letters.close()
            if metrics_runner is not None:
                await metrics_runner.cleanup()

    async def _wait_sources(self) -> BaseException | None:
        pending = set(self._tasks)
        failure = None
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.cancelled():
                    continue
                exc = task.exception()
                if exc is not None and failure is None:
                    log.error("%s failed: %s: %s", task.get_name(), type(exc).__name__, exc)
                    failure = exc
                    self.stop()  # one source failing stops the worker, gracefully
        return failure

    def backlog_size(self) -> int:
        """Records in the backlog now, over all actions (and the in-memory
        backlogs of runners built without one)."""
        own = sum(r.backlog.size(r.action_id)[0] for r in self._open if r.owns_backlog)
        if self.backlog is None:
            return own
        return own + sum(self.backlog.size(a)[0] for a in self.backlog.pending_actions())

    async def drain_backlog(self) -> int:
        """Wait until the backlog is empty, as long as it shrinks: give up
        after `shutdown_timeout` seconds in which no record left it (the
        destination is down), or on stop(). Returns the records left."""
        left = self.backlog_size()
        if left:
            log.info("sources done; waiting for the backlog to drain: %d record(s)", left)
        progress = time.monotonic()
        while left and not self.stopping:
            await asyncio.sleep(BACKLOG_POLL)
            now = self.backlog_size()
            if now < left:
                left, progress = now, time.monotonic()
            elif time.monotonic() - progress > self.shutdown_timeout:
                where = self.backlog.path if self.backlog is not None else "memory"
                log.warning("backlog: %d record(s) not delivered in %gs without progress; they "
                            "stay in %s", left, self.shutdown_timeout, where)
                break
        return left

    def stop(self) -> None:
        """Stop intake and drain (safe to call from a signal handler, twice)."""
        if self.stopping:
            return
        self.stopping = True
        self.metrics.ready = False
        log.info("stopping: intake closed, draining (at most %gs)", self.shutdown_timeout)
        for source in self.sources:
            source.stop()
        loop = asyncio.get_running_loop()
        self._stop_deadline = time.monotonic() + self.shutdown_timeout
        self._abort_timer = loop.call_later(self.shutdown_timeout, self.abort)

    def abort(self) -> None:
        """Stop waiting for the drain: unacked batches are redelivered later."""
        unsettled = self.metrics.totals.inflight
        log.warning("shutdown timeout: %d record(s) not delivered; their batches stay unacked "
                    "and will be redelivered", unsettled)
        self.timed_out = True
        for task in self._tasks:
            task.cancel()

    # -- hot reload -------------------------------------------------------------

    def request_reload(self, reason: str, *, files: bool = True) -> None:
        """Reload soon (see Reloader.request); nothing without a reloader."""
        if self.reloader is not None:
            self.reloader.request(reason, files=files)

    async def reload(self, reason: str = "reload", *, files: bool = True) -> bool:
        """Reload now (see Reloader.reload); returns whether a new
        configuration was applied."""
        if self.reloader is None:
            log.warning("reload (%s) ignored: this worker was not started from rule files",
                        reason)
            return False
        return await self.reloader.reload(reason, files=files)

    async def apply(self, config: EngineConfig) -> bool:
        """Swap in a validated configuration the reloader accepted (see the
        module docstring). Returns whether anything changed."""
        async with self._reload_lock:
            if self.stopping:
                return False
            try:
                return await self._apply(config)
            except Exception as e:
                log.error("reload failed: %s: %s; the running configuration is kept",
                          type(e).__name__, e)
                return False

    async def _apply(self, config: EngineConfig) -> bool:
        old = self.config
        assert old is not None
        if config.registry != old.registry and self.registry is not None:
            self.registry.replace(config.registry)
            log.info("reload: device registry replaced (%d product(s), %d device(s))",
                     len(self.registry.products), len(self.registry.devices))
        if all(getattr(config, k) == getattr(old, k)
               for k in ("rules", "actions", "worker", "flowcontrol_policies")):
            log.info("reload: rules, actions and worker settings unchanged")
            self.config = config
            return False
        ruleset = await asyncio.to_thread(build_ruleset, config)
        specs = runner_specs(config, self.options.deliver)
        flow = self.flow  # changed policies: new buckets, for every runner at the swap
        if config.flowcontrol_policies != old.flowcontrol_policies:
            flow = FlowControl(config.flowcontrol_policies)
        current = {r.action_id: r for r in self.runners}
        runners: list[ActionRunner] = []
        opened: list[ActionRunner] = []
        for action_id, spec in specs.items():
            if self._specs.get(action_id) == spec and action_id in current:
                runners.append(current[action_id])
                continue
            runner = make_runner(spec, self.metrics, self.dead_letters, flow, self.backlog)
            try:
                await runner.open()  # before the swap: a sink that cannot open stops the reload
            except BaseException as e:
                for r in opened:
                    await r.close()
                if not isinstance(e, Exception):
                    raise  # cancelled (shutdown)
                log.error("reload rejected: action %s cannot be opened: %s: %s; the running "
                          "configuration is kept", action_id, type(e).__name__, e)
                return False
            opened.append(runner)
            runners.append(runner)
        routes, error_routes = split_routes(active_rule_ids(config), runners)
        kept = set(map(id, runners))
        retired = [r for r in self.runners if id(r) not in kept]

        # The swap: nothing awaits between these lines.
        previous = self.pipeline.swap(ruleset, routes)
        self.error_routes = error_routes
        for r in self._open:
            if id(r) in kept:
                continue
            if r.action_id in specs:  # replaced: the new runner drains the action's backlog
                r.stop_draining()
            else:
                r.removed = True
        if flow is not self.flow:
            self.flow = flow
            for r in runners:
                r.limiter = flow.limiter_for(r.rule_id, r.action_id, r.sink.channel)
        self._open.extend(opened)
        self.runners = runners
        self._specs = specs
        self.config = config
        self.shutdown_timeout = config.worker.shutdown_timeout
        self.reloads += 1

        log.info("reload applied (rule set %d): rules %s; actions %s",
                 self.pipeline.generation.number,
                 _diff(active_rules(old), active_rules(config)),
                 _diff(runner_specs(old, self.options.deliver), specs))
        if retired:
            task = asyncio.create_task(self._retire(previous, retired), name="retire actions")
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return True

    async def _error_actions_settled(self) -> None:
        """Sources done: give the error actions the copies they were handed
        (no source batch waits for them), within `shutdown_timeout`."""
        deadline = time.monotonic() + self.shutdown_timeout
        while (self._background or self.metrics.totals.inflight) \
                and time.monotonic() < deadline and not self.timed_out:
            await asyncio.sleep(0.05)

    def _to_error_actions(self, entries: list[dict[str, Any]]) -> None:
        """Hand stored dead letters of a rule's actions to the rule's error
        actions (each entry as one record). They are stored already, so this
        is a copy: it is queued without holding up the action that failed,
        and an error action's own dead letters go nowhere further."""
        per_runner: dict[ActionRunner, list[Record]] = {}
        for entry in entries:
            targets = self.error_routes.get(entry.get("rule_id"))  # type: ignore[arg-type]
            if not targets or any(t.action_id == entry.get("action_id") for t in targets):
                continue
            for target in targets:
                per_runner.setdefault(target, []).append(Record(
                    entry, entry.get("key"), None, target.rule_id, target.action_id))
        for target, records in per_runner.items():
            parcel = Parcel(records, _nothing, time.monotonic())
            task = asyncio.create_task(target.submit(parcel), name="error action")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _retire(self, previous: Generation, runners: list[ActionRunner]) -> None:
        """Close actions a reload removed or replaced, once every batch routed
        by an older rule set is settled (delivered, in the backlog or
        dead-lettered). A removed action with a backlog first delivers it to
        its destination: the records were routed there, and the rename of
        an action must not strand them (see docs/RELIABILITY.md)."""
        await self.pipeline.drained(previous)
        draining = [r for r in runners if r.removed and r.draining and self._left(r)]
        closing = [r for r in runners if r not in draining]
        async with self._reload_lock:
            for r in closing:
                if r in self._open:
                    self._open.remove(r)
                    await r.close()
        if closing:
            log.info("reload: closed %d replaced or removed action(s): %s", len(closing),
                     ", ".join(r.action_id for r in closing))
        await asyncio.gather(*(self._drain_then_close(r) for r in draining))

    def _left(self, runner: ActionRunner) -> int:
        return runner.backlog.size(runner.action_id)[0]

    async def _drain_then_close(self, runner: ActionRunner) -> None:
        log.warning("action %s was removed by a reload: delivering the %d record(s) of its "
                    "backlog to its destination before closing it (what a stop leaves there "
                    "is dead-lettered at the next start)", runner.action_id, self._left(runner))
        while runner.draining and self._left(runner) and runner in self._open:
            await asyncio.sleep(RETIRE_POLL)
        async with self._reload_lock:
            if runner not in self._open:
                return  # closed by the shutdown
            self._open.remove(runner)
            await runner.close()
        if runner.draining:
            log.info("action %s (removed): backlog delivered, action closed", runner.action_id)
        else:
            log.info("action %s (removed): closed; the action configured again under this id "
                     "delivers its backlog", runner.action_id)


def _diff(old: dict, new: dict) -> str:
    added = sorted(k for k in new if k not in old)
    removed = sorted(k for k in old if k not in new)
    changed = sorted(k for k in new if k in old and new[k] != old[k])
    parts = [f"{sign}{len(ids)} ({', '.join(ids[:5])}{', …' if len(ids) > 5 else ''})"
             if ids else f"{sign}0" for sign, ids in (("+", added), ("-", removed),
                                                     ("~", changed))]
    return " ".join(parts)


def _nothing() -> None:
    """The settle callback of error-action parcels: no source batch waits on them."""
