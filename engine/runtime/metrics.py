"""Prometheus metrics of the worker, plus `/healthz` and `/readyz`.

The counters balance, which is how an operator (and a test) checks that
nothing is lost:

    per source:  received = malformed + (matched + not_matched)   for every rule
    per action:  matched + restored = forwarded + backlogged + dead_lettered + inflight

(`matched` of an action = rule outputs handed to it; `backlogged` = records
in its durable backlog now (a gauge); `restored` = records an earlier run
left in the backlog, found at start-up - 0 on a first start.) Counters move once per
batch, never per event. Each `Metrics` has its own registry, so several
workers (tests) can live in one process.

One count, read three ways: an action's counts live in one `ActionCounters`
(plain ints the runner adds to), which /metrics exports at scrape time
(`ActionStats`), the status line and exit summary sum (`Metrics.totals`)
and the management API reads (`app.managed.WorkerMetrics`).
"""

from __future__ import annotations

import logging
import platform
import ssl
from dataclasses import dataclass, fields
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from engine.sources.listen import start_site, url_host
from engine.sources.listener_auth import Authenticator

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass
class Totals:
    """Running totals over all labels, for status lines and summaries: a
    snapshot (`Metrics.totals`), or a plain object a test fills in."""

    received: int = 0
    malformed: int = 0
    matched: int = 0          # rule matches (one event may match several rules)
    forwarded: int = 0        # records acknowledged by a destination
    dead_lettered: int = 0    # malformed events + permanently failed records
    retried: int = 0          # records whose write failed retryably (per attempt)
    inflight: int = 0         # records handed to actions, not yet settled
    backlogged: int = 0       # records in the durable backlogs now


@dataclass(slots=True)
class SourceCounters:
    received: int = 0
    malformed: int = 0        # not a notification: dead-lettered before any rule


class Flow:
    """What the sources and the pipeline count (the actions count in
    ActionCounters): per source, exported as engine_source_received_total
    and engine_source_malformed_total at scrape time, and the rule matches."""

    def __init__(self) -> None:
        self.sources: dict[str, SourceCounters] = {}
        self.matched = 0

    def source(self, name: str) -> SourceCounters:
        return self.sources.setdefault(name, SourceCounters())

    def total(self, name: str) -> int:
        return sum(getattr(c, name) for c in list(self.sources.values()))

    def collect(self):
        received = CounterMetricFamily("engine_source_received", "Notifications received",
                                       labels=["source"])
        malformed = CounterMetricFamily("engine_source_malformed", "Notifications that are "
                                        "not a JSON object (dead-lettered)", labels=["source"])
        for name, c in list(self.sources.items()):
            received.add_metric([name], c.received)
            malformed.add_metric([name], c.malformed)
        return [received, malformed]


@dataclass(slots=True)
class ActionCounters:
    """One action's counts (labels action, rule, channel). The runner adds to
    them once per batch; they are exported as engine_action_<name>."""

    matched: int = 0
    forwarded: int = 0
    failed: int = 0
    retried: int = 0
    throttled: int = 0
    dead_lettered: int = 0
    appended: int = 0
    restored: int = 0
    expired: int = 0
    inflight: int = 0        # gauges from here on
    backlogged: int = 0
    backlog_bytes: int = 0


# engine_action_<name>: (field, help). Counters, then gauges.
_ACTION_COUNTERS = (
    ("matched", "matched", "Rule outputs handed to the action"),
    ("forwarded", "forwarded", "Records the destination acknowledged"),
    ("failed", "failed", "Failed write attempts, per record (retried or dead-lettered)"),
    ("retried", "retried", "Records whose write failed retryably and that will be tried "
     "again (from the backlog), per attempt"),
    ("throttled", "throttled", "Records flow control held back (waited, or sent to the "
     "backlog to go out later)"),
    ("dead_lettered", "dead_lettered", "Records that failed permanently"),
    ("backlog_appended", "appended", "Records put in the durable backlog (destination failed "
     "retryably or flow control held them back)"),
    ("backlog_restored", "restored", "Records found in the backlog at start-up (left by an "
     "earlier run)"),
    ("backlog_expired", "expired", "Backlog records past backlog_size/backlog_time, "
     "dead-lettered (also in dead_lettered)"),
)
_ACTION_GAUGES = (
    ("inflight", "inflight", "Records handed to the action and not yet settled"),
    ("backlogged", "backlogged", "Records in the action's durable backlog now"),
    ("backlog_bytes", "backlog_bytes", "Bytes of the action's backlog records (what "
     "backlog_size counts)"),
)


class ActionStats:
    """Every action's `ActionCounters`, by (action, rule, channel), exported
    at scrape time (each from 0 as soon as its runner exists)."""

    def __init__(self) -> None:
        self.by_labels: dict[tuple[str, str, str], ActionCounters] = {}

    def of(self, action: str, rule: str, channel: str) -> ActionCounters:
        return self.by_labels.setdefault((action, rule, channel), ActionCounters())

    def total(self, name: str) -> int:
        return sum(getattr(c, name) for c in list(self.by_labels.values()))

    def collect(self):
        labels = ["action", "rule", "channel"]
        items = list(self.by_labels.items())
        families = []
        for kind, specs in ((CounterMetricFamily, _ACTION_COUNTERS),
                            (GaugeMetricFamily, _ACTION_GAUGES)):
            for metric, field_name, text in specs:
                family = kind(f"engine_action_{metric}", text, labels=labels)
                for key, counters in items:
                    family.add_metric(list(key), getattr(counters, field_name))
                families.append(family)
        return families


class LiveTotals:
    """`Metrics.totals`: the running totals, read live - the flow's counts
    plus the sums of every action's counters (nothing counted twice)."""

    __slots__ = ("_flow", "_actions")

    def __init__(self, flow: Flow, actions: ActionStats) -> None:
        self._flow, self._actions = flow, actions

    @property
    def received(self) -> int:
        return self._flow.total("received")

    @property
    def malformed(self) -> int:
        return self._flow.total("malformed")

    @property
    def matched(self) -> int:
        return self._flow.matched

    @property
    def forwarded(self) -> int:
        return self._actions.total("forwarded")

    @property
    def dead_lettered(self) -> int:
        return self._flow.total("malformed") + self._actions.total("dead_lettered")

    @property
    def retried(self) -> int:
        return self._actions.total("retried")

    @property
    def inflight(self) -> int:
        return self._actions.total("inflight")

    @property
    def backlogged(self) -> int:
        return self._actions.total("backlogged")


def snapshot(totals: Totals | LiveTotals) -> Totals:
    """A copy of the totals as they are now."""
    return Totals(**{f.name: getattr(totals, f.name) for f in fields(Totals)})


class Metrics:
    # Set by add_operational_metrics (kept apart from the flow counters).
    reload_attempts: Counter
    reload_successes: Counter
    reload_failures: Counter
    reload_last_success: Gauge
    reload_last_ok: Gauge
    scraped: ScrapeTimeStats

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.flow = Flow()
        r.register(self.flow)
        self.ready = False
        self._auth: Authenticator | None = None
        self.rules = RuleStats()
        r.register(self.rules)
        labels = ["action", "rule", "channel"]
        self.actions = ActionStats()
        r.register(self.actions)
        self.totals = LiveTotals(self.flow, self.actions)
        self.unauthorized = Counter("engine_listener_unauthorized",
                                    "Requests refused with 401 (credentials missing or wrong)",
                                    ["listener"], registry=r)
        self.latency = Histogram("engine_delivery_latency_seconds",
                                 "Receipt of the source batch to the destination's ack",
                                 labels, buckets=LATENCY_BUCKETS, registry=r)
        add_operational_metrics(self)

    def watch_sources(self, sources) -> None:
        """Export every source's counters from the start (at 0), and the
        requests it refused (`source.rejected`: reason -> count), if it keeps any."""
        for source in sources:
            self.flow.source(source.name)
        self.scraped.sources = list(sources)

    def watch_backlog(self, backlog) -> None:
        """Export how full each backlog policy is (`Backlog.usage()`)."""
        self.scraped.backlog = backlog

    def reload_result(self, ok: bool) -> None:
        """Count one reload attempt (a file change, SIGHUP or an API change)."""
        self.reload_attempts.inc()
        self.reload_last_ok.set(1 if ok else 0)
        if ok:
            self.reload_successes.inc()
            self.reload_last_success.set_to_current_time()
        else:
            self.reload_failures.inc()

    def matched_of(self, rule: str) -> int:
        return self.rules.matched.get(rule, 0)

    # -- the HTTP endpoint -----------------------------------------------------

    async def serve(self, host: str, port: int, path: str = "/metrics", *,
                    auth: Authenticator | None = None,
                    ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
        """Serve /metrics, /healthz (the process answers) and /readyz (sources
        started and destinations open, not shutting down). `auth`: credentials
        for `path` only; the health endpoints stay open (probes)."""
        self._auth = auth
        app = web.Application()
        app.router.add_get(path, self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await start_site(site, "metrics endpoint (metrics.listen)", host, port)
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("metrics on %s://%s:%d%s (health: /healthz, /readyz)",
                 "https" if ssl_context is not None else "http", url_host(host), self.port, path)
        return runner

    async def _metrics(self, request: web.Request) -> web.Response:
        if self._auth is not None and not self._auth.allows(request.headers):
            self.unauthorized.labels("metrics").inc()
            return web.Response(status=401, headers={"WWW-Authenticate": self._auth.scheme})
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")


def add_operational_metrics(m: Metrics) -> None:
    """What a dashboard and alerts need beyond the flow counters: build and
    process information, reloads, flow control, retries, refused requests."""
    from importlib.metadata import PackageNotFoundError, version

    r = m.registry
    try:
        ours = version("iot-forwarding-engine")
    except PackageNotFoundError:
        ours = "unknown"
    Info("engine_build", "The engine's version and Python", registry=r).info(
        {"version": ours, "python": platform.python_version(),
         "implementation": platform.python_implementation()})
    ProcessCollector(registry=r)   # process_cpu_seconds_total, process_resident_memory_bytes, ...
    PlatformCollector(registry=r)  # python_info
    GCCollector(registry=r)        # python_gc_*
    m.reload_attempts = Counter("engine_config_reload_attempts",
                                "Reloads tried (file change, SIGHUP, management API change)",
                                registry=r)
    m.reload_successes = Counter("engine_config_reload_successes",
                                 "Reloads that left a valid configuration running (applied, "
                                 "or nothing to change)", registry=r)
    m.reload_failures = Counter("engine_config_reload_failures",
                                "Reloads rejected (invalid files, a destination that cannot "
                                "be opened); the running configuration was kept", registry=r)
    m.reload_last_success = Gauge("engine_config_last_reload_success_timestamp_seconds",
                                  "Unix time of the last successful load (start-up or reload)",
                                  registry=r)
    m.reload_last_success.set_to_current_time()  # the configuration loaded at start-up
    m.reload_last_ok = Gauge("engine_config_last_reload_successful",
                             "1 if the last reload (or the start-up load) succeeded, else 0",
                             registry=r)
    m.reload_last_ok.set(1)
    m.scraped = ScrapeTimeStats()
    r.register(m.scraped)


class ScrapeTimeStats:
    """Read at scrape time from the sources that keep them (and the backlog):
    `engine_source_rejected_total{source, reason}`, requests refused (the
    HTTP source's `rejected`: HTTP status -> count), and
    `engine_source_kafka_consumer_lag{source, topic, partition}` (a Kafka
    source's `lag`, from librdkafka's statistics every 5 s)."""

    def __init__(self) -> None:
        self.sources: list = []
        self.backlog = None

    def collect(self):
        rejected = CounterMetricFamily("engine_source_rejected",
                                       "Requests a source refused, by reason (HTTP status)",
                                       labels=["source", "reason"])
        lag = GaugeMetricFamily("engine_source_kafka_consumer_lag",
                                "Records between the group's committed offset and the end "
                                "of the partition (partitions this worker owns)",
                                labels=["source", "topic", "partition"])
        for source in self.sources:
            for reason, n in getattr(source, "rejected", {}).items():
                rejected.add_metric([source.name, reason], n)
            for (topic, partition), n in getattr(source, "lag", {}).items():
                lag.add_metric([source.name, topic, str(partition)], n)
        used = GaugeMetricFamily("engine_backlog_policy_bytes",
                                 "Bytes in the backlog under a backlog policy (all its actions)",
                                 labels=["policy"])
        limit = GaugeMetricFamily("engine_backlog_policy_limit_bytes",
                                  "The policy's backlog_size: beyond it the oldest records "
                                  "are dead-lettered", labels=["policy"])
        for policy, n, bound in self.backlog.usage() if self.backlog is not None else ():
            used.add_metric([policy], n)
            limit.add_metric([policy], bound)
        return [rejected, lag, used, limit]


class RuleStats:
    """Per-rule counters, kept as plain dicts and exported at scrape time.

    Every well-formed event is evaluated against every rule, so
    `not_matched = well_formed - matched` per rule: the hot path only counts
    the matches of a batch (cost proportional to matches, not to rules x
    batches), however many thousand rules there are.

    `not_matched` splits at scrape time, from the decoded events per kind
    (`kinds`, counted by the core) and each rule's subject: `subject_skipped`
    (decoded, of another kind), `where_false` (decoded, of the rule's kind,
    WHERE or app scope not TRUE) and, for the worker, `prefiltered` (never
    decoded: the raw-bytes pre-filter proved no rule could match), so
    `not_matched = subject_skipped + where_false + prefiltered` per rule.
    """

    def __init__(self) -> None:
        self.well_formed = 0
        self.matched: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.pruned: set[str] = set()  # removed by a reload: no longer exported
        self.kinds: dict[tuple[Any, Any], int] = {}   # decoded events per (resource, event)
        self.fanned: dict[str, int] = {}   # outputs - matched, of FOREACH rules
        self.subjects: dict[str, tuple[Any, Any]] = {}

    def count_fanned(self, fanned: dict[str, int]) -> None:
        """FOREACH rules: outputs beyond one per matched event (may be
        negative: an event with no element passing INCASE has none)."""
        for rule, n in fanned.items():
            if rule not in self.pruned:
                self.fanned[rule] = self.fanned.get(rule, 0) + n

    def count_kinds(self, kinds: dict[tuple[Any, Any], int]) -> None:
        for kind, n in kinds.items():
            self.kinds[kind] = self.kinds.get(kind, 0) + n

    def set_rules(self, keys: list[str], *, prune: bool = False,
                  subjects: dict[str, tuple[Any, Any]] | None = None) -> None:
        """Export these rules (new ones from 0; existing ones keep counting).
        `prune`: stop exporting rules not in `keys` (removed by a reload).
        `subjects`: each rule's (resource, event)."""
        if subjects is not None:
            self.subjects.update(subjects)
        if prune:
            keep = set(keys)
            for k in [k for k in self.matched if k not in keep]:
                del self.matched[k]
                self.failed.pop(k, None)
                self.fanned.pop(k, None)
                self.pruned.add(k)
        self.pruned.difference_update(keys)
        for k in keys:
            self.matched.setdefault(k, 0)
            self.failed.setdefault(k, 0)

    def collect(self):
        matched = CounterMetricFamily("engine_rule_matched", "Events the rule matched", labels=["rule"])
        not_matched = CounterMetricFamily("engine_rule_not_matched",
                                          "Well-formed events the rule did not match",
                                          labels=["rule"])
        failed = CounterMetricFamily("engine_rule_failed",
                                     "Rule outputs an action could not deliver (dead-lettered)",
                                     labels=["rule"])
        skipped = CounterMetricFamily(
            "engine_rule_subject_skipped", "Decoded events of another kind than the rule's "
            "subject (part of not_matched)", labels=["rule"])
        where_false = CounterMetricFamily(
            "engine_rule_where_false", "Decoded events of the rule's subject whose WHERE (or "
            "app scope) was not TRUE (part of not_matched)", labels=["rule"])
        kinds = dict(self.kinds)
        decoded = sum(kinds.values())
        prefiltered = CounterMetricFamily(
            "engine_events_prefiltered", "Well-formed events never decoded: the pre-filter "
            "proved no rule could match them (part of every rule's not_matched)")
        prefiltered.add_metric([], max(self.well_formed - decoded, 0))
        outputs = CounterMetricFamily(
            "engine_rule_outputs", "Outputs the rule made of the events it matched (one per "
            "event; FOREACH: one per element passing INCASE)", labels=["rule"])
        for rule, n in list(self.matched.items()):
            matched.add_metric([rule], n)
            outputs.add_metric([rule], n + self.fanned.get(rule, 0))
            not_matched.add_metric([rule], self.well_formed - n)
            failed.add_metric([rule], self.failed.get(rule, 0))
            subject = self.subjects.get(rule)
            of_kind = kinds.get(subject, 0) if subject is not None else decoded
            skipped.add_metric([rule], decoded - of_kind)
            where_false.add_metric([rule], max(of_kind - n, 0))
        return [matched, not_matched, failed, skipped, where_false, prefiltered, outputs]
