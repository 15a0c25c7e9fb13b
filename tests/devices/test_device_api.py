"""The HTTPS device API (seed §3) over a real TLS listener: authentication
and its failure modes, token expiry and ownership, reports -> notifications."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time

import aiohttp
import orjson
import pytest

from engine.schema import ListenerTls
from engine.sources.device_api import DeviceApiSource, password_for
from engine.sources.device_registry import Registry, RegistryConfig
from engine.sources.listener_auth import server_ssl_context

REGISTRY = {
    "products": [{"product_id": "thermo", "app_id": "app1"}],
    "devices": [
        {"device_id": "dev_1", "node_id": "n1", "product_id": "thermo", "secret": "s3cret-1"},
        {"device_id": "dev_2", "product_id": "thermo", "secret": "s3cret-2"},
        {"device_id": "gw_1", "product_id": "thermo", "secret": "gw-secret"},
        {"device_id": "child_1", "product_id": "thermo", "gateway_id": "gw_1"},
        {"device_id": "cold", "product_id": "thermo", "secret": "x", "frozen": True},
        {"device_id": "nosecret", "product_id": "thermo"},
    ],
}


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
async def api(tls):
    cert, key = tls
    src = DeviceApiSource(registry=Registry(RegistryConfig.model_validate(REGISTRY)),
                          listen="127.0.0.1:0", token_ttl=600,
                          ssl_context=server_ssl_context(
                              ListenerTls(cert_file=str(cert), key_file=str(key))))
    await src.start()
    got: list[dict] = []

    async def pipeline():  # acks every batch, keeps what it saw
        async for batch in src.batches():
            got.extend(orjson.loads(x) for x in batch.items)
            await batch.ack()

    task = asyncio.create_task(pipeline())
    client_ctx = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as s:
        yield src, s, got
    src.stop()
    await task
    await src.close()


def _stamp(t: float) -> str:
    return time.strftime("%Y%m%d%H", time.gmtime(t))


async def _auth(src, s, device="dev_1", secret="s3cret-1", sign_type=0, timestamp=None):
    ts = timestamp or _stamp(time.time())
    body = {"device_id": device, "sign_type": sign_type, "timestamp": ts,
            "password": password_for(secret, ts)}
    async with s.post(src.url + "/v5/device-auth", json=body) as r:
        return r.status, await r.json()


async def test_auth_then_reports_become_notifications(api):
    src, s, got = api
    status, body = await _auth(src, s)
    assert status == 200 and body["expires_in"] == 600 and len(body["access_token"]) >= 32
    assert [(n["resource"], n["notify_data"]["body"]["status"]) for n in got] == [
        ("device.status", "ONLINE")]
    headers = {"access_token": body["access_token"]}
    services = [{"service_id": "s", "properties": {"v": 1}, "event_time": "2021-08-13T10:10:10.555Z"}]
    async with s.post(src.url + "/v5/devices/dev_1/sys/properties/report", headers=headers,
                      json={"services": services}) as r:
        assert r.status == 200
    async with s.post(src.url + "/v5/devices/dev_1/sys/messages/up", headers=headers,
                      json={"name": "n", "id": "m-1", "content": "messageUp"}) as r:
        assert r.status == 200
    prop, msg = got[1:]
    header = {"device_id": "dev_1", "product_id": "thermo", "app_id": "app1", "node_id": "n1",
              "gateway_id": "dev_1"}
    assert prop["notify_data"] == {"header": header, "body": {"services": services}}
    assert (prop["event_time"], prop["event_time_ms"]) == ("20210813T101010Z",
                                                           "2021-08-13T10:10:10.555Z")
    assert msg["request_id"] == "m-1" and msg["notify_data"]["body"]["content"] == "messageUp"


async def test_gateway_child_report_and_foreign_child(api):
    src, s, got = api
    _, body = await _auth(src, s, "gw_1", "gw-secret")
    headers = {"access_token": body["access_token"]}
    url = src.url + "/v5/devices/gw_1/sys/gateway/sub-devices/properties/report"
    report = {"devices": [{"device_id": "child_1",
                           "services": [{"service_id": "s", "properties": {"h": 124}}]}]}
    async with s.post(url, headers=headers, json=report) as r:
        assert r.status == 200
    assert got[-1]["notify_data"]["header"]["device_id"] == "child_1"
    assert got[-1]["notify_data"]["header"]["gateway_id"] == "gw_1"
    report["devices"][0]["device_id"] = "dev_2"
    async with s.post(url, headers=headers, json=report) as r:
        assert r.status == 400 and (await r.json())["error_code"] == "IOTDA.021104"


@pytest.mark.parametrize("device, secret, sign_type, hours, status, code", [
    ("dev_1", "wrong", 0, 0, 401, "IOTDA.00002"),       # wrong password
    ("nobody", "s3cret-1", 0, 0, 401, "IOTDA.00002"),   # unknown device
    ("cold", "x", 0, 0, 401, "IOTDA.00002"),            # frozen
    ("dev_1", "s3cret-1", 1, -5, 401, "IOTDA.00002"),   # sign_type 1: timestamp skew
    ("dev_1", "s3cret-1", 0, -5, 200, None),            # sign_type 0: no time check
    ("dev_1", "s3cret-1", 1, 0, 200, None),
])
async def test_auth_failures(api, device, secret, sign_type, hours, status, code):
    src, s, got = api
    got_status, body = await _auth(src, s, device, secret, sign_type,
                                   _stamp(time.time() + hours * 3600))
    assert got_status == status
    if code:
        assert body == {"error_code": code, "error_msg": "The request is unauthorized."}
        assert got == []  # no ONLINE event for a failed login


async def test_device_without_secret_and_bad_input(api):
    src, s, _ = api
    assert (await _auth(src, s, "nosecret", "anything"))[0] == 401
    for bad in ({"device_id": "dev_1"}, {"device_id": "dev_1", "sign_type": 2,
                                         "timestamp": "2019120219", "password": "0" * 64},
                {"device_id": "dev_1", "sign_type": 0, "timestamp": "2019-12-02",
                 "password": "0" * 64}):
        async with s.post(src.url + "/v5/device-auth", json=bad) as r:
            assert r.status == 400 and (await r.json())["error_code"] == "IOTDA.00006"


async def test_tokens_missing_foreign_expired_and_replaced(api):
    src, s, got = api
    _, one = await _auth(src, s)
    _, two = await _auth(src, s, "dev_2", "s3cret-2")
    url = src.url + "/v5/devices/dev_1/sys/messages/up"
    for headers in ({}, {"access_token": "nope"}, {"access_token": two["access_token"]}):
        # Another device's token is refused; nothing is parsed first (bad JSON).
        async with s.post(url, headers=headers, data=b"{not json") as r:
            assert r.status == 403
            assert await r.json() == {"error_code": "IOTDA.00004",
                                      "error_msg": "Invalid access token."}
    ok = {"access_token": one["access_token"]}
    async with s.post(url, headers=ok, data=b"{not json") as r:
        assert r.status == 200  # a message may be any text
    # A new login: the old token lasts 30 s more, then expires.
    _, newer = await _auth(src, s)
    async with s.post(url, headers=ok, data=b"x") as r:
        assert r.status == 200
    real = time.time
    src.clock = lambda: real() + 31
    async with s.post(url, headers=ok, data=b"x") as r:
        assert r.status == 403
    async with s.post(url, headers={"access_token": newer["access_token"]}, data=b"x") as r:
        assert r.status == 200
    src.clock = lambda: real() + 601  # token_ttl passed
    async with s.post(url, headers={"access_token": newer["access_token"]}, data=b"x") as r:
        assert r.status == 403


async def test_plain_http_is_refused_by_the_tls_listener(api):
    src, _, _ = api
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientError):
            async with plain.post(src.url.replace("https", "http") + "/v5/device-auth",
                                  json={}) as r:
                await r.read()


async def test_device_api_source_from_a_rule_file(tls):
    """`sources: [{device_api: {tls}}]` + `registry:` -> the source the worker
    builds: HTTPS with main's ListenerTls, devices from the registry, refusals
    counted by status."""
    from engine.config import validate_config_dict
    from engine.runtime.assembly import build_source, source_context
    from engine.runtime.deadletter import DeadLetters

    cert, key = tls
    config = validate_config_dict({
        "sources": [{"device_api": {"listen": "127.0.0.1:0", "token_ttl": 600,
                                    "tls": {"cert_file": str(cert), "key_file": str(key)}}}],
        "registry": REGISTRY})
    src = build_source(config.sources[0], context=source_context(config, DeadLetters()))
    assert isinstance(src, DeviceApiSource) and src.url.startswith("https://")
    await src.start()
    try:
        client_ctx = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as s:
            assert (await _auth(src, s, "dev_1", "wrong"))[0] == 401
            batches = src.batches()
            login = asyncio.create_task(_auth(src, s))
            batch = await asyncio.wait_for(anext(batches), 10)
            assert orjson.loads(batch.items[0])["notify_data"]["header"]["node_id"] == "n1"
            await batch.ack()
            assert (await login)[0] == 200
        assert src.rejected["401"] == 1 and src.rejected["403"] == 0
    finally:
        src.stop()
        await src.close()
