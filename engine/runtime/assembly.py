"""Building a worker's parts from an `EngineConfig`: sources, the compiled
rule set, the action runners and the durable state (dead letters, backlog).
Nothing here runs anything: `Worker` (engine.runtime.worker) runs the parts,
and a reload builds the new ones with the same functions."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from engine import compile_ruleset
from engine.config import Action, EngineConfig, Rule, SourceEntry
from engine.destinations import CHANNELS
from engine.policies import Backlog, FlowControl
from engine.runtime.actions import ActionRunner
from engine.runtime.deadletter import DeadLetters, FileDeadLetters, dead_letters_from_config
from engine.runtime.metrics import Metrics
from engine.sources import SOURCES, Source, SourceContext
from engine.sources.device_registry import Registry

log = logging.getLogger(__name__)


def build_source(entry: SourceEntry, *, batch_size: int = 500,
                 metrics: Metrics | None = None, context: SourceContext | None = None) -> Source:
    return SOURCES[entry.kind].from_options(entry.options, batch_size=batch_size,
                                            metrics=metrics, context=context)


def source_context(config: EngineConfig, dead_letters: DeadLetters) -> SourceContext:
    """What the sources of `config` are lent: the device registry (one,
    shared, changed in place by a reload: `Registry.replace`) and the
    worker's dead-letter store (for input a source rejects itself, e.g. an
    MQTT message from an unknown device)."""
    return SourceContext(registry=Registry(config.registry), dead_letters=dead_letters)


def active_rules(config: EngineConfig) -> dict[str, Rule]:
    """The rules that run, by id."""
    return {r.rule_id: r for r in config.rules if r.active}


def active_rule_ids(config: EngineConfig) -> list[str]:
    """The ids of the rules that run, sorted (the pipeline's route keys)."""
    return sorted(active_rules(config))


def build_ruleset(config: EngineConfig):
    """The compiled rule set of the active rules (keys: rule ids)."""
    return compile_ruleset([r.spec() for r in active_rules(config).values()])


# What makes a running action reusable across a reload: same action, same
# writer settings.
RunnerSpec = tuple[Action, int, int]


def runner_specs(config: EngineConfig, deliver: bool = True) -> dict[str, RunnerSpec]:
    """The actions of the active rules, by id (none when not delivering)."""
    if not deliver:
        return {}
    active = active_rules(config)
    w = config.worker
    return {a.action_id: (a, w.batch_size, w.linger_ms) for a in config.actions
            if a.rule_id in active}


def make_runner(spec: RunnerSpec, metrics: Metrics, dead_letters: DeadLetters,
                flow: FlowControl, backlog: Backlog | None) -> ActionRunner:
    action, batch_size, linger_ms = spec
    runner = ActionRunner(action.action_id, action.rule_id,
                          CHANNELS[action.channel](action.detail),
                          metrics=metrics, dead_letters=dead_letters, batch_size=batch_size,
                          linger=linger_ms / 1000,
                          limiter=flow.limiter_for(action.rule_id, action.action_id,
                                                   action.channel),
                          backlog=backlog)
    runner.error_action = action.error_action
    return runner


def split_routes(rule_ids: Sequence[str], runners: Sequence[ActionRunner]
                 ) -> tuple[dict[str, list[ActionRunner]], dict[str, list[ActionRunner]]]:
    """(rule -> the runners its outputs go to, rule -> its error actions)."""
    routes: dict[str, list[ActionRunner]] = {k: [] for k in rule_ids}
    errors: dict[str, list[ActionRunner]] = {}
    for r in runners:
        (errors if r.error_action else routes).setdefault(r.rule_id, []).append(r)
    return routes, errors


def durable_state(config: EngineConfig, deliver: bool = True, adopt: Sequence[str] = ()
                  ) -> tuple[DeadLetters, Backlog | None]:
    """The dead-letter store and the backlog of a delivering worker. Without
    `dead_letter:` the dead letters go to a file in `worker.state_dir` rather
    than nowhere: nothing the engine accepted is dropped silently. A dry run
    (`deliver=False`) has no backlog and touches no state directory.
    `adopt`: other backlogs the backlog takes over when it opens."""
    if not deliver:
        return dead_letters_from_config(config.dead_letter), None
    state_dir = config.worker.state_dir
    os.makedirs(state_dir, exist_ok=True)
    if config.dead_letter is None:
        path = os.path.join(state_dir, "dead-letters.jsonl")
        log.info("dead letters go to %s (no dead_letter configured)", path)
        dead_letters: DeadLetters = FileDeadLetters(path)
    else:
        dead_letters = dead_letters_from_config(config.dead_letter)
    backlog = Backlog(os.path.join(state_dir, "backlog.db"), dead_letters,
                      config.backlog_policies, adopt=adopt)
    return dead_letters, backlog
