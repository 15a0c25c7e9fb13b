"""The forwarding worker: builds sources, rule set, actions and pipeline from
an `EngineConfig`, runs them, and shuts down gracefully.

Lifecycle: open destinations (a destination that cannot be used at all stops
start-up) -> start sources -> serve metrics, ready -> consume until every
source ends (finite sources) or `stop()` (SIGTERM/SIGINT): intake stops, the
batches in flight drain for up to `shutdown_timeout` seconds and are acked
(committed); what did not drain in time stays unacked and is redelivered by
the source on the next start (at-least-once).

Hot reload (`reload()`, triggered by SIGHUP or a change of the rule files):
the files are loaded and validated again (`load_config`, no side effects);
only a valid configuration is applied. New and changed actions are opened
first, then the rule set and routes are swapped in one step (a batch is
routed entirely by the old or entirely by the new rules), and actions that
were removed or changed are closed once every batch routed by an older rule
set is settled. Unchanged actions keep running (same queue, same order).
Changed flow-control policies apply at the swap (new token buckets for
every action). Sources, the metrics endpoint, dead letters and backlog
policies are not restarted: changes there are logged and need a restart.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Sequence

from engine import RuleSpec, compile_ruleset
from engine.config import Action, ConfigError, EngineConfig, SourceEntry, load_config
from engine.config.devices import Registry, RegistryConfig
from engine.config.models import parse_listen
from engine.destinations import CHANNELS
from engine.policies import Backlog, FlowControl
from engine.runtime.actions import ActionRunner, expire_periodically
from engine.runtime.deadletter import DeadLetters, FileDeadLetters, dead_letters_from_config
from engine.runtime.metrics import Metrics
from engine.runtime.pipeline import Generation, Pipeline
from engine.runtime.sources import Source
from engine.runtime.watch import ConfigWatcher

log = logging.getLogger(__name__)


def build_source(entry: SourceEntry, *, batch_size: int = 500,
                 registry: RegistryConfig | None = None) -> Source:
    o = entry.options
    if entry.kind == "mqtt":
        return o.build(registry=Registry(registry))
    if entry.kind == "kafka":
        from engine.runtime.sources.kafka import KafkaSource, librdkafka_config

        return KafkaSource(bootstrap_servers=o.bootstrap_servers, topics=o.topics,
                           group_id=o.group_id, batch_size=o.max_batch,
                           auto_offset_reset=o.auto_offset_reset,
                           session_timeout_ms=o.session_timeout_ms,
                           heartbeat_interval_ms=max(o.session_timeout_ms // 3, 100),
                           config=librdkafka_config(o))
    if entry.kind == "amqp":
        from engine.runtime.sources.amqp import AmqpSource

        return AmqpSource(url=o.url.get_secret_value(), queue=o.queue, prefetch=o.prefetch,
                          batch_size=batch_size)
    if entry.kind == "http" and o.mode == "device_api":
        from engine.runtime.sources.device_api import DeviceApiSource, server_ssl_context

        tls = server_ssl_context(o.tls_cert_file, o.tls_key_file) if o.tls_cert_file else None
        return DeviceApiSource(registry=Registry(registry), listen=o.listen,
                               token_ttl=o.token_ttl, ssl_context=tls,
                               max_inflight=o.max_inflight)
    if entry.kind == "http":
        from engine.runtime.sources.http import HttpSource

        return HttpSource(listen=o.listen, path=o.path, max_inflight=o.max_inflight,
                          max_body=o.max_body_bytes)
    if entry.kind == "file":
        from engine.runtime.sources.file import FileSource

        return FileSource(o.path, batch_size=batch_size)
    from engine.runtime.sources.simulator import SimulatorSource

    kinds = [(k.resource, k.event) for k in o.kinds] if o.kinds else None
    return SimulatorSource(rate=o.rate, devices=o.devices, seed=o.seed or 0, count=o.count,
                           duration=o.duration, kinds=kinds, batch_size=batch_size)


def build_ruleset(config: EngineConfig):
    """The compiled rule set of the active rules (keys: rule ids)."""
    return compile_ruleset([
        RuleSpec(key=r.rule_id, select=r.select, where=r.where, resource=r.subject.resource,
                 event=r.subject.event, app_id=r.app_id if r.app_type == "APP" else None)
        for r in config.rules if r.active])


# What makes a running action reusable across a reload: same action, same
# writer settings.
RunnerSpec = tuple[Action, int, int]


def _runner_spec(action: Action, config: EngineConfig) -> RunnerSpec:
    return (action, config.worker.batch_size, config.worker.linger_ms)


# Sections a reload does not apply (the running ones are kept).
RESTART_SECTIONS = ("sources", "metrics", "dead_letter", "backlog_policies", "registry")


class Worker:
    def __init__(self, ruleset, runners: Sequence[ActionRunner], sources: Sequence[Source], *,
                 metrics: Metrics | None = None, dead_letters: DeadLetters | None = None,
                 metrics_listen: str | None = None, metrics_path: str = "/metrics",
                 shutdown_timeout: float = 30.0, rule_keys: Sequence[str] = ()) -> None:
        self.metrics = metrics or Metrics()
        self.dead_letters = dead_letters or DeadLetters()
        self.runners = list(runners)   # the actions of the current rule set
        self.sources = list(sources)
        for s in self.sources:  # sources that reject input themselves (mqtt)
            if hasattr(s, "use_dead_letters"):
                s.use_dead_letters(self.dead_letters, self.metrics)
        routes: dict[str, list[ActionRunner]] = {k: [] for k in rule_keys}
        for r in self.runners:
            routes.setdefault(r.rule_id, []).append(r)
        self.pipeline = Pipeline(ruleset, routes, metrics=self.metrics,
                                 dead_letters=self.dead_letters)
        self.metrics_listen = metrics_listen
        self.metrics_path = metrics_path
        self.shutdown_timeout = shutdown_timeout
        self._tasks: list[asyncio.Task[None]] = []
        self._abort_timer: asyncio.TimerHandle | None = None
        self.stopping = False
        self.timed_out = False
        # Process-wide GC setting, set by `main.serve` (engine run): freeze
        # what start-up created so full collections skip it (see run()).
        self.freeze_gc = False
        # Delivery policies (set by from_config): the durable backlog and flow control.
        self.backlog: Backlog | None = None
        self.flow = FlowControl()
        # Hot reload (set by from_config; `config_paths` by whoever knows the files).
        self.config: EngineConfig | None = None
        self.config_paths: list[str] | None = None
        self.reload_interval = float(os.environ.get("ENGINE_RELOAD_POLL", "1") or 0)
        self.reloads = 0                      # applied reloads
        # Management API (engine.runtime.managed): the running config is the
        # rule files (`file_config`) plus the projects of `store`.
        self.store = None
        self.file_config: EngineConfig | None = None
        self._reload_files = False
        self._deliver = True
        self._specs: dict[str, RunnerSpec] = {}
        self._running: dict[str, object] = {}  # sections a reload does not change
        self._open: list[ActionRunner] = []   # open runners: current and retiring
        self._reload_lock = asyncio.Lock()
        self._reload_reasons: list[str] = []
        self._reloader: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(cls, config: EngineConfig, *, metrics: Metrics | None = None,
                    sources: Sequence[Source] | None = None, actions: bool = True,
                    serve_metrics: bool = True,
                    config_paths: Sequence[str | os.PathLike[str]] | None = None) -> Worker:
        """`sources` replaces the configured ones; `actions=False` evaluates
        and counts without delivering (a dry run). `config_paths`: the files
        `config` was loaded from, watched and reloaded while running."""
        metrics = metrics or Metrics()
        dead_letters, backlog = _durable_state(config) if actions else (
            dead_letters_from_config(config.dead_letter), None)
        flow = FlowControl(config.flowcontrol_policies)
        w = config.worker
        active = {r.rule_id for r in config.rules if r.active}
        specs = {a.action_id: _runner_spec(a, config) for a in config.actions
                 if actions and a.rule_id in active}
        runners = [_make_runner(spec, metrics, dead_letters, flow, backlog)
                   for spec in specs.values()]
        if sources is None:
            sources = [build_source(e, batch_size=w.batch_size, registry=config.registry)
                       for e in config.sources]
        m = config.metrics if serve_metrics else None
        worker = cls(build_ruleset(config), runners, sources, metrics=metrics,
                     dead_letters=dead_letters, metrics_listen=m.listen if m else None,
                     metrics_path=m.path if m else "/metrics",
                     shutdown_timeout=w.shutdown_timeout, rule_keys=sorted(active))
        worker.config = config
        worker.backlog, worker.flow = backlog, flow
        worker._running = {k: getattr(config, k) for k in RESTART_SECTIONS}
        worker._deliver = actions
        worker._specs = specs
        if config_paths is not None:
            worker.config_paths = [os.fspath(p) for p in config_paths]
        return worker

    async def run(self) -> None:
        """Run until every source ended or `stop()` drained them. Raises when
        start-up fails or a source fails (after shutting down the rest)."""
        metrics_runner = None
        started: list[Source] = []
        dead_letters_open = backlog_open = False
        watcher = expiry = None
        try:
            await self.dead_letters.open()
            dead_letters_open = True
            if self.backlog is not None:  # before the actions: they drain it first
                await self.backlog.open()
                backlog_open = True
                await self.backlog.settle_unconfigured()
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
                metrics_runner = await self.metrics.serve(host, port, self.metrics_path)
            self.metrics.ready = not self.stopping
            if self.freeze_gc:
                # Modules, compiled rules, clients: alive for the whole run.
                # Frozen, they are no longer scanned by every full collection
                # (which otherwise paused the loop for 100-200 ms: the p90/p99
                # of the delivery latency, see benchmarks/bench_pipeline.py).
                gc.freeze()
            self._tasks = [asyncio.create_task(self.pipeline.consume(s), name=f"source {s.name}")
                           for s in self.sources]
            if self.config_paths and self.config is not None and self.reload_interval > 0:
                watcher = asyncio.create_task(self._watch(), name="config watcher")
            failure = await self._wait_sources()
            if failure is not None:
                raise failure
        finally:
            self.metrics.ready = False
            if self._abort_timer is not None:
                self._abort_timer.cancel()
            for task in [*self._tasks, *self._background, watcher, self._reloader, expiry]:
                if task is not None:
                    task.cancel()
            async with self._reload_lock:  # not while a reload opens actions
                for runner in self._open:
                    await runner.close()
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
        """Reload soon (safe from a signal handler); requests that arrive
        while a reload runs are merged into one more reload. `files=False`
        (a change in the API store): keep the last loaded rule files."""
        if self.stopping:
            return
        self._reload_reasons.append(reason)
        self._reload_files |= files
        if self._reloader is None or self._reloader.done():
            self._reloader = asyncio.create_task(self._reload_requested(), name="reload")

    async def _reload_requested(self) -> None:
        while self._reload_reasons and not self.stopping:
            reason = ", ".join(dict.fromkeys(self._reload_reasons))
            self._reload_reasons.clear()
            files, self._reload_files = self._reload_files, False
            await self.reload(reason, files=files)

    async def _watch(self) -> None:
        assert self.config_paths is not None
        watcher = ConfigWatcher(self.config_paths, interval=self.reload_interval)
        await watcher.prime()
        async for changed in watcher.changes():
            self.request_reload("changed: " + ", ".join(changed))

    async def reload(self, reason: str = "reload", *, files: bool = True) -> bool:
        """Load the configuration files again (unless `files=False`), add
        the API store's projects (when there is a store) and apply the result
        if it is valid. Returns whether a new configuration was applied; never
        raises (problems are logged, one line each, and the running rules stay)."""
        if self.config is None or not (self.config_paths or self.store is not None):
            log.warning("reload (%s) ignored: this worker was not started from rule files",
                        reason)
            return False
        log.info("reloading the configuration (%s)", reason)
        file_config = self.file_config or self.config
        try:
            if files and self.config_paths:
                file_config = await asyncio.to_thread(load_config, self.config_paths)
            config = file_config
            if self.store is not None:
                from engine.api.effective import effective_config

                config = await effective_config(file_config, self.store)
        except ConfigError as e:
            for issue in e.issues:
                # One line each (a rule's syntax error also draws a caret
                # under the clause: its first line already names the column).
                log.error("reload rejected: %s", str(issue).splitlines()[0])
            log.error("reload rejected: %d problem(s); the running configuration is kept",
                      len(e.issues))
            return False
        except Exception as e:  # e.g. the API store unreachable (load_config raises ConfigError)
            log.error("reload failed: %s: %s; the running configuration is kept",
                      type(e).__name__, e)
            return False
        applied = await self.apply(config)
        if self.config is config:  # accepted (applied, or nothing to change)
            self.file_config = file_config
        return applied

    async def apply(self, config: EngineConfig) -> bool:
        """Swap in a validated configuration (see the module docstring)."""
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
        for section in RESTART_SECTIONS:
            if getattr(config, section) != self._running.get(section, getattr(old, section)):
                log.warning("reload: '%s' differs from the running one and is not applied: "
                            "changing %s needs a restart", section, section)
        if all(getattr(config, k) == getattr(old, k)
               for k in ("rules", "actions", "worker", "flowcontrol_policies")):
            log.info("reload: rules, actions and worker settings unchanged")
            self.config = config
            return False
        ruleset = await asyncio.to_thread(build_ruleset, config)
        active = {r.rule_id for r in config.rules if r.active}
        specs = {a.action_id: _runner_spec(a, config) for a in config.actions
                 if self._deliver and a.rule_id in active}
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
            runner = _make_runner(spec, self.metrics, self.dead_letters, flow, self.backlog)
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
        routes: dict[str, list[ActionRunner]] = {k: [] for k in sorted(active)}
        for r in runners:
            routes[r.rule_id].append(r)
        kept = set(map(id, runners))
        retired = [r for r in self.runners if id(r) not in kept]

        # The swap: nothing awaits between these lines.
        previous = self.pipeline.swap(ruleset, routes)
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
                 _diff({r.rule_id: r for r in old.rules if r.active},
                       {r.rule_id: r for r in config.rules if r.active}),
                 _diff(self._specs_of(old), specs))
        if retired:
            task = asyncio.create_task(self._retire(previous, retired), name="retire actions")
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return True

    def _specs_of(self, config: EngineConfig) -> dict[str, RunnerSpec]:
        active = {r.rule_id for r in config.rules if r.active}
        return {a.action_id: _runner_spec(a, config) for a in config.actions
                if self._deliver and a.rule_id in active}

    async def _retire(self, previous: Generation, runners: list[ActionRunner]) -> None:
        """Close actions a reload removed or replaced, once every batch routed
        by an older rule set is settled (delivered or dead-lettered)."""
        await self.pipeline.drained(previous)
        async with self._reload_lock:
            for r in runners:
                if r in self._open:
                    self._open.remove(r)
                    await r.close()
        log.info("reload: closed %d replaced or removed action(s): %s", len(runners),
                 ", ".join(r.action_id for r in runners))


def _make_runner(spec: RunnerSpec, metrics: Metrics, dead_letters: DeadLetters,
                 flow: FlowControl, backlog: Backlog | None) -> ActionRunner:
    action, batch_size, linger_ms = spec
    return ActionRunner(action.action_id, action.rule_id, CHANNELS[action.channel](action.detail),
                        metrics=metrics, dead_letters=dead_letters, batch_size=batch_size,
                        linger=linger_ms / 1000,
                        limiter=flow.limiter_for(action.rule_id, action.action_id, action.channel),
                        backlog=backlog)


def _durable_state(config: EngineConfig) -> tuple[DeadLetters, Backlog]:
    """The dead-letter store and the backlog of a delivering worker. Without
    `dead_letter:` the dead letters go to a file in `worker.state_dir` rather
    than nowhere: nothing the engine accepted is dropped silently."""
    state_dir = config.worker.state_dir
    os.makedirs(state_dir, exist_ok=True)
    if config.dead_letter is None:
        path = os.path.join(state_dir, "dead-letters.jsonl")
        log.info("dead letters go to %s (no dead_letter configured)", path)
        dead_letters: DeadLetters = FileDeadLetters(path)
    else:
        dead_letters = dead_letters_from_config(config.dead_letter)
    backlog = Backlog(os.path.join(state_dir, "backlog.db"), dead_letters,
                      config.backlog_policies)
    return dead_letters, backlog


def _diff(old: dict, new: dict) -> str:
    added = sorted(k for k in new if k not in old)
    removed = sorted(k for k in old if k not in new)
    changed = sorted(k for k in new if k in old and new[k] != old[k])
    parts = [f"{sign}{len(ids)} ({', '.join(ids[:5])}{', …' if len(ids) > 5 else ''})"
             if ids else f"{sign}0" for sign, ids in (("+", added), ("-", removed),
                                                     ("~", changed))]
    return " ".join(parts)
