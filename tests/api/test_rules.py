"""Rules (IoTDA 1.4.8.1-1.4.8.5): create, list with filters and pagination,
show, update (including activation), delete, and the validation errors."""

from __future__ import annotations

import pytest

from engine.config import validate_config_dict
from tests.api.conftest import RULE, A


async def test_create_returns_iotda_shape_with_generated_id_and_inactive(client):
    rule = await client.rule()
    # Unset optional fields (here app_id, select) are left out, as in the seed's examples.
    assert set(rule) == {"rule_id", "rule_name", "description", "subject", "app_type", "where",
                         "active"}
    assert len(rule["rule_id"]) == 36 and rule["rule_id"].count("-") == 4
    assert rule["active"] is False  # IoTDA creates rules inactive
    assert rule["subject"] == RULE["subject"] and rule["where"] == RULE["where"]
    assert await client.ok("GET", f"{A}/rules/{rule['rule_id']}") == rule


async def test_two_creates_get_distinct_ids(client):
    first, second = await client.rule(), await client.rule()
    assert first["rule_id"] != second["rule_id"]


async def test_client_chosen_id_is_kept_and_duplicates_refused(client):
    rule = await client.rule(rule_id="my-rule_1")
    assert rule["rule_id"] == "my-rule_1"
    status, body = await client.call("POST", f"{A}/rules", {**RULE, "rule_id": "my-rule_1"})
    assert (status, body["error_code"]) == (400, "IOTDA.010006")


@pytest.mark.parametrize(("change", "code", "fragment"), [
    ({"subject": {"resource": "device.status", "event": "create"}}, "IOTDA.010000",
     "subject.event: 'create' is not a valid event for resource 'device.status'"),
    ({"subject": {"resource": "nope", "event": "update"}}, "IOTDA.010000", "subject.resource"),
    ({"rule_name": "has space"}, "IOTDA.010000", "rule_name"),
    ({"app_type": "APP"}, "IOTDA.010000", "app_type APP requires app_id"),
    ({"colour": "red"}, "IOTDA.010000", "colour: unknown field"),
    ({"where": "notify_data.body.status ="}, "IOTDA.010004", "(line 1, column 26 of the clause)"),
    ({"select": "x" * 2501}, "IOTDA.010004", "select"),
])
async def test_invalid_create_is_400_with_the_config_validators_message(client, change, code,
                                                                        fragment):
    status, body = await client.call("POST", f"{A}/rules", {**RULE, **change})
    assert status == 400 and body["error_code"] == code
    assert fragment in body["error_msg"]
    assert (await client.ok("GET", f"{A}/rules"))["count"] == 0


async def test_missing_subject_is_reported(client):
    status, body = await client.call("POST", f"{A}/rules", {"rule_name": "x"})
    assert status == 400 and "subject: required field is missing" in body["error_msg"]


@pytest.mark.parametrize("item", [
    {"subject": {"resource": "device.message", "event": "report"}, "select": "notify_data.body as b",
     "where": "notify_data.header.device_id = 'd1'", "app_type": "APP", "app_id": "app_1"},
    {"subject": {"resource": "product", "event": "delete"}, "rule_name": "名字_(1)"},
])
async def test_api_and_rule_file_accept_the_same_rule(client, item):
    # One validator: what the API stores loads as a rule file, and the other way round.
    rule = await client.ok("POST", f"{A}/rules", item, 201)
    file_item = {**item, "rule_id": rule["rule_id"]}
    config = validate_config_dict({"rules": [file_item]})
    # (The file model also has the dialect, a rule-file field the IoTDA API leaves out.)
    assert config.rules[0].model_dump(mode="json", exclude_none=True, exclude={"dialect"}) \
        | {"active": False} == rule


async def test_alibaba_dialect_fields_are_not_part_of_the_iotda_api(client):
    status, body = await client.call("POST", f"{A}/rules", {
        "subject": {"resource": "device.message", "event": "report"}, "dialect": "aliyun"})
    assert status == 400 and "dialect: not a field of IoTDA's API" in body["error_msg"]
    spec = await client.ok("GET", "/openapi.json")
    assert "dialect" not in spec["components"]["schemas"]["Rule"]["properties"]


async def test_update_changes_given_fields_only_and_activates(client):
    rule = await client.rule(select="notify_data.header.device_id as d")
    updated = await client.ok("PUT", f"{A}/rules/{rule['rule_id']}",
                              {"description": "new", "active": True, "where": None})
    assert updated == {**rule, "description": "new", "active": True}
    stopped = await client.ok("PUT", f"{A}/rules/{rule['rule_id']}", {"active": False})
    assert stopped["active"] is False
    cleared = await client.ok("PUT", f"{A}/rules/{rule['rule_id']}", {"select": "", "where": ""})
    assert (cleared["select"], cleared["where"]) == ("", "")


@pytest.mark.parametrize(("body", "fragment"), [
    ({"subject": {"resource": "device", "event": "create"}}, "subject: cannot be changed"),
    ({"nope": 1}, "nope: unknown field"),
    ({"active": "maybe"}, "active"),
    ({"where": "1 +"}, "where"),
])
async def test_invalid_update_is_refused_and_changes_nothing(client, body, fragment):
    rule = await client.rule()
    status, error = await client.call("PUT", f"{A}/rules/{rule['rule_id']}", body)
    assert status == 400 and fragment in error["error_msg"]
    assert await client.ok("GET", f"{A}/rules/{rule['rule_id']}") == rule


async def test_unknown_rule_is_404(client):
    for method, body in (("GET", None), ("PUT", {"active": True}), ("DELETE", None)):
        status, error = await client.call(method, f"{A}/rules/no-such-rule", body)
        assert (status, error["error_code"]) == (404, "IOTDA.010002")


async def test_delete(client):
    rule = await client.rule()
    await client.ok("DELETE", f"{A}/rules/{rule['rule_id']}", status=204)
    assert (await client.call("GET", f"{A}/rules/{rule['rule_id']}"))[0] == 404


async def test_rule_with_actions_cannot_be_deleted(client):
    rule = await client.rule()
    action = await client.action(rule["rule_id"])
    status, error = await client.call("DELETE", f"{A}/rules/{rule['rule_id']}")
    assert (status, error["error_code"]) == (403, "IOTDA.010037")
    await client.ok("DELETE", f"{A}/actions/{action['action_id']}", status=204)
    await client.ok("DELETE", f"{A}/rules/{rule['rule_id']}", status=204)


async def test_rule_named_by_a_policy_cannot_be_deleted(client):
    rule = await client.rule()
    await client.ok("POST", f"{A}/flowcontrol-policy",
                    {"scope": "RULE", "scope_value": rule["rule_id"], "limit": 5}, 201)
    status, error = await client.call("DELETE", f"{A}/rules/{rule['rule_id']}")
    assert status == 400
    assert f"no rule has rule_id '{rule['rule_id']}'" in error["error_msg"]


# ------------------------------------------------------------------ list


async def test_list_filters(client):
    a = await client.rule(subject={"resource": "device", "event": "create"}, rule_name="alpha")
    b = await client.rule(subject={"resource": "device", "event": "delete"}, rule_name="beta")
    c = await client.rule(subject={"resource": "product", "event": "create"}, app_type="APP",
                          app_id="space1")
    await client.ok("PUT", f"{A}/rules/{b['rule_id']}", {"active": True})

    async def ids(query: str) -> list[str]:
        body = await client.ok("GET", f"{A}/rules?{query}")
        assert body["count"] == len(body["rules"])
        return [r["rule_id"] for r in body["rules"]]

    assert await ids("") == [c["rule_id"], b["rule_id"], a["rule_id"]]  # newest first
    assert await ids("resource=device") == [b["rule_id"], a["rule_id"]]
    assert await ids("resource=device&event=create") == [a["rule_id"]]
    assert await ids("app_type=APP") == [c["rule_id"]]
    assert await ids("app_id=space1") == [c["rule_id"]]
    assert await ids("rule_name=beta") == [b["rule_id"]]
    assert await ids("active=true") == [b["rule_id"]]
    assert await ids("active=false") == [c["rule_id"], a["rule_id"]]
    assert await ids("resource=batchtask") == []
    status, error = await client.call("GET", f"{A}/rules?active=maybe")
    assert status == 400


async def test_pagination_with_marker_and_offset(client):
    created = [(await client.rule(rule_name=f"r{i}"))["rule_id"] for i in range(25)]
    newest_first = created[::-1]

    page1 = await client.ok("GET", f"{A}/rules")
    assert page1["count"] == 25 and len(page1["rules"]) == 10  # default limit 10
    assert [r["rule_id"] for r in page1["rules"]] == newest_first[:10]
    assert len(page1["marker"]) == 24 and int(page1["marker"], 16) > 0

    page2 = await client.ok("GET", f"{A}/rules?limit=10&marker={page1['marker']}")
    assert [r["rule_id"] for r in page2["rules"]] == newest_first[10:20]
    assert page2["count"] == 25  # count ignores the paging
    page3 = await client.ok("GET", f"{A}/rules?limit=10&marker={page2['marker']}")
    assert [r["rule_id"] for r in page3["rules"]] == newest_first[20:]
    empty = await client.ok("GET", f"{A}/rules?marker={page3['marker']}")
    assert empty["rules"] == [] and empty["marker"] is None

    skipped = await client.ok("GET", f"{A}/rules?limit=5&offset=7")
    assert [r["rule_id"] for r in skipped["rules"]] == newest_first[7:12]
    both = await client.ok("GET", f"{A}/rules?limit=50&offset=2&marker={page1['marker']}")
    assert [r["rule_id"] for r in both["rules"]] == newest_first[12:]


@pytest.mark.parametrize(("query", "code"), [
    ("limit=0", "IOTDA.000017"), ("limit=51", "IOTDA.000017"), ("limit=x", "IOTDA.000017"),
    ("marker=123", "IOTDA.000018"), ("marker=" + "g" * 24, "IOTDA.000018"),
    ("offset=501", "IOTDA.000006"), ("offset=-1", "IOTDA.000006"),
])
async def test_paging_parameters_out_of_range(client, query, code):
    status, error = await client.call("GET", f"{A}/rules?{query}")
    assert (status, error["error_code"]) == (400, code)


async def test_markers_stay_ordered_after_deletes(client):
    first = await client.rule()
    await client.ok("DELETE", f"{A}/rules/{first['rule_id']}", status=204)
    second = await client.rule()
    page = await client.ok("GET", f"{A}/rules?limit=1")
    # A new object never reuses a deleted one's position: newest stays first.
    assert page["rules"][0]["rule_id"] == second["rule_id"]
    assert int(page["marker"], 16) > 1
