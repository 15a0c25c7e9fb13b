"""`engine run` with an `api:` section: the management API inside the worker.
Changes made through the API (the official SDK included) reach the running
worker within a second, through the same swap as a rule-file reload; two
workers on one PostgreSQL store apply each other's changes."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import orjson
import pytest

from tests import services as svc
from tests.api.conftest import AK_A, SK_A, TOKEN_A
from tests.runtime.e2e import EngineProcess, Receiver, free_port, wait_ready, write_config

RULES = "/v5/iot/proj-a/routing-rule"


def engine_config(storage: str) -> tuple[dict, dict[str, int]]:
    ports = {"api": free_port(), "http": free_port(), "metrics": free_port()}
    config = {
        "api": {"listen": f"127.0.0.1:{ports['api']}", "storage": storage,
                "projects": {"proj-a": {"tokens": [TOKEN_A],
                                        "access_keys": [{"ak": AK_A, "sk": SK_A}]}}},
        "sources": [{"http": {"listen": f"127.0.0.1:{ports['http']}", "path": "/in",
                              "auth": "none"}}],
        "metrics": {"listen": f"127.0.0.1:{ports['metrics']}"},
        "worker": {"linger_ms": 1},
    }
    return config, ports


def reading(seq: int, temperature: int) -> dict:
    return {"resource": "device.property", "event": "report", "event_time": "20260101T000000Z",
            "notify_data": {"header": {"device_id": f"d{seq}"},
                            "body": {"services": [{"properties": {"temperature": temperature,
                                                                  "seq": seq}}]}}}


async def ingest(http: aiohttp.ClientSession, port: int, events: list[dict]) -> None:
    """POST to the HTTP source; it answers once the batch is delivered."""
    async with http.post(f"http://127.0.0.1:{port}/in", data=orjson.dumps(events)) as r:
        assert r.status == 200, await r.text()


async def call(http: aiohttp.ClientSession, port: int, method: str, path: str,
               body: dict | None = None, status: int = 200):
    async with http.request(method, f"http://127.0.0.1:{port}{RULES}{path}", json=body,
                            headers={"X-Auth-Token": TOKEN_A}) as r:
        assert r.status == status, await r.text()
        return await r.json() if r.status != 204 else None


def sdk_client(port: int):
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.http.http_config import HttpConfig
    from huaweicloudsdkiotda.v5 import IoTDAClient

    config = HttpConfig.get_default_config()
    config.timeout = (5, 10)
    return (IoTDAClient.new_builder().with_credentials(BasicCredentials(AK_A, SK_A, "proj-a"))
            .with_endpoints([f"http://127.0.0.1:{port}"]).with_http_config(config).build())


async def until(condition, timeout: float, step=None) -> float:
    """Wait until `condition()` (calling `step()` between tries); seconds taken."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "timed out"
        if step is not None:
            await step()
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_official_sdk_rule_forwards_in_the_running_worker(tmp_path):
    from huaweicloudsdkiotda.v5 import (
        AddActionReq,
        AddRuleReq,
        ChannelDetail,
        CreateRoutingRuleRequest,
        CreateRuleActionRequest,
        DeleteRoutingRuleRequest,
        DeleteRuleActionRequest,
        HttpForwarding,
        ListRoutingRulesRequest,
        ListRuleActionsRequest,
        RoutingRuleSubject,
        UpdateRoutingRuleRequest,
        UpdateRuleReq,
    )

    config, ports = engine_config(f"sqlite://{tmp_path / 'config.db'}")
    path = write_config(tmp_path / "engine.yaml", config)
    async with Receiver() as receiver, aiohttp.ClientSession() as http:
        with EngineProcess(path, stderr_file=tmp_path / "engine.log") as engine:
            await wait_ready(ports["metrics"], engine)
            client = sdk_client(ports["api"])

            def sdk(fn, request):
                return asyncio.to_thread(fn, request)

            rule = await sdk(client.create_routing_rule, CreateRoutingRuleRequest(body=AddRuleReq(
                rule_name="hot", app_type="GLOBAL",
                subject=RoutingRuleSubject(resource="device.property", event="report"),
                select="notify_data.header.device_id AS device",
                where="notify_data.body.services[0].properties.temperature > 30")))
            action = await sdk(client.create_rule_action, CreateRuleActionRequest(
                body=AddActionReq(rule_id=rule.rule_id, channel="HTTP_FORWARDING",
                                  channel_detail=ChannelDetail(
                                      http_forwarding=HttpForwarding(url=receiver.url)))))
            listed = await sdk(client.list_routing_rules, ListRoutingRulesRequest())
            assert [r.rule_id for r in listed.rules] == [rule.rule_id]
            actions = await sdk(client.list_rule_actions,
                                ListRuleActionsRequest(rule_id=rule.rule_id))
            assert [a.action_id for a in actions.actions] == [action.action_id]

            # Inactive: nothing forwarded.
            await asyncio.sleep(0.5)
            await ingest(http, ports["http"], [reading(0, 35)])
            assert receiver.bodies == []

            await sdk(client.update_routing_rule, UpdateRoutingRuleRequest(
                rule_id=rule.rule_id, body=UpdateRuleReq(active=True)))
            seq = iter(range(1, 10_000))

            async def send() -> None:
                n = next(seq)
                await ingest(http, ports["http"], [reading(n, 35), reading(n + 10_000, 20)])

            took = await until(lambda: receiver.bodies, 3, send)
            assert took < 1.5, took
            assert all(b == {"device": b["device"]} and int(b["device"][1:]) < 10_000
                       for b in receiver.bodies)  # only the hot readings

            # (d) the metrics endpoint shows the worker's counts
            forwarded = len(receiver.bodies)
            metrics = await call(http, ports["api"], "GET", f"/rules/{rule.rule_id}/metrics")
            assert metrics["worker_attached"] is True
            assert metrics["matched"] == forwarded and metrics["evaluated"] >= 2 * forwarded
            [counts] = metrics["actions"]
            assert counts["action_id"] == action.action_id
            assert (counts["matched"], counts["forwarded"], counts["inflight"]) == (
                forwarded, forwarded, 0)

            # Deactivated: forwarding stops (within a second).
            await sdk(client.update_routing_rule, UpdateRoutingRuleRequest(
                rule_id=rule.rule_id, body=UpdateRuleReq(active=False)))
            await asyncio.sleep(1.0)
            before = len(receiver.bodies)
            for _ in range(5):
                await send()
            assert len(receiver.bodies) == before

            await sdk(client.delete_rule_action, DeleteRuleActionRequest(
                action_id=action.action_id))
            await sdk(client.delete_routing_rule, DeleteRoutingRuleRequest(rule_id=rule.rule_id))
            assert (await sdk(client.list_routing_rules, ListRoutingRulesRequest())).count == 0
            code, log = engine.stop()
    assert code == 0, log
    assert "reload applied" in log and SK_A not in log and TOKEN_A not in log


async def test_api_change_applies_within_a_second_without_losing_events(tmp_path):
    config, ports = engine_config(f"sqlite://{tmp_path / 'config.db'}")
    path = write_config(tmp_path / "engine.yaml", config)
    n_batches, per_batch = 60, 10
    async with Receiver() as receiver, aiohttp.ClientSession() as http:
        with EngineProcess(path, stderr_file=tmp_path / "engine.log") as engine:
            await wait_ready(ports["metrics"], engine)
            temp = "notify_data.body.services[0].properties.temperature"
            rule = await call(http, ports["api"], "POST", "/rules", {
                "rule_name": "stream", "active": True,
                "subject": {"resource": "device.property", "event": "report"},
                "select": "notify_data.body.services[0].properties.seq AS seq, 'v1' AS version",
                "where": f"{temp} > 30"}, status=201)
            await call(http, ports["api"], "POST", "/actions", {
                "rule_id": rule["rule_id"], "channel": "HTTP_FORWARDING",
                "channel_detail": {"http_forwarding": {"url": receiver.url}}}, status=201)
            await until(lambda: receiver.bodies, 3,
                        lambda: ingest(http, ports["http"], [reading(-1, 40)]))
            receiver.bodies.clear()

            # Even seq: 40 degrees (matches both versions); odd: 35 (only v1).
            posted: list[tuple[int, float]] = []  # (seq, time the POST was answered)

            async def stream() -> None:
                for b in range(n_batches):
                    seqs = range(b * per_batch, (b + 1) * per_batch)
                    await ingest(http, ports["http"],
                                 [reading(s, 40 if s % 2 == 0 else 35) for s in seqs])
                    posted.extend((s, time.monotonic()) for s in seqs)
                    await asyncio.sleep(0.03)

            streaming = asyncio.create_task(stream())
            await asyncio.sleep(0.6)
            sent = time.monotonic()
            await call(http, ports["api"], "PUT", f"/rules/{rule['rule_id']}", {
                "where": f"{temp} > 38",
                "select": "notify_data.body.services[0].properties.seq AS seq, 'v2' AS version"})
            changed = time.monotonic()
            await streaming
            code, log = engine.stop()
    assert code == 0, log

    got = [(b["seq"], b["version"]) for b in receiver.bodies]
    seqs = [s for s, _ in got]
    assert len(seqs) == len(set(seqs)), "duplicates"
    delivered = dict(got)
    # Every matching event is delivered exactly once, by the old or the new rule.
    for s, at in posted:
        if s % 2 == 0:
            assert s in delivered, f"lost {s}"
        if at < sent and s % 2 == 1:
            assert delivered.get(s) == "v1", f"lost {s}"
        if at > changed + 1.0:  # applied within a second
            assert delivered.get(s) == ("v2" if s % 2 == 0 else None), (s, delivered.get(s))
    versions = [v for _, v in sorted(got)]
    assert "v1" in versions and "v2" in versions
    assert versions == sorted(versions), "a batch after the swap used the old rules"
    assert all(s % 2 == 0 for s, v in got if v == "v2")


async def test_two_workers_share_a_postgres_store(tmp_path):
    import asyncpg

    from tests.api.test_storage import port_open

    if not port_open(svc.PG_PORT):
        pytest.skip("PostgreSQL is not running (bash scripts/services.sh up)")
    schema = f"managed_{uuid.uuid4().hex[:10]}"
    storage = f"{svc.PG_URL}?schema={schema}"
    config_a, ports_a = engine_config(storage)
    config_b, ports_b = engine_config(storage)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path_a = write_config(tmp_path / "a" / "engine.yaml", config_a)
    path_b = write_config(tmp_path / "b" / "engine.yaml", config_b)
    try:
        async with Receiver() as receiver, aiohttp.ClientSession() as http:
            with EngineProcess(path_a, stderr_file=tmp_path / "a.log") as a, \
                    EngineProcess(path_b, stderr_file=tmp_path / "b.log") as b:
                await wait_ready(ports_a["metrics"], a)
                await wait_ready(ports_b["metrics"], b)
                rule = await call(http, ports_a["api"], "POST", "/rules", {
                    "rule_name": "shared", "active": True,
                    "subject": {"resource": "device.property", "event": "report"},
                    "select": "notify_data.header.device_id AS device"}, status=201)
                await call(http, ports_a["api"], "POST", "/actions", {
                    "rule_id": rule["rule_id"], "channel": "HTTP_FORWARDING",
                    "channel_detail": {"http_forwarding": {"url": receiver.url}}}, status=201)
                created = time.monotonic()
                n = iter(range(10_000))
                await until(lambda: receiver.bodies, 3,
                            lambda: ingest(http, ports_b["http"], [reading(next(n), 1)]))
                assert time.monotonic() - created < 1.5
                # B's API sees A's rule; a change through B reaches A.
                shown = await call(http, ports_b["api"], "GET", f"/rules/{rule['rule_id']}")
                assert shown["active"] is True
                await call(http, ports_b["api"], "PUT", f"/rules/{rule['rule_id']}",
                           {"select": "'from-b' AS device"})
                await until(lambda: receiver.bodies[-1] == {"device": "from-b"}, 3,
                            lambda: ingest(http, ports_a["http"], [reading(next(n), 1)]))
                metrics = await call(http, ports_a["api"], "GET",
                                     f"/rules/{rule['rule_id']}/metrics")
                assert metrics["matched"] >= 1  # A's own counts
                for engine in (a, b):
                    code, log = engine.stop()
                    assert code == 0, log
    finally:
        conn = await asyncpg.connect(svc.PG_URL)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
