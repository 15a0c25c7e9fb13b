"""This engine's additions: rule testing, per-rule metrics, the OpenAPI
document, and change events from API writes."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.api.app import ROUTES, create_app
from engine.api.metrics import ActionCounters, RuleCounters
from tests.api.conftest import API, TOKEN_A, A, Api

EVENT = {"resource": "device.status", "event": "update",
         "notify_data": {"header": {"device_id": "d1"}, "body": {"status": "ONLINE"}}}


async def test_stored_rule_test_match_and_no_match(client):
    rule = await client.rule(select="notify_data.header.device_id as device")
    path = f"{A}/rules/{rule['rule_id']}/test"
    assert await client.ok("POST", path, {"event": EVENT}) == {
        "result": "match", "output": {"device": "d1"}, "warnings": []}
    offline = {**EVENT, "notify_data": {**EVENT["notify_data"], "body": {"status": "OFFLINE"}}}
    assert await client.ok("POST", path, {"event": offline}) == {"result": "no_match",
                                                                 "warnings": []}


async def test_stateless_test_reports_errors_with_position(client):
    result = await client.ok("POST", f"{A}/test", {"where": "notify_data.body.status =",
                                                    "event": EVENT})
    assert result["result"] == "error"
    error = result["error"]
    assert (error["clause"], error["line"], error["column"]) == ("where", 1, 26)
    assert error["type"] == "parse" and "^" in error["snippet"]
    ok = await client.ok("POST", f"{A}/test", {"select": "notify_data.body.status as s",
                                               "event": EVENT})
    assert ok == {"result": "match", "output": {"s": "ONLINE"}, "warnings": []}


@pytest.mark.parametrize("body", [{}, {"event": [1]}, {"event": EVENT, "extra": 1},
                                  {"event": EVENT, "where": "x" * 2501}])
async def test_malformed_test_requests_are_400(client, body):
    status, error = await client.call("POST", f"{A}/test", body)
    assert (status, error["error_code"]) == (400, "IOTDA.000008")


async def test_metrics_without_a_worker_are_zeros(client):
    rule = await client.rule()
    action = await client.action(rule["rule_id"])
    metrics = await client.ok("GET", f"{A}/rules/{rule['rule_id']}/metrics")
    assert metrics["worker_attached"] is False
    assert (metrics["evaluated"], metrics["matched"], metrics["failed"]) == (0, 0, 0)
    assert metrics["actions"] == [{"action_id": action["action_id"], "matched": 0, "forwarded": 0,
                                   "failed": 0, "backlogged": 0, "dead_lettered": 0,
                                   "inflight": 0}]
    assert (await client.call("GET", f"{A}/rules/nope/metrics"))[0] == 404


class FakeWorker:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []
        self.counters: dict[str, RuleCounters] = {}

    def rule_metrics(self, project: str, rule_id: str) -> RuleCounters | None:
        self.asked.append((project, rule_id))
        return self.counters.get(rule_id)


async def test_metrics_come_from_the_attached_worker(store):
    worker = FakeWorker()
    async with TestClient(TestServer(create_app(API, store, metrics=worker),
                                     host="127.0.0.1")) as http:
        client = Api(http, TOKEN_A)
        rule = await client.rule()
        action = await client.action(rule["rule_id"])
        worker.counters[rule["rule_id"]] = RuleCounters(
            evaluated=10, matched=4, actions={action["action_id"]: ActionCounters(
                matched=4, forwarded=3, inflight=1)})
        metrics = await client.ok("GET", f"{A}/rules/{rule['rule_id']}/metrics")
        assert worker.asked == [("proj-a", rule["rule_id"])]
        assert metrics["worker_attached"] is True
        assert (metrics["evaluated"], metrics["matched"]) == (10, 4)
        assert metrics["actions"][0]["forwarded"] == 3
        # A rule the worker has not loaded yet: zeros, still attached.
        other = await client.rule()
        metrics = await client.ok("GET", f"{A}/rules/{other['rule_id']}/metrics")
        assert metrics["worker_attached"] is True and metrics["matched"] == 0


async def test_openapi_document_covers_every_route(client):
    doc = await client.ok("GET", "/openapi.json")
    assert doc["openapi"] == "3.1.0"
    for route in ROUTES:
        if route.operation == "console":  # the page, not an API operation
            assert route.path not in doc["paths"]
            continue
        assert route.method.lower() in doc["paths"][route.path]
    schemas = doc["components"]["schemas"]
    assert "rule_id" not in schemas["RuleCreate"]["required"]
    assert schemas["RuleCreate"]["properties"]["subject"] == {"$ref": "#/components/schemas/RuleSubject"}
    assert set(schemas["RuleUpdate"]["properties"]) == {"rule_name", "description", "select",
                                                        "where", "active"}
    assert "http_forwarding" in schemas["ChannelDetail"]["properties"]
    assert "HTTP_FORWARDING" in schemas["Action"]["properties"]["channel"]["enum"]
    listing = doc["paths"]["/v5/iot/{project_id}/routing-rule/rules"]["get"]
    names = {p["name"] for p in listing["parameters"]}
    assert {"limit", "marker", "offset", "resource", "event", "app_type", "app_id", "rule_name",
            "active"} <= names


async def test_api_writes_reach_a_subscriber_within_a_second(client, store):
    events: asyncio.Queue = asyncio.Queue()
    store.subscribe(events.put_nowait)
    rule = await client.rule()
    event = await asyncio.wait_for(events.get(), 1)
    assert (event.project, event.kind, event.id, event.op) == ("proj-a", "rules", rule["rule_id"],
                                                               "put")
    await client.ok("PUT", f"{A}/rules/{rule['rule_id']}", {"active": True})
    assert (await asyncio.wait_for(events.get(), 1)).op == "put"
    await client.ok("DELETE", f"{A}/rules/{rule['rule_id']}", status=204)
    assert (await asyncio.wait_for(events.get(), 1)).op == "delete"
