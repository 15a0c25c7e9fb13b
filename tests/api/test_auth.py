"""Authentication (X-Auth-Token, AK/SK signatures), project isolation and
request limits.

Requests are signed here by `sign`, written from Huawei's published APIG
signing algorithm ("SDK-HMAC-SHA256") independently of engine.api.auth, so
a bug shared by signer and verifier cannot make the tests pass.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote, urlsplit

import orjson
import pytest

from engine.config.limits import ApiLimits
from tests.api.conftest import AK_A, AK_B, RULE, SK_A, SK_B, TOKEN_A, TOKEN_B, A, B

UNAUTHORIZED = {"error_code": "IOTDA.000002", "error_msg": "Authentication failed."}


def sign(method: str, url: str, body: bytes, ak: str, sk: str, *, date: datetime | None = None,
         headers: dict[str, str] | None = None, signed_names: list[str] | None = None
         ) -> dict[str, str]:
    """The headers of a request signed the documented way: canonical request
    (method, URI with trailing slash, sorted encoded query, lower-cased
    signed headers, hex SHA-256 of the body) -> string to sign -> HMAC-SHA256."""
    parts = urlsplit(url)
    stamp = (date or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    all_headers = {"Host": parts.netloc, "X-Sdk-Date": stamp, "Content-Type": "application/json",
                   **(headers or {})}
    uri = "/".join(quote(unquote(s), safe="~") for s in parts.path.split("/"))
    uri += "" if uri.endswith("/") else "/"
    pairs = sorted(tuple(unquote(x) for x in (p.split("=", 1) + [""])[:2])
                   for p in parts.query.split("&") if p)
    query = "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in pairs)
    lower = {k.lower(): v for k, v in all_headers.items()}
    names = signed_names or sorted(lower)
    canonical = "\n".join([
        method, uri, query, "".join(f"{n}:{lower[n].strip()}\n" for n in names), ";".join(names),
        hashlib.sha256(body).hexdigest(),
    ])
    to_sign = f"SDK-HMAC-SHA256\n{stamp}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(sk.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    return {**all_headers, "Authorization":
            f"SDK-HMAC-SHA256 Access={ak}, SignedHeaders={';'.join(names)}, Signature={signature}"}


async def signed(client, method: str, path: str, body: object = None, ak: str = AK_A,
                 sk: str = SK_A, send: bytes | None = None, **kw) -> tuple[int, object]:
    raw = orjson.dumps(body) if body is not None else b""
    url = str(client.http.make_url(path))
    headers = sign(method, url, raw, ak, sk, **kw)
    async with client.http.request(method, path, data=raw if send is None else send,
                                   headers=headers) as resp:
        return resp.status, (await resp.json() if resp.content_type == "application/json" else None)


# ------------------------------------------------------------------ tokens


async def test_token_of_the_project_is_accepted(client):
    assert (await client.call("GET", f"{A}/rules"))[0] == 200
    assert (await client.as_token(TOKEN_B).call("GET", f"{B}/rules"))[0] == 200


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN_A + "x", TOKEN_A[:-1], TOKEN_B])
async def test_any_other_token_is_401_without_detail(client, token):
    status, body = await client.as_token(token).call("GET", f"{A}/rules")
    assert (status, body) == (401, UNAUTHORIZED)


async def test_unknown_project_is_401(client):
    status, body = await client.call("GET", "/v5/iot/proj-z/routing-rule/rules")
    assert (status, body) == (401, UNAUTHORIZED)


async def test_unknown_path_is_401_anonymous_and_404_authenticated(client):
    assert (await client.as_token(None).call("GET", "/v5/nothing"))[0] == 401
    status, body = await client.call("GET", "/v5/nothing")
    assert (status, body["error_code"]) == (404, "IOTDA.000029")
    status, body = await client.call("PATCH", f"{A}/rules")
    assert (status, body["error_code"]) == (405, "IOTDA.000019")


async def test_openapi_needs_a_credential(client):
    assert (await client.as_token(None).call("GET", "/openapi.json"))[0] == 401
    doc = await client.as_token(TOKEN_B).ok("GET", "/openapi.json")
    assert doc["openapi"].startswith("3.")


# ------------------------------------------------------------------ AK/SK


async def test_signed_requests_are_accepted(client):
    status, rule = await signed(client, "POST", f"{A}/rules", RULE)
    assert status == 201, rule
    status, listed = await signed(client, "GET", f"{A}/rules?limit=5&rule_name=status&offset=0")
    assert status == 200 and listed["count"] == 1
    status, _ = await signed(client, "PUT", f"{A}/rules/{rule['rule_id']}", {"active": True})
    assert status == 200
    status, _ = await signed(client, "DELETE", f"{A}/rules/{rule['rule_id']}")
    assert status == 204
    status, _ = await signed(client, "GET", f"{B}/rules", ak=AK_B, sk=SK_B)
    assert status == 200


async def test_query_values_are_canonicalised_like_the_sdk(client):
    # Reserved characters, spaces, plus signs and non-ASCII: %XX on the wire and in the signature.
    await client.rule(rule_name="a&b%c#(d)?")
    status, listed = await signed(client, "GET",
                                  f"{A}/rules?rule_name={quote('a&b%c#(d)?', safe='')}&limit=2")
    assert status == 200 and listed["count"] == 1
    status, _ = await signed(client, "GET", f"{A}/rules?rule_name={quote('名 字+', safe='')}")
    assert status == 200


@pytest.mark.parametrize("case", ["tampered body", "wrong sk", "other project's key",
                                  "stale date", "future date", "date not signed",
                                  "host not signed", "unknown ak"])
async def test_bad_signatures_are_401(client, case):
    kw: dict = {}
    path, ak, sk = f"{A}/rules", AK_A, SK_A
    if case == "tampered body":
        kw["send"] = orjson.dumps({**RULE, "rule_name": "evil"})
    elif case == "wrong sk":
        sk = SK_A + "x"
    elif case == "other project's key":
        ak, sk = AK_B, SK_B
    elif case == "stale date":
        kw["date"] = datetime.now(UTC) - timedelta(minutes=16)
    elif case == "future date":
        kw["date"] = datetime.now(UTC) + timedelta(minutes=16)
    elif case == "date not signed":
        kw["signed_names"] = ["content-type", "host"]
    elif case == "host not signed":
        kw["signed_names"] = ["content-type", "x-sdk-date"]
    elif case == "unknown ak":
        ak = "AKUNKNOWN"
    status, body = await signed(client, "POST", path, RULE, ak=ak, sk=sk, **kw)
    assert (status, body) == (401, UNAUTHORIZED)
    assert (await client.ok("GET", f"{A}/rules"))["count"] == 0


async def test_clock_skew_within_15_minutes_is_accepted(client):
    for minutes in (-14, 14):
        date = datetime.now(UTC) + timedelta(minutes=minutes)
        assert (await signed(client, "GET", f"{A}/rules", date=date))[0] == 200


async def test_garbled_authorization_header_is_401(client):
    for value in ("SDK-HMAC-SHA256", "Basic abc", "SDK-HMAC-SHA256 Access=AK, Signature=00"):
        status, body = await client.as_token(None).call(
            "GET", f"{A}/rules", headers={"Authorization": value, "X-Sdk-Date": "x"})
        assert (status, body) == (401, UNAUTHORIZED)


async def test_no_secret_is_logged(client, caplog):
    caplog.set_level(logging.DEBUG)
    await client.as_token(TOKEN_A + "x").call("GET", f"{A}/rules")
    await signed(client, "GET", f"{A}/rules", sk=SK_A + "x")
    await client.call("POST", f"{A}/rules", {**RULE, "where": "1 +"})
    text = caplog.text
    for secret in (TOKEN_A, SK_A, SK_B, TOKEN_B):
        assert secret not in text


# ------------------------------------------------------------------ isolation


async def test_a_project_cannot_see_or_change_another_projects_objects(client):
    rule = await client.rule()
    action = await client.action(rule["rule_id"])
    b = client.as_token(TOKEN_B)
    for method, path, body in [
        ("GET", f"{B}/rules/{rule['rule_id']}", None),
        ("PUT", f"{B}/rules/{rule['rule_id']}", {"active": True}),
        ("DELETE", f"{B}/rules/{rule['rule_id']}", None),
        ("GET", f"{B}/actions/{action['action_id']}", None),
        ("DELETE", f"{B}/actions/{action['action_id']}", None),
        ("POST", f"{B}/rules/{rule['rule_id']}/test", {"event": {}}),
        ("GET", f"{B}/rules/{rule['rule_id']}/metrics", None),
        ("POST", f"{B}/actions", {"rule_id": rule["rule_id"], "channel": "HTTP_FORWARDING",
                                  "channel_detail": {"http_forwarding": {"url": "http://x/"}}}),
    ]:
        status, _ = await b.call(method, path, body)
        assert status == 404, (method, path)
    assert (await b.ok("GET", f"{B}/rules"))["count"] == 0
    assert (await b.ok("GET", f"{B}/actions"))["count"] == 0
    # Project A's objects are untouched.
    assert (await client.ok("GET", f"{A}/rules/{rule['rule_id']}"))["active"] is False
    assert (await client.ok("GET", f"{A}/actions"))["count"] == 1


async def test_same_client_chosen_id_in_two_projects(client):
    await client.rule(rule_id="shared")
    await client.as_token(TOKEN_B).rule(base=B, rule_id="shared", rule_name="other")
    assert (await client.ok("GET", f"{A}/rules/shared"))["rule_name"] == "status"


# ------------------------------------------------------------------ request limits


async def test_malformed_bodies(client):
    status, body = await client.call("POST", f"{A}/rules", data=b"{not json",
                                     headers={"Content-Type": "application/json"})
    assert (status, body["error_code"]) == (400, "IOTDA.000008")
    status, body = await client.call("POST", f"{A}/rules", [1, 2])
    assert (status, body["error_code"]) == (400, "IOTDA.000008")
    status, body = await client.call("POST", f"{A}/rules", data=b"x=1",
                                     headers={"Content-Type": "text/plain"})
    assert (status, body["error_code"]) == (415, "IOTDA.000036")


class TestLimits:
    @pytest.fixture
    def limits(self) -> ApiLimits:
        return ApiLimits(max_body_bytes=2048, rate=1, burst=5)

    async def test_body_size_limit(self, client):
        big = {**RULE, "description": "x" * 4000}
        status, body = await client.call("POST", f"{A}/rules", big)
        assert (status, body["error_code"]) == (413, "IOTDA.014116")

    async def test_rate_limit_per_credential(self, client):
        statuses = [(await client.call("GET", f"{A}/rules"))[0] for _ in range(8)]
        assert statuses[:5] == [200] * 5 and statuses[5:] == [429] * 3
        async with client.http.get(f"{A}/rules", headers={"X-Auth-Token": TOKEN_A}) as resp:
            assert resp.headers["Retry-After"] == "1"
            assert (await resp.json())["error_code"] == "IOTDA.000023"
        # Another credential has its own budget.
        assert (await client.as_token(TOKEN_B).call("GET", f"{B}/rules"))[0] == 200


# ------------------------------------------------------------------ replay (issue 11, item 12)


async def test_replayed_signed_request_is_accepted_within_the_window_as_by_iotda(client):
    # Documented behaviour (docs/RELIABILITY.md "Replayed management API
    # requests"): APIG signatures carry no nonce, and the official SDK signs
    # two identical requests in one second identically, so the server cannot
    # tell a replay from a client's own repeat. The same signed bytes sent
    # again within 15 minutes are a second request...
    date = datetime.now(UTC) - timedelta(minutes=10)
    first = await signed(client, "POST", f"{A}/rules", RULE, date=date)
    again = await signed(client, "POST", f"{A}/rules", RULE, date=date)
    assert (first[0], again[0]) == (201, 201) and first[1]["rule_id"] != again[1]["rule_id"]

    # ...unless the create names its id (the extension for idempotent creates):
    # a replay, or a client's retry after a lost answer, creates nothing.
    body = {**RULE, "rule_id": "created-once"}
    assert (await signed(client, "POST", f"{A}/rules", body, date=date))[0] == 201
    status, error = await signed(client, "POST", f"{A}/rules", body, date=date)
    assert (status, error["error_code"]) == (400, "IOTDA.010006")
    listed = await client.ok("GET", f"{A}/rules")
    assert listed["count"] == 3

    # Past the window the same request is refused.
    stale = datetime.now(UTC) - timedelta(minutes=15, seconds=30)
    assert await signed(client, "POST", f"{A}/rules", RULE, date=stale) == (401, UNAUTHORIZED)
