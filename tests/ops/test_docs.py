"""The docs say what the code does: examples are real output, names exist,
links resolve."""

from __future__ import annotations

import json
import re

import pytest

from engine import RuleSpec, compile_ruleset
from engine.config.channels import registry
from engine.runtime.metrics import Metrics
from engine.sources.fleet import KINDS
from tests.ops.support import DOCS, ROOT, code_blocks, engine, slug

NOTIFICATIONS = (DOCS / "notifications.md").read_text()


def _examples() -> list[tuple[str, str, dict]]:
    """(resource, event, example) per '## N. ...: `resource` / `event`' section."""
    out = []
    for section in re.split(r"^## \d+\. ", NOTIFICATIONS, flags=re.M)[1:]:
        resource, event = re.match(r".*?: `([^`]+)` / `([^`]+)`", section).groups()
        (block,) = code_blocks(section, "json")
        out.append((resource, event, json.loads(block)))
    return out


def test_notifications_doc_has_one_example_per_kind():
    kinds = [(r, e) for r, e, _ in _examples()]
    assert sorted(kinds) == sorted(KINDS) and len(kinds) == 12


@pytest.mark.parametrize(("resource", "event", "example"), _examples(),
                         ids=[f"{r}/{e}" for r, e, _ in _examples()])
def test_each_example_is_what_engine_simulate_prints(resource, event, example):
    r = engine("simulate", "--kinds", f"{resource}/{event}", "--count", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == example, (
        f"docs/notifications.md is stale: paste `engine simulate --kinds {resource}/{event} "
        "--count 1` again")
    assert (example["resource"], example["event"]) == (resource, event)


def test_each_example_reaches_exactly_the_rules_of_its_kind():
    rs = compile_ruleset([RuleSpec(f"{r}/{e}", "*", None, r, e, None) for r, e in KINDS])
    for resource, event, example in _examples():
        hits = [key for key, _ in rs.evaluate(example)]
        assert hits == [f"{resource}/{event}"]


def test_simulate_prints_ndjson_of_the_chosen_kinds():
    r = engine("simulate", "--count", "40", "--kinds", "device/create,product/delete",
               "--kinds", "device.status/update", "--seed", "3")
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(docs) == 40
    assert {(d["resource"], d["event"]) for d in docs} <= {
        ("device", "create"), ("product", "delete"), ("device.status", "update")}
    again = engine("simulate", "--count", "40", "--kinds", "device/create,product/delete",
                   "--kinds", "device.status/update", "--seed", "3")
    assert again.stdout == r.stdout  # same options, same bytes


def test_simulate_default_covers_every_kind_and_feeds_replay(tmp_path):
    r = engine("simulate", "--count", "3000")
    kinds = {(d["resource"], d["event"]) for d in map(json.loads, r.stdout.splitlines())}
    assert kinds == set(KINDS)
    events = tmp_path / "events.ndjson"
    events.write_bytes(r.stdout)
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - rule_id: props\n    subject: {resource: device.property, "
                     "event: report}\n")
    out = engine("replay", str(events), "--rules", str(rules), "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "3000 notifications" in out.stdout.decode()


@pytest.mark.parametrize("kinds", ["device.property", "nope/report", "device/explode"])
def test_simulate_refuses_an_unknown_kind(kinds):
    r = engine("simulate", "--kinds", kinds)
    assert r.returncode == 2
    assert b"device.property/report" in r.stderr  # says what is expected


def _links(path):
    text = path.read_text()
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # not inside code
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")) + ["../README.md"])
def test_relative_links_and_anchors_resolve(doc):
    path = (DOCS / doc).resolve()
    for link in _links(path):
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        assert file.exists(), f"{path.name}: link to missing {target}"
        if anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.*)$", file.read_text(), flags=re.M)
            assert anchor in {slug(h) for h in headings}, f"{path.name}: no #{anchor} in {target}"


def test_language_doc_does_not_point_outside_the_repository():
    text = (DOCS / "language.md").read_text()
    assert "shared/spec" not in text and "](notifications.md)" in text


def test_configuration_doc_lists_every_channel_detail_member():
    text = (DOCS / "configuration.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z_]+_FORWARDING)` \(\[details\].*?\| (.*) \|$", text,
                           flags=re.M))
    assert set(rows) == set(registry()), "channels missing from the channel_detail table"
    for channel, sink in registry().items():
        documented = re.findall(r"`(\w+)`(?: = `[^`]*`)?", rows[channel])
        assert documented == list(sink.Config.model_fields), channel
        required = set(re.findall(r"\*\*`(\w+)`\*\*", rows[channel]))
        assert required == {n for n, f in sink.Config.model_fields.items() if f.is_required()}


def test_configuration_doc_shows_a_real_rule_test_failure(tmp_path):
    """The failure printed under `tests` is what `engine test` prints for the
    shipped example with its first expectation changed (level 12 -> 13)."""
    text = (DOCS / "configuration.md").read_text()
    section = text[text.index("## `tests`"):text.index("## Environment variables")]
    (shown,) = re.findall(r"^```\n(FAIL .*?)^```", section, flags=re.S | re.M)
    example = (ROOT / "examples" / "rules.yaml").read_text()
    wrong = example.replace("output: {device_id: d-1, level: 12,",
                            "output: {device_id: d-1, level: 13,", 1)
    assert wrong != example
    path = tmp_path / "rules.yaml"
    path.write_text(wrong)
    r = engine("test", str(path))
    assert r.returncode == 1
    assert r.stderr.decode() == shown


def test_channel_lists_name_file_forwarding():
    assert "`FILE_FORWARDING`" in (DOCS / "configuration.md").read_text()
    assert "## FILE_FORWARDING" in (DOCS / "destinations.md").read_text()


def _metric_names(text: str) -> set[str]:
    return set(re.findall(r"^\| `(engine_[a-z_]+)`", text, flags=re.M))


def test_runtime_doc_names_exactly_the_exported_metrics():
    suffix = {"counter": "_total", "info": "_info"}
    exported = {f.name + suffix.get(f.type, "") for f in Metrics().registry.collect()
                if f.name.startswith("engine_")}
    text = (DOCS / "runtime.md").read_text()
    documented = _metric_names(text)
    documented |= {m.replace("_matched_total", "_not_matched_total")
                   for m in documented if m == "engine_rule_matched_total"}
    assert documented == exported


def test_runtime_doc_contradictions_are_gone():
    text = (DOCS / "runtime.md").read_text()
    assert "and\ndropped" not in text and "always 0 until it exists" not in text
    assert "capped at 10 s" not in text
    assert "matched + restored = forwarded + backlogged + dead_lettered + inflight" in text
    assert "Credentials are\n  checked before anything else" in text and "/readyz" in text


def test_readme_scale_out_example_gives_each_worker_its_own_port_and_state():
    text = (ROOT / "README.md").read_text()
    (block,) = [b for b in code_blocks(text, "sh") if "engine run" in b and "for i" in b]
    assert "--metrics-listen" in block and "--state-dir" in block and "$i" in block
