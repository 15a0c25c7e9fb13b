"""HTTP_FORWARDING against real in-process aiohttp receivers (plain and TLS)."""

from __future__ import annotations

import asyncio
import ssl

import orjson
import pytest
from aiohttp import web
from pydantic import ValidationError

from engine.destinations.http import HttpForwarding, HttpSink, sign, verify_signature
from tests.destinations.support import HOST, closed_port, records

TOKEN = "myToken42"


class Receiver:
    """A real HTTP server on 127.0.0.1 whose answer each test chooses."""

    def __init__(self, status: int = 200, delay: float = 0.0, token: str | None = None):
        self.status, self.delay, self.token = status, delay, token
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.sni: list[str | None] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.token is not None:
            h = request.headers
            if not verify_signature(self.token, h.get("timestamp", ""), h.get("nonce", ""),
                                    h.get("signature", "")):
                return web.Response(status=401, text="bad signature")
        self.bodies.append(orjson.loads(body))
        self.headers.append(dict(request.headers))
        return web.Response(status=self.status)

    async def start(self, ssl_ctx: ssl.SSLContext | None = None) -> str:
        app = web.Application()
        app.router.add_post("/push", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, HOST, 0, ssl_context=ssl_ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return f"{'https' if ssl_ctx else 'http'}://{HOST}:{self.port}/push"

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


@pytest.fixture
async def receiver():
    made: list[Receiver] = []

    async def make(**kw) -> tuple[Receiver, str]:
        r = Receiver(**kw)
        made.append(r)
        return r, await r.start()

    yield make
    for r in made:
        await r.stop()


async def run(config: dict, recs) -> tuple:
    sink = HttpSink(HttpForwarding(**config))
    await sink.open()
    try:
        return await sink.write(recs)
    finally:
        await sink.close()


# ------------------------------------------------------------------ signature


def test_signature_matches_iotda_scheme():
    # printf '%s' 1617765225000 abc123nonce myToken42 | sha256sum  (sorted order)
    expected = "7e7e2052bce4a419d4d88bc81500cfb87062e58f7176e4fab499ff6d2d136f3d"
    assert sign("myToken42", "1617765225000", "abc123nonce") == expected
    assert verify_signature("myToken42", "1617765225000", "abc123nonce", expected)
    assert verify_signature("myToken42", "1617765225000", "abc123nonce", expected.upper())
    assert not verify_signature("myToken43", "1617765225000", "abc123nonce", expected)
    assert not verify_signature("myToken42", "1617765225001", "abc123nonce", expected)
    assert not verify_signature("myToken42", "1617765225000", "abc123nonce", "é" + expected)


def test_config_rules_and_secret_hiding():
    with pytest.raises(ValidationError, match="token is required"):
        HttpForwarding(url="http://h/x", signature_enable=True)
    with pytest.raises(ValidationError, match="cn_name is required"):
        HttpForwarding(url="https://h/x", sni_enable=True)
    with pytest.raises(ValidationError) as e:
        HttpForwarding(url="http://h/x", signature_enable=True, token="bad-token!")
    assert "bad-token" not in str(e.value)
    with pytest.raises(ValidationError):
        HttpForwarding(url="ftp://h/x")
    c = HttpForwarding(url="http://h/x", signature_enable=True, token=TOKEN)
    assert TOKEN not in repr(c) and TOKEN not in str(c.model_dump())
    assert c.timeout_s == 15.0


# ------------------------------------------------------------------ delivery


async def test_happy_path_signed_exact_content(receiver):
    r, url = await receiver(token=TOKEN)
    recs = records(3)
    result = await run({"url": url, "signature_enable": True, "token": TOKEN}, recs)
    assert result.ok
    assert r.bodies == [x.payload for x in recs]
    for h in r.headers:
        assert h["Content-Type"] == "application/json"
        assert len(h["nonce"]) == 32 and h["timestamp"].isdigit()
    assert len({h["nonce"] for h in r.headers}) == 3


async def test_wrong_token_is_a_permanent_failure(receiver):
    _, url = await receiver(token=TOKEN)
    result = await run({"url": url, "signature_enable": True, "token": "otherToken"}, records(4))
    assert len(result.failures) == 4
    assert all(not f.retryable and "401" in f.reason for f in result.failures.values())


async def test_batch_of_10000(receiver):
    r, url = await receiver()
    recs = records(10_000)
    result = await run({"url": url}, recs)
    assert result.ok
    levels = sorted(b["notify_data"]["body"]["services"][0]["properties"]["batteryLevel"]
                    for b in r.bodies)
    assert levels == list(range(10_000))


async def test_404_is_never_success(receiver):
    r, url = await receiver(status=404)
    result = await run({"url": url}, records(5))
    assert len(r.bodies) == 5
    assert set(result.failures) == set(range(5))
    assert all(not f.retryable and "HTTP 404" in f.reason for f in result.failures.values())


@pytest.mark.parametrize("status", [500, 503, 429, 408])
async def test_server_errors_are_retryable(receiver, status):
    _, url = await receiver(status=status)
    result = await run({"url": url}, records(2))
    assert [f.retryable for f in result.failures.values()] == [True, True]
    assert all(str(status) in f.reason for f in result.failures.values())


async def test_redirect_is_not_success(receiver):
    _, url = await receiver(status=302)
    result = await run({"url": url}, records(1))
    assert result.failures[0].retryable is False


async def test_destination_down_is_retryable():
    result = await run({"url": f"http://{HOST}:{closed_port()}/push"}, records(3))
    assert len(result.failures) == 3
    assert all(f.retryable and "connection" in f.reason for f in result.failures.values())


async def test_timeout_is_retryable(receiver):
    _, url = await receiver(delay=0.8)
    result = await run({"url": url, "timeout_s": 0.2}, records(2))
    assert all(f.retryable and "timeout" in f.reason for f in result.failures.values())


# ------------------------------------------------------------------ TLS


@pytest.fixture
async def tls_receiver(pki):
    server_names: list[str | None] = []
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.cert, pki.key)
    ctx.sni_callback = lambda sock, name, c: server_names.append(name)
    r = Receiver()
    url = await r.start(ctx)
    r.sni = server_names
    yield r, url
    await r.stop()


async def test_https_with_ca_file(tls_receiver, pki):
    r, url = tls_receiver
    recs = records(2)
    result = await run({"url": url, "cert_id": "my-ca", "ca_file": str(pki.ca)}, recs)
    assert result.ok
    assert r.bodies == [x.payload for x in recs]


async def test_https_untrusted_ca_is_permanent(tls_receiver, pki):
    r, url = tls_receiver
    result = await run({"url": url, "ca_file": str(pki.other_ca)}, records(2))
    assert len(result.failures) == 2 and not r.bodies
    assert all(not f.retryable and "TLS" in f.reason for f in result.failures.values())


async def test_https_sni_sends_cn_name(tls_receiver, pki):
    r, url = tls_receiver
    port = url.split(":")[2].split("/")[0]
    result = await run({"url": url, "ca_file": str(pki.ca), "sni_enable": True,
                        "cn_name": f"iot.example.test:{port}"}, records(1))
    assert result.ok
    assert r.sni == ["iot.example.test"]
