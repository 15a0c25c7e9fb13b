"""deploy/grafana and deploy/prometheus: the dashboard and the alert rules
only ask for metrics the engine exports, and they parse. promtool (Debian's
`prometheus` package) checks the PromQL and runs the alert rules' unit tests
where it is installed (PATH or ENGINE_PROMTOOL); the checks below run everywhere."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from engine.runtime.metrics import Metrics
from tests.ops.support import ROOT

DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = json.loads((DEPLOY / "grafana" / "engine-dashboard.json").read_text())
# services.sh up puts it in .services/tools (from Debian's prometheus package).
_LOCAL_PROMTOOL = Path(__file__).resolve().parents[2] / ".services" / "tools" / "promtool"
PROMTOOL = (os.environ.get("ENGINE_PROMTOOL") or shutil.which("promtool")
            or (str(_LOCAL_PROMTOOL) if _LOCAL_PROMTOOL.exists() else None))
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus; or set "
    "ENGINE_PROMTOOL): the structural checks of this file still ran")

# PromQL words that look like metric names but are not
PROMQL = {"sum", "by", "rate", "increase", "deriv", "topk", "max", "min", "histogram_quantile",
          "unless", "on", "and", "or", "le", "humanizePercentage", "without", "time"}


def exported_names() -> set[str]:
    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_count", "_sum"],
                "info": ["_info"], "gauge": [""], "unknown": [""]}
    names = {"up"}
    for family in Metrics().registry.collect():
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)          # label values
    expr = re.sub(r"\{[^}]*\}", "{}", expr)        # matchers
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)       # ranges
    expr = re.sub(r"by \([^)]*\)|on \([^)]*\)", "", expr)
    words = set(re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", expr))
    return {w for w in words - PROMQL if "_" in w or w == "up"}


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alerts_cover_what_an_operator_must_hear_about():
    names = {r["alert"] for r in alert_rules()}
    assert {"EngineDestinationFailing", "EngineBacklogGrowing", "EngineBacklogNearBound",
            "EngineDeadLetters", "EngineKafkaConsumerLag", "EngineReloadFailing"} <= names
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_expressions_use_exported_metrics(rule):
    unknown = metric_names(rule["expr"]) - exported_names()
    assert not unknown, f"{rule['alert']}: no such metric {sorted(unknown)}"


def _targets():
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            yield panel, target["expr"]


def test_dashboard_is_well_formed():
    panels = DASHBOARD["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert DASHBOARD["uid"] and DASHBOARD["schemaVersion"] >= 36
    variables = {v["name"] for v in DASHBOARD["templating"]["list"]}
    assert variables == {"datasource", "instance"}
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(g["x"] + dx, g["y"] + dy) for dx in range(g["w"]) for dy in range(g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]


def test_dashboard_queries_use_exported_metrics_and_the_instance_filter():
    names = exported_names()
    for panel, expr in _targets():
        unknown = metric_names(expr) - names
        assert not unknown, f"{panel['title']}: no such metric {sorted(unknown)}"
        assert 'instance=~"$instance"' in expr, panel["title"]


def test_dashboard_shows_the_new_metrics():
    used = set().union(*(metric_names(e) for _, e in _targets()))
    assert {"engine_action_retried_total", "engine_action_throttled_total",
            "engine_source_rejected_total", "engine_source_kafka_consumer_lag",
            "engine_backlog_policy_bytes", "engine_config_last_reload_successful",
            "engine_build_info", "process_resident_memory_bytes"} <= used


def _promtool(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


@needs_promtool
def test_promtool_checks_the_alert_rules_and_runs_their_unit_tests():
    r = _promtool("check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr
    r = _promtool("test", "rules", "alerts.test.yaml", cwd=ALERTS.parent)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path):
    """Grafana's variables substituted, each query becomes a recording rule,
    which promtool parses."""
    rules = [{"record": f"dashboard:panel{panel['id']}:q{i}",
              "expr": expr.replace("$__rate_interval", "5m").replace("$instance", ".*")}
             for i, (panel, expr) in enumerate(_targets())]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = _promtool("check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    # and a broken one is caught, so the check can fail
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "x:y", "expr": "sum(rate(engine_action_failed_total[5m])"}]}]}))
    assert _promtool("check", "rules", str(path)).returncode != 0
