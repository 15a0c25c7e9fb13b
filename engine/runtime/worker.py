"""The forwarding worker: builds sources, rule set, actions and pipeline from
an `EngineConfig`, runs them, and shuts down gracefully.

Lifecycle: open destinations (a destination that cannot be used at all stops
start-up) -> start sources -> serve metrics, ready -> consume until every
source ends (finite sources) or `stop()` (SIGTERM/SIGINT): intake stops, the
batches in flight drain for up to `shutdown_timeout` seconds and are acked
(committed); what did not drain in time stays unacked and is redelivered by
the source on the next start (at-least-once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from engine import RuleSpec, compile_ruleset
from engine.config import EngineConfig, SourceEntry
from engine.config.models import parse_listen
from engine.destinations import CHANNELS
from engine.runtime.actions import ActionRunner
from engine.runtime.deadletter import DeadLetters, dead_letters_from_config
from engine.runtime.metrics import Metrics
from engine.runtime.pipeline import Pipeline
from engine.runtime.sources import Source

log = logging.getLogger(__name__)


def build_source(entry: SourceEntry, *, batch_size: int = 500) -> Source:
    o = entry.options
    if entry.kind == "kafka":
        from engine.runtime.sources.kafka import KafkaSource, client_options

        return KafkaSource(topics=o.topics, group_id=o.group_id, batch_size=o.max_batch,
                           auto_offset_reset=o.auto_offset_reset,
                           session_timeout_ms=o.session_timeout_ms,
                           heartbeat_interval_ms=max(o.session_timeout_ms // 3, 100),
                           **client_options(o))
    if entry.kind == "amqp":
        from engine.runtime.sources.amqp import AmqpSource

        return AmqpSource(url=o.url.get_secret_value(), queue=o.queue, prefetch=o.prefetch,
                          batch_size=batch_size)
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


class Worker:
    def __init__(self, ruleset, runners: Sequence[ActionRunner], sources: Sequence[Source], *,
                 metrics: Metrics | None = None, dead_letters: DeadLetters | None = None,
                 metrics_listen: str | None = None, metrics_path: str = "/metrics",
                 shutdown_timeout: float = 30.0, rule_keys: Sequence[str] = ()) -> None:
        self.metrics = metrics or Metrics()
        self.dead_letters = dead_letters or DeadLetters()
        self.runners = list(runners)
        self.sources = list(sources)
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

    @classmethod
    def from_config(cls, config: EngineConfig, *, metrics: Metrics | None = None,
                    sources: Sequence[Source] | None = None, actions: bool = True,
                    serve_metrics: bool = True) -> Worker:
        """`sources` replaces the configured ones; `actions=False` evaluates
        and counts without delivering (a dry run)."""
        metrics = metrics or Metrics()
        dead_letters = dead_letters_from_config(config.dead_letter)
        w = config.worker
        active = {r.rule_id for r in config.rules if r.active}
        runners = [
            ActionRunner(a.action_id, a.rule_id, CHANNELS[a.channel](a.detail), metrics=metrics,
                         dead_letters=dead_letters, batch_size=w.batch_size,
                         linger=w.linger_ms / 1000)
            for a in config.actions if actions and a.rule_id in active]
        if sources is None:
            sources = [build_source(e, batch_size=w.batch_size) for e in config.sources]
        m = config.metrics if serve_metrics else None
        return cls(build_ruleset(config), runners, sources, metrics=metrics,
                   dead_letters=dead_letters, metrics_listen=m.listen if m else None,
                   metrics_path=m.path if m else "/metrics",
                   shutdown_timeout=w.shutdown_timeout, rule_keys=sorted(active))

    async def run(self) -> None:
        """Run until every source ended or `stop()` drained them. Raises when
        start-up fails or a source fails (after shutting down the rest)."""
        metrics_runner = None
        started: list[Source] = []
        opened: list[ActionRunner] = []
        dead_letters_open = False
        try:
            await self.dead_letters.open()
            dead_letters_open = True
            for runner in self.runners:
                await runner.open()
                opened.append(runner)
            for source in self.sources:
                await source.start()
                started.append(source)
            if self.metrics_listen:
                host, port = parse_listen(self.metrics_listen)
                metrics_runner = await self.metrics.serve(host, port, self.metrics_path)
            self.metrics.ready = not self.stopping
            self._tasks = [asyncio.create_task(self.pipeline.consume(s), name=f"source {s.name}")
                           for s in self.sources]
            failure = await self._wait_sources()
            if failure is not None:
                raise failure
        finally:
            self.metrics.ready = False
            if self._abort_timer is not None:
                self._abort_timer.cancel()
            for task in self._tasks:
                task.cancel()
            for runner in opened:
                await runner.close()
            for source in started:
                await source.close()
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
