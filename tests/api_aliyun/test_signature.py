"""The RPC signature (seed §2.4) against `engine api`: requests signed by the
official SDK's own signer, then tampered, re-sent or signed wrongly; each is
refused with Alibaba's gateway code and changes nothing in the store."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from engine.api.aliyun.signature import sign, string_to_sign
from tests.api.conftest import AK_A, SK_A
from tests.api_aliyun.conftest import Sdk, stored


def signed_url(endpoint: str, params: dict[str, str | None], ak: str = AK_A, sk: str = SK_A,
               timestamp: datetime | None = None, method: str = "POST") -> str:
    """A URL signed by aliyunsdkcore's RPC signer (its string-to-sign and HMAC)."""
    from aliyunsdkcore.auth.composer import rpc_signature_composer as composer

    query = {"Version": "2018-01-20", "RegionId": "cn-shanghai", "Format": "JSON",
             "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0",
             "SignatureNonce": uuid.uuid4().hex, "AccessKeyId": ak,
             "Timestamp": (timestamp or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
             **params}
    query = {k: v for k, v in query.items() if v is not None}  # None: leave the parameter out
    text = getattr(composer, "__compose_string_to_sign")(method, query)
    query["Signature"] = getattr(composer, "__get_signature")(text, sk)
    from urllib.parse import urlencode

    return f"http://{endpoint}/?" + urlencode(query).replace("+", "%20")


def send_raw(url: str) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def send(url: str, method: str = "POST") -> tuple[int, dict]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_seed_example_signs_as_the_seed_says():
    # Seed §2.4 example 1: AccessKeySecret "testsecret" gives this signature.
    params = {"MessageContent": "aGVsbG93b3JsZA=", "Action": "Pub",
              "Timestamp": "2017-10-02T09:39:41Z", "SignatureVersion": "1.0",
              "ServiceCode": "iot", "Format": "XML", "Qos": "0",
              "SignatureNonce": "0715a395-aedf-4a41-bab7-746b43d38d88",
              "Version": "2017-04-20", "AccessKeyId": "testid",
              "SignatureMethod": "HMAC-SHA1", "RegionId": "cn-shanghai",
              "ProductKey": "12345abcdeZ", "TopicFullName": "/productKey/testdevice/get"}
    text = string_to_sign("GET", params)
    assert text.startswith("GET&%2F&AccessKeyId%3Dtestid%26Action%3DPub%26Format%3DXML%26"
                           "MessageContent%3DaGVsbG93b3JsZA%253D%26")
    assert sign("testsecret", text) == "Y9eWn4nF8QPh3c4zAFkM/k/u7eA="


def test_signed_requests_get_and_post(server):
    endpoint, db = server
    status, body = send(signed_url(endpoint, {"Action": "CreateRule", "Name": "by_post",
                                              "Select": "*"}))
    assert status == 200 and body["Success"] is True, body
    status, body = send(signed_url(endpoint, {"Action": "ListRule"}, method="GET"), "GET")
    assert status == 200 and [r["Name"] for r in body["Data"]] == ["by_post"], body


def test_refused_signatures_change_nothing(server):
    endpoint, db = server
    Sdk(endpoint).ok("CreateRule", Name="existing", Select="*")
    before = stored(db)
    create = {"Action": "CreateRule", "Name": "forged_rule", "Select": "*"}

    tampered = signed_url(endpoint, create).replace("forged_rule", "other_rule")
    status, body = send(tampered)
    assert (status, body["Code"]) == (400, "SignatureDoesNotMatch"), body
    assert body["RequestId"] and "other_rule" in body["Message"]  # the server's string to sign

    status, body = send(signed_url(endpoint, create, sk="not-the-secret"))
    assert (status, body["Code"]) == (400, "SignatureDoesNotMatch"), body

    status, body = send(signed_url(endpoint, create, ak="AKUNKNOWN0001"))
    assert (status, body["Code"]) == (404, "InvalidAccessKeyId.NotFound"), body

    stale = datetime.now(UTC) - timedelta(minutes=16)
    status, body = send(signed_url(endpoint, create, timestamp=stale))
    assert (status, body["Code"]) == (400, "InvalidTimeStamp.Expired"), body
    ahead = datetime.now(UTC) + timedelta(minutes=16)
    status, body = send(signed_url(endpoint, create, timestamp=ahead))
    assert (status, body["Code"]) == (400, "InvalidTimeStamp.Expired"), body

    unsigned = signed_url(endpoint, create).split("&Signature=")[0]
    status, body = send(unsigned)
    assert (status, body["Code"]) == (400, "MissingParameter.Signature"), body

    status, body = send(signed_url(endpoint, {"Action": "CreateProductTopic"}))
    assert (status, body["Code"]) == (400, "UnsupportedOperation"), body
    assert stored(db) == before

    once = signed_url(endpoint, {"Action": "CreateRule", "Name": "replayed", "Select": "*"})
    assert send(once)[1]["Success"] is True
    after_first = stored(db)
    status, body = send(once)  # the same request again: the nonce was used
    assert (status, body["Code"]) == (400, "SignatureNonceUsed"), body
    assert stored(db) == after_first


def test_the_sdk_reports_a_wrong_secret(server):
    from aliyunsdkcore.acs_exception.exceptions import ServerException

    endpoint, db = server
    with pytest.raises(ServerException) as caught:
        Sdk(endpoint, AK_A, "wrong-secret").call("CreateRule", Name="nope_rule", Select="*")
    # The server's string to sign equals the SDK's: the SDK concludes the secret is wrong.
    assert caught.value.get_error_code() == "InvalidAccessKeySecret"
    assert stored(db) == []


def test_form_body_parameters_are_signed_too(server):
    """The SDK signs body parameters (add_body_params) together with the query."""
    from urllib.parse import urlencode

    from aliyunsdkcore.auth.composer.rpc_signature_composer import get_signed_url

    endpoint, db = server
    query = {"Action": "CreateRule", "Version": "2018-01-20", "RegionId": "cn-shanghai"}
    form = {"Name": "from_body", "Select": "a, b", "Where": "a > 1"}
    path, _ = get_signed_url(dict(query), AK_A, SK_A, "JSON", "POST", form)

    def post(body: dict[str, str]) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://{endpoint}{path}", data=urlencode(body).encode(), method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    status, body = post({**form, "Where": "a > 2"})  # changed after signing
    assert (status, body["Code"]) == (400, "SignatureDoesNotMatch"), body
    status, body = post(form)
    assert status == 200 and body["Success"] is True, body
    info = Sdk(endpoint).ok("GetRule", RuleId=body["RuleId"])["RuleInfo"]
    assert (info["Name"], info["Select"], info["Where"]) == ("from_body", "a, b", "a > 1")


def test_xml_is_the_default_format(server):
    """Seed §2.3: without Format (or Format=XML) the answer is XML."""
    from xml.etree import ElementTree

    endpoint, _ = server
    status, kind, raw = send_raw(signed_url(endpoint, {"Action": "CreateRule", "Format": "XML",
                                                       "Name": "xml_rule", "Select": "*"}))
    root = ElementTree.fromstring(raw)
    assert (status, kind, root.tag) == (200, "application/xml", "CreateRuleResponse")
    assert root.findtext("Success") == "true" and int(root.findtext("RuleId")) >= 1000
    status, kind, raw = send_raw(signed_url(endpoint, {"Action": "ListRule", "Format": None}))
    root = ElementTree.fromstring(raw)
    assert (status, root.tag) == (200, "ListRuleResponse"), raw
    assert [r.findtext("Name") for r in root.find("Data")] == ["xml_rule"]
    status, kind, raw = send_raw(signed_url(endpoint, {"Action": "CreateProductTopic", "Format": "XML"}))
    root = ElementTree.fromstring(raw)
    assert (status, root.tag, root.findtext("Code")) == (400, "Error", "UnsupportedOperation")
