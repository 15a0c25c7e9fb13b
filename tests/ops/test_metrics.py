"""The metrics a dashboard and alerts need: present from the start,
reloads, refused requests, retries apart from failures, flow control,
build and process information, Kafka consumer lag."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from engine.config import load_config
from engine.runtime.metrics import Metrics
from engine.runtime.worker import Worker
from engine.sources.fleet import Fleet
from engine.sources.http import HttpSource
from tests.runtime.support import ListSource


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def names(found: dict) -> set[str]:
    return {name for name, _ in found}


def _config(tmp_path, **extra) -> tuple:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({
        "rules": [{"rule_id": "status", "subject": {"resource": "device.status",
                                                    "event": "update"}}],
        "actions": [{"action_id": "hook", "rule_id": "status", "channel": "HTTP_FORWARDING",
                     "channel_detail": {"http_forwarding": {"url": "http://127.0.0.1:9/x"}}}],
        "sources": [{"http": {"listen": "127.0.0.1:0", "auth": "none"}}],
        "worker": {"state_dir": str(tmp_path / "state"), "linger_ms": 0, "batch_size": 50},
        **extra}))
    return load_config([path]), path


ACTION = (("action", "hook"), ("channel", "HTTP_FORWARDING"), ("rule", "status"))


def test_every_counter_is_there_at_zero_before_the_first_event(tmp_path):
    config, _ = _config(tmp_path)
    found = samples(Worker.from_config(config).metrics)
    for counter in ("matched", "forwarded", "failed", "retried", "throttled", "dead_lettered",
                    "backlog_appended", "backlog_restored", "backlog_expired"):
        assert found[(f"engine_action_{counter}_total", ACTION)] == 0, counter
    for gauge in ("inflight", "backlogged", "backlog_bytes"):
        assert found[(f"engine_action_{gauge}", ACTION)] == 0, gauge
    assert found[("engine_delivery_latency_seconds_count", ACTION)] == 0
    for counter in ("received", "malformed"):
        assert found[(f"engine_source_{counter}_total", (("source", "http"),))] == 0
    for reason in ("400", "413", "429", "503"):
        assert found[("engine_source_rejected_total",
                      (("reason", reason), ("source", "http")))] == 0
    for counter in ("matched", "not_matched", "failed"):
        assert found[(f"engine_rule_{counter}_total", (("rule", "status"),))] == 0
    assert found[("engine_backlog_policy_bytes", (("policy", "default"),))] == 0
    assert found[("engine_backlog_policy_limit_bytes", (("policy", "default"),))] == 2**30 - 1
    for counter in ("attempts", "successes", "failures"):
        assert found[(f"engine_config_reload_{counter}_total", ())] == 0
    assert found[("engine_config_last_reload_success_timestamp_seconds", ())] > 1.7e9
    assert found[("engine_config_last_reload_successful", ())] == 1
    (build,) = [labels for name, labels in found if name == "engine_build_info"]
    assert dict(build)["version"] and dict(build)["python"].startswith("3.")
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total",
            "process_open_fds", "python_info"} <= names(found)


async def test_reloads_are_counted(tmp_path):
    config, path = _config(tmp_path)
    worker = Worker.from_config(config, config_paths=[path])
    metrics = worker.metrics
    before = samples(metrics)[("engine_config_last_reload_success_timestamp_seconds", ())]
    assert await worker.reload("test") is False  # valid, nothing changed: a success
    path.write_text(path.read_text().replace("device.status", "device.nonsense"))
    assert await worker.reload("test") is False  # invalid: rejected
    found = samples(metrics)
    assert found[("engine_config_reload_attempts_total", ())] == 2
    assert found[("engine_config_reload_successes_total", ())] == 1
    assert found[("engine_config_reload_failures_total", ())] == 1
    assert found[("engine_config_last_reload_successful", ())] == 0
    assert found[("engine_config_last_reload_success_timestamp_seconds", ())] >= before


async def test_refused_http_requests_are_counted_by_reason():
    source = HttpSource(listen="127.0.0.1:0", max_body=1024, max_inflight=1)
    metrics = Metrics()
    metrics.watch_sources([source])
    await source.start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(source.url, data=b"") as r:
                assert r.status == 400
            async with s.post(source.url, data=b"[" + b"1," * 2000 + b"1]") as r:
                assert r.status == 413
            source.stop()
            async with s.post(source.url, data=b"{}") as r:
                assert r.status == 503
    finally:
        await source.close()
    rejected = {dict(labels)["reason"]: v for (name, labels), v in samples(metrics).items()
                if name == "engine_source_rejected_total"}
    assert rejected == {"400": 1, "401": 0, "413": 1, "429": 0, "503": 1}


async def test_retries_failures_and_flow_control_are_told_apart(tmp_path):
    """A webhook that answers 503 to its first requests, under a flow-control
    limit: the failed writes are counted as failed and as retried (they went
    to the backlog), flow control's hold-backs as throttled."""
    answers = {"n": 0}

    async def hook(request: web.Request) -> web.Response:
        answers["n"] += 1
        return web.Response(status=503 if answers["n"] <= 5 else 200)

    app = web.Application()
    app.router.add_post("/in", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    config, _ = _config(tmp_path, flowcontrol_policies=[{"policy_id": "slow", "limit": 100}])
    config = config.model_copy(update={"actions": [config.actions[0].model_copy(update={
        "channel_detail": {"http_forwarding": config.actions[0].detail.model_copy(
            update={"url": f"http://127.0.0.1:{port}/in"})}})]})
    fleet = Fleet(seed=5, devices=20, kinds=[("device.status", "update")])
    items = [json.dumps(fleet.notification(1.7e9 + i)).encode() for i in range(400)]
    source = ListSource([items[i:i + 100] for i in range(0, 400, 100)], name="list")
    worker = Worker.from_config(config, sources=[source])
    try:
        await asyncio.wait_for(worker.run(), 60)
    finally:
        await runner.cleanup()
    found = samples(worker.metrics)
    failed = found[("engine_action_failed_total", ACTION)]
    retried = found[("engine_action_retried_total", ACTION)]
    assert failed >= 5 and retried == failed  # every failure was retryable (503)
    assert found[("engine_action_dead_lettered_total", ACTION)] == 0
    assert found[("engine_action_throttled_total", ACTION)] > 0


@pytest.mark.services
@pytest.mark.timeout(120)
async def test_kafka_consumer_lag_per_partition(kafka):
    from confluent_kafka import Producer

    from engine.sources.kafka import KafkaSource
    from tests.reliability.support import make_topic

    topic = await make_topic(kafka, f"lag-{uuid.uuid4().hex[:8]}", partitions=2)
    producer = Producer({"bootstrap.servers": kafka})
    for i in range(200):
        producer.produce(topic, b'{"n": %d}' % i, partition=i % 2)
    producer.flush(30)
    source = KafkaSource(bootstrap_servers=kafka, topics=[topic], group_id=topic,
                         batch_size=10, config={"statistics.interval.ms": 200})
    metrics = Metrics()
    metrics.watch_sources([source])
    await source.start()
    taker = None
    try:
        batches = source.batches()
        batch = await anext(batches)
        await batch.ack()  # one partition has a commit, the other none yet

        async def take_without_acking() -> None:  # keeps the consumer polling
            async for _ in batches:
                pass

        taker = asyncio.create_task(take_without_acking())
        lag: dict = {}
        for _ in range(150):
            lag = {dict(labels)["partition"]: v for (name, labels), v in samples(metrics).items()
                   if name == "engine_source_kafka_consumer_lag"}
            if len(lag) == 2:
                break
            await asyncio.sleep(0.1)
        assert sorted(lag.values()) == [100 - len(batch.items), 100], lag
    finally:
        source.stop()
        if taker is not None:
            await asyncio.gather(taker, return_exceptions=True)
        await source.close()


@pytest.mark.parametrize("catch_all", [False, True], ids=["prefiltered", "all-decoded"])
async def test_not_matched_splits_into_subject_skipped_where_false_and_prefiltered(
        tmp_path, catch_all):
    """Two rules over a stream of status updates and messages: a rule on
    another kind counts the events as subject-skipped, a rule of that kind
    whose WHERE is false as where-false, events no rule can match as
    prefiltered; the parts add up to not_matched. A rule on every status
    update (`catch_all`) lets no event be pre-filtered: all are decoded."""
    extra = [{"rule_id": "statuses", "subject": {"resource": "device.status",
                                                  "event": "update"}}] if catch_all else []
    rules = [r["rule_id"] for r in extra] + ["online", "messages"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({
        "rules": extra + [
            {"rule_id": "online", "select": "*", "where": "notify_data.body.status = 'ONLINE'",
             "subject": {"resource": "device.status", "event": "update"}},
            {"rule_id": "messages", "subject": {"resource": "device.message",
                                                "event": "report"}}],
        "actions": [{"action_id": f"to-{r}", "rule_id": r, "channel": "FILE_FORWARDING",
                     "channel_detail": {"file_forwarding": {"path": str(tmp_path / f"{r}.jsonl")}}}
                    for r in rules],
        "worker": {"state_dir": str(tmp_path / "state"), "linger_ms": 0}}))
    fleet = Fleet(seed=7, devices=10, kinds=[("device.status", "update"),
                                               ("device.message", "report")])
    events = [fleet.notification(1.7e9 + i) for i in range(300)]
    statuses = sum(e["resource"] == "device.status" for e in events)
    online = sum(e["resource"] == "device.status"
                 and e["notify_data"]["body"]["status"] == "ONLINE" for e in events)
    assert 0 < online < statuses < 300
    source = ListSource([[json.dumps(e).encode() for e in events]], name="list")
    worker = Worker.from_config(load_config([path]), sources=[source])
    await asyncio.wait_for(worker.run(), 60)
    found = samples(worker.metrics)

    def rule(counter: str, r: str) -> float:
        return found[(f"engine_rule_{counter}_total", (("rule", r),))]

    # The OFFLINE updates can match neither rule: the raw-bytes pre-filter
    # drops them undecoded, so they count as prefiltered for both.
    prefiltered = found[("engine_events_prefiltered_total", ())]
    assert prefiltered == (0 if catch_all else statuses - online)
    assert rule("matched", "online") == online
    assert rule("subject_skipped", "online") == 300 - statuses
    assert rule("where_false", "online") == statuses - online - prefiltered
    assert rule("matched", "messages") == 300 - statuses
    assert rule("subject_skipped", "messages") == statuses - prefiltered
    assert rule("where_false", "messages") == 0
    for r in rules:
        assert rule("not_matched", r) == (rule("subject_skipped", r) + rule("where_false", r)
                                          + prefiltered)
