"""Compiling many rules into one indexed `RuleSet`.

Each rule's subject (resource/event) and app scope become conditions ANDed
before its WHERE. Top-level equality conjuncts `path = 'constant'` (the
subject included) are collected per rule; the path with the most distinct
constants becomes the index, so with 10,000 rules keyed by product_id an
event evaluates only the rules of its own product plus those without such a
conjunct.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from engine import _core
from engine.language import ast, parse_rule
from engine.language.aliyun import TOPIC, topic_levels
from engine.language.compiler import build_rule, guarded
from engine.language.errors import RuleError
from engine.language.prefilter import derive_prefilter, json_string_needle
from engine.language.reads import merge, rule_reads

MAX_PREFILTER_RULES = 64   # beyond this, checking needles costs more than decoding

# What the rule set itself reads of every notification besides its rules:
# the subject (and the per-kind counts), the record key and time.
_ALWAYS_READ = (("resource",), ("event",), ("event_time",),
                ("notify_data", "header", "device_id"), ("notify_data", "body", "device_id"))
_APP_ID = (("notify_data", "header", "app_id"), ("notify_data", "body", "app_id"))


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One rule of a rule set. `resource`/`event` restrict it to a subject,
    `app_id` to one application (IoTDA app_type APP); None means any."""

    key: Hashable
    select: str | None = None
    where: str | None = None
    resource: str | None = None
    event: str | None = None
    app_id: str | None = None
    dialect: str = "iotda"
    topic: str | None = None   # an MQTT topic filter on notify_data.body.topic (Alibaba rules)


def _eq_conjuncts(where: ast.Expr | None) -> dict[tuple, str]:
    """Top-level AND-ed `path = 'string'` predicates of a WHERE clause."""
    out: dict[tuple, str] = {}
    stack = [where] if where is not None else []
    while stack:
        n = stack.pop()
        if isinstance(n, ast.And):
            stack += [n.right, n.left]
        elif isinstance(n, ast.Compare) and n.op == "=":
            for p, lit in ((n.left, n.right), (n.right, n.left)):
                if isinstance(p, ast.Path) and isinstance(lit, ast.Literal) \
                        and isinstance(lit.value, str) and len(p.steps) <= 16:
                    out.setdefault(p.steps, lit.value)
    return out


@guarded
def compile_ruleset(specs: Iterable[RuleSpec]) -> _core.RuleSet:
    """Compile rules into an indexed RuleSet. A bad rule raises its RuleError
    with `rule_key` set to the spec's key."""
    specs = list(specs)
    rules, conjuncts, prefilters = [], [], []
    reads: set[tuple[str, ...]] | None = set(_ALWAYS_READ)
    for spec in specs:
        try:
            rule = parse_rule(spec.select, spec.where, spec.dialect)
        except RuleError as e:
            e.rule_key = spec.key
            raise
        extra, eqs, required = [], {}, []
        for steps, value in ((("resource",), spec.resource), (("event",), spec.event)):
            if value is not None:
                extra.append(_core.PathCompareStr(_core.OPS["="], _core.Path(steps), value))
                eqs[steps] = value
                required.append([n] if (n := json_string_needle(value)) else [])
        if spec.app_id is not None:
            extra.append(_core.AppIs(spec.app_id))
            required.append([n] if (n := json_string_needle(spec.app_id)) else [])
        if spec.topic is not None:
            levels, rest, literal = topic_levels(spec.topic)
            topic = _core.Path(TOPIC)
            if literal == spec.topic:   # no wildcard: an equality, which can be the index
                extra.append(_core.PathCompareStr(_core.OPS["="], topic, spec.topic))
                eqs[TOPIC] = spec.topic
                needle = json_string_needle(literal)
            else:
                extra.append(_core.TopicMatch(topic, levels, rest))
                needle = json_string_needle(literal, suffix=b"")
            required.append([needle] if needle else [])
        if reads is not None:
            more = rule_reads(rule)
            if more is None:
                reads = None
            else:
                reads |= more
                if spec.app_id is not None:
                    reads.update(_APP_ID)
                if spec.topic is not None:
                    reads.add(TOPIC)
        eqs.update({k: v for k, v in _eq_conjuncts(rule.where).items() if k not in eqs})
        conjuncts.append(eqs)
        prefilters.append(derive_prefilter(rule.where, required))
        rules.append(build_rule(rule, spec.select, spec.where, extra))

    index_steps = _choose_index(conjuncts)
    buckets: dict[str, list[int]] = defaultdict(list)
    always: list[int] = []
    for pos, eqs in enumerate(conjuncts):
        if index_steps is not None and index_steps in eqs:
            buckets[eqs[index_steps]].append(pos)
        else:
            always.append(pos)
    use_pf = 0 < len(specs) <= MAX_PREFILTER_RULES and all(prefilters)
    ruleset = _core.RuleSet(
        rules, [s.key for s in specs],
        _core.Path(index_steps) if index_steps is not None else None,
        buckets, always,
        [_core.Prefilter(p) for p in prefilters] if use_pf else None,
    )
    ruleset.subjects = {s.key: (s.resource, s.event) for s in specs}
    ruleset.sparse = _sparse_reader(reads)
    return ruleset


def _sparse_reader(reads: set[tuple[str, ...]] | None) -> _core.SparseReader | None:
    """A reader of only the paths the rule set reads; None (decode every
    notification whole) when a rule reads it whole or the paths are too many."""
    if reads is None:
        return None
    try:
        return _core.SparseReader(merge(reads))
    except ValueError:   # more than SparseReader.limit() nodes
        return None


def _choose_index(conjuncts: list[dict[tuple, str]]) -> tuple | None:
    """The path whose constants split the rules most finely."""
    values: dict[tuple, set[str]] = defaultdict(set)
    covered: Counter = Counter()
    for eqs in conjuncts:
        for steps, v in eqs.items():
            values[steps].add(v)
            covered[steps] += 1
    if not values:
        return None
    best = max(values, key=lambda s: (len(values[s]), covered[s]))
    return best if len(values[best]) > 1 else None
