"""Products and devices through the management API (seed 1.4.1, 1.4.2):
shapes, paging, errors, secrets, and the notifications each change leaves
in the store's outbox (engine.api.outbox hands them to the rules)."""

from __future__ import annotations

from engine.api.devices import registry_of
from engine.api.storage import EVENTS
from engine.sources.device_registry import Registry

P = "/v5/iot/proj-a/products"
D = "/v5/iot/proj-a/devices"
PRODUCT = {"name": "Thermometer", "device_type": "Thermometer", "protocol_type": "MQTT",
           "data_format": "json", "app_id": "app1",
           "service_capabilities": [{"service_id": "Temperature", "service_type": "temperature",
                                     "properties": [{"property_name": "value",
                                                     "data_type": "decimal", "method": "RW"}]}]}


async def _notifications(store) -> list[dict]:
    return [r.body["notification"] for r in await store.load("proj-a") if r.kind == EVENTS]


async def test_product_lifecycle_and_its_notifications(client, store):
    created = await client.ok("POST", P, {**PRODUCT, "product_id": "thermo"}, 201)
    assert created["product_id"] == "thermo" and created["create_time"].endswith("Z")
    assert created["service_capabilities"][0]["service_id"] == "Temperature"
    generated = await client.ok("POST", P, {**PRODUCT, "name": "Other"}, 201)
    assert len(generated["product_id"]) == 24

    listed = await client.ok("GET", P + "?limit=1")
    assert listed["page"]["count"] == 2 and len(listed["products"]) == 1
    assert "service_capabilities" not in listed["products"][0]  # ProductSummary
    rest = await client.ok("GET", P + f"?limit=1&marker={listed['page']['marker']}")
    assert {listed["products"][0]["product_id"], rest["products"][0]["product_id"]} == \
        {"thermo", generated["product_id"]}
    assert (await client.ok("GET", P + "?product_name=Other"))["page"]["count"] == 1

    updated = await client.ok("PUT", f"{P}/thermo", {"description": "in the hall"})
    assert updated["description"] == "in the hall" and updated["name"] == "Thermometer"
    await client.ok("DELETE", f"{P}/thermo", status=204)
    status, body = await client.call("GET", f"{P}/thermo")
    assert (status, body["error_code"]) == (404, "IOTDA.013000")

    events = [(n["resource"], n["event"]) for n in await _notifications(store)]
    assert events == [("product", "create"), ("product", "create"), ("product", "update"),
                      ("product", "delete")]
    deleted = (await _notifications(store))[-1]["notify_data"]["body"]
    assert deleted == {"app_id": "app1", "product_id": "thermo", "name": "Thermometer"}


async def test_device_lifecycle_secret_freeze_and_notifications(client, store):
    await client.ok("POST", P, {**PRODUCT, "product_id": "thermo"}, 201)
    created = await client.ok("POST", D, {"node_id": "n1", "product_id": "thermo",
                                          "device_name": "hall"}, 201)
    assert created["device_id"] == "thermo_n1" and created["node_type"] == "GATEWAY"
    assert created["app_id"] == "app1" and created["status"] == "INACTIVE"
    secret = created["auth_info"]["secret"]  # generated, shown once
    assert len(secret) == 32
    shown = await client.ok("GET", f"{D}/thermo_n1")
    assert "secret" not in shown["auth_info"] and shown["product_name"] == "Thermometer"

    child = await client.ok("POST", D, {"node_id": "c1", "product_id": "thermo",
                                        "gateway_id": "thermo_n1",
                                        "auth_info": {"secret": "abcdefgh12"}}, 201)
    assert child["node_type"] == "ENDPOINT" and child["gateway_id"] == "thermo_n1"
    listed = await client.ok("GET", D + "?gateway_id=thermo_n1")
    assert [d["device_id"] for d in listed["devices"]] == ["thermo_c1"]

    await client.ok("PUT", f"{D}/thermo_n1", {"description": "by the door",
                                             "auth_info": {"timeout": 30}})
    await client.ok("POST", f"{D}/thermo_n1/freeze")
    assert (await client.ok("GET", f"{D}/thermo_n1"))["status"] == "FROZEN"
    await client.ok("POST", f"{D}/thermo_n1/unfreeze")
    reset = await client.ok("POST", f"{D}/thermo_n1/action?action_id=resetSecret",
                            {"secret": "newsecret1"})
    assert reset == {"device_id": "thermo_n1", "secret": "newsecret1", "secret_type": "PRIMARY"}

    # The registry the device sources read: the new secret, the header.
    registry = Registry(registry_of(await store.load("proj-a")))
    assert registry.devices["thermo_n1"].secret.get_secret_value() == "newsecret1"
    assert registry.header("thermo_c1") == {"device_id": "thermo_c1", "product_id": "thermo",
                                           "app_id": "app1", "node_id": "c1",
                                           "gateway_id": "thermo_n1"}

    status, body = await client.call("DELETE", f"{D}/thermo_n1")  # has a child device
    assert (status, body["error_code"]) == (403, "IOTDA.014024")
    status, body = await client.call("DELETE", f"{P}/thermo")  # in use
    assert (status, body["error_code"]) == (403, "IOTDA.013007")
    await client.ok("DELETE", f"{D}/thermo_c1", status=204)

    events = await _notifications(store)
    kinds = [(n["resource"], n["event"]) for n in events]
    assert kinds == [("product", "create"), ("device", "create"), ("device", "create"),
                     ("device", "update"), ("device", "update"), ("device", "update"),
                     ("device", "delete")]
    assert all("secret" not in str(n) for n in events)
    assert events[4]["notify_data"]["body"]["status"] == "FROZEN"
    assert events[-1]["notify_data"] == {"header": {
        "app_id": "app1", "device_id": "thermo_c1", "node_id": "c1", "product_id": "thermo",
        "gateway_id": "thermo_n1", "tags": []}}


async def test_bad_requests_name_the_cause(client, store):
    status, body = await client.call("POST", D, {"node_id": "n1", "product_id": "nope"})
    assert (status, body["error_code"]) == (400, "IOTDA.013000")
    await client.ok("POST", P, {**PRODUCT, "product_id": "thermo"}, 201)
    status, body = await client.call("POST", P, {**PRODUCT, "product_id": "thermo"})
    assert (status, body["error_code"]) == (400, "IOTDA.013008")
    status, body = await client.call("POST", P, {**PRODUCT, "protocol_type": "SMOKE"})
    assert status == 400 and "protocol_type" in body["error_msg"]
    status, body = await client.call("POST", D, {"node_id": "n 1", "product_id": "thermo"})
    assert status == 400 and "node_id" in body["error_msg"]
    status, body = await client.call("POST", D, {"node_id": "n1", "product_id": "thermo",
                                                 "gateway_id": "ghost"})
    assert (status, body["error_code"]) == (400, "IOTDA.014043")
    await client.ok("POST", D, {"node_id": "n1", "product_id": "thermo"}, 201)
    status, body = await client.call("POST", D, {"node_id": "n1", "product_id": "thermo"})
    assert (status, body["error_code"]) == (400, "IOTDA.014031")
    status, body = await client.call("POST", D, {"node_id": "n2", "product_id": "thermo",
                                                 "auth_info": {"secure_access": "yes"}})
    assert status == 400 and "secure_access" in body["error_msg"]
    status, body = await client.call("GET", f"{D}/ghost")
    assert (status, body["error_code"]) == (404, "IOTDA.014051")
    status, body = await client.call("POST", f"{D}/thermo_n1/action?action_id=reboot", {})
    assert status == 400 and "action_id" in body["error_msg"]
    # Another project sees none of it, and an unauthenticated caller nothing at all.
    other = await client.as_token(None).call("GET", D)
    assert other[0] == 401
    status, body = await client.call("GET", "/v5/iot/proj-b/devices")
    assert status == 401
    assert len([r for r in await store.load("proj-a") if r.kind == EVENTS]) == 2


T = "/v5/iot/proj-a/tags"


async def test_tags_bind_unbind_query_and_their_notifications(client, store):
    await client.ok("POST", P, {**PRODUCT, "product_id": "thermo"}, 201)
    for node in ("n1", "n2"):
        await client.ok("POST", D, {"node_id": node, "product_id": "thermo"}, 201)
    bind = {"resource_type": "device", "resource_id": "thermo_n1",
            "tags": [{"tag_key": "site", "tag_value": "north"}, {"tag_key": "floor"}]}
    await client.ok("POST", f"{T}/bind-resource", bind)
    await client.ok("POST", f"{T}/bind-resource", {
        "resource_type": "device", "resource_id": "thermo_n2",
        "tags": [{"tag_key": "site", "tag_value": "south"}]})
    # A bound key is overwritten, not repeated.
    await client.ok("POST", f"{T}/bind-resource", {**bind, "tags": [
        {"tag_key": "site", "tag_value": "west"}]})
    shown = await client.ok("GET", f"{D}/thermo_n1")
    assert shown["tags"] == [{"tag_key": "site", "tag_value": "west"}, {"tag_key": "floor"}]

    async def query(tags, q=""):
        body = await client.ok("POST", f"{T}/query-resources{q}",
                               {"resource_type": "device", "tags": tags})
        return [r["resource_id"] for r in body["resources"]], body["page"]["count"]

    assert await query([{"tag_key": "site"}]) == (["thermo_n2", "thermo_n1"], 2)
    assert await query([{"tag_key": "site", "tag_value": "south"}]) == (["thermo_n2"], 1)
    assert await query([{"tag_key": "site", "tag_value": "x"}, {"tag_key": "floor"}]) == \
        (["thermo_n1"], 1)
    assert await query([{"tag_key": "site"}], "?limit=1") == (["thermo_n2"], 2)

    await client.ok("POST", f"{T}/unbind-resource", {
        "resource_type": "device", "resource_id": "thermo_n1", "tag_keys": ["floor"]})
    assert (await client.ok("GET", f"{D}/thermo_n1"))["tags"] == [
        {"tag_key": "site", "tag_value": "west"}]
    # The registry a worker runs carries them into every header.
    registry = Registry(registry_of(await store.load("proj-a")))
    assert registry.header("thermo_n1")["tags"] == [{"tag_key": "site", "tag_value": "west"}]

    updates = [n for n in await _notifications(store)
               if (n["resource"], n["event"]) == ("device", "update")]
    assert len(updates) == 4
    assert updates[-1]["notify_data"]["body"]["tags"] == [{"tag_key": "site", "tag_value": "west"}]


async def test_tag_errors_name_the_cause(client, store):
    await client.ok("POST", P, {**PRODUCT, "product_id": "thermo"}, 201)
    await client.ok("POST", D, {"node_id": "n1", "product_id": "thermo"}, 201)

    async def error(path, body):
        status, answer = await client.call("POST", f"{T}/{path}", body)
        return status, answer["error_code"], answer["error_msg"]

    def bind(*tags, device="thermo_n1"):
        return {"resource_type": "device", "resource_id": device,
                "tags": [{"tag_key": k} for k in tags]}

    assert (await error("bind-resource", bind("iot_x")))[:2] == (400, "IOTDA.004002")
    assert (await error("bind-resource", bind("a", device="nobody")))[:2] == \
        (404, "IOTDA.014051")
    status, code, msg = await error("bind-resource", bind("a", "a"))
    assert (status, code) == (400, "IOTDA.000006") and "once" in msg
    status, code, msg = await error("bind-resource", bind("bad key"))
    assert (status, code) == (400, "IOTDA.000006") and "tags.0.tag_key" in msg
    assert (await error("bind-resource", {**bind("a"), "resource_type": "product"}))[:2] == \
        (400, "IOTDA.000006")
    for batch in (range(10), range(10, 11)):
        await client.call("POST", f"{T}/bind-resource", bind(*(f"k{i}" for i in batch)))
    status, code, msg = await error("bind-resource", bind("k99"))
    assert (status, code) == (403, "IOTDA.004001") and "(10)" in msg
    status, code, msg = await error("unbind-resource", {
        "resource_type": "device", "resource_id": "thermo_n1", "tag_keys": ["k0", "zz"]})
    assert (status, code) == (400, "IOTDA.004003") and "zz" in msg
    # Refused as a whole: k0 is still bound.
    tags = (await client.ok("GET", f"{D}/thermo_n1"))["tags"]
    assert len(tags) == 10 and tags[0]["tag_key"] == "k0"
