"""Who may send (issue 11, item 11): the HTTP ingest source and the metrics
listener check bearer tokens and IoTDA push signatures before reading a
body, answer 401 without detail and count it; TLS with client certificates.
Real listeners on ephemeral ports; the signed pushes come from the engine's
own HTTP_FORWARDING sink."""

from __future__ import annotations

import asyncio
import secrets
import ssl
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from engine.config import ConfigError, validate_config_dict
from engine.destinations.base import Record
from engine.destinations.http import HttpForwarding, HttpSink, sign
from engine.runtime.metrics import Metrics
from engine.sources.http import HttpSource
from engine.sources.listener_auth import Authenticator, server_ssl_context
from tests.runtime.support import by_label

TOKEN = "t0k3n-" + "a" * 20
SIG_TOKEN = "pushToken123"
EVENT = b'{"resource":"device","event":"delete","notify_data":{}}'


async def _acking(source: HttpSource, seen: list[bytes]) -> None:
    async for batch in source.batches():
        seen.extend(batch.items)
        await batch.ack()


@pytest.fixture
async def ingest():
    metrics = Metrics()
    src = HttpSource(listen="127.0.0.1:0", path="/in", timeout=5, metrics=metrics,
                     auth=Authenticator([TOKEN], [SIG_TOKEN], max_skew_s=60))
    await src.start()
    seen: list[bytes] = []
    task = asyncio.create_task(_acking(src, seen))
    yield src, metrics, seen
    src.stop()
    await task
    await src.close()


def _unauthorized(metrics: Metrics, listener: str) -> float:
    return metrics.unauthorized.labels(listener)._value.get()


async def test_missing_or_wrong_credentials_are_refused_before_the_body(ingest):
    src, metrics, seen = ingest
    async with aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}):
            # A malformed body: a 400 would show it was read; it must not be.
            async with s.post(src.url, data=b"{oops", headers=headers) as r:
                assert r.status == 401
                assert await r.read() == b""  # no detail
        async with s.post(src.url, data=EVENT, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200 and await r.json() == {"accepted": 1}
    assert seen == [EVENT]
    assert _unauthorized(metrics, "http") == 4 and src.unauthorized == 4


async def test_signed_pushes_from_http_forwarding_are_accepted_and_replays_refused(ingest):
    src, metrics, seen = ingest
    sink = HttpSink(HttpForwarding(url=src.url, signature_enable=True, token=SIG_TOKEN))
    await sink.open()
    try:
        result = await sink.write([Record({"n": i}) for i in range(5)])
        assert result.ok, result.failures
        # The same token on the wrong side: refused.
        wrong = HttpSink(HttpForwarding(url=src.url, signature_enable=True, token="otherToken1"))
        try:
            res = await wrong.write([Record({"n": 99})])
            assert not res.ok and "401" in res.failures[0].reason
        finally:
            await wrong.close()
    finally:
        await sink.close()
    assert sorted(seen) == sorted(b'{"n":%d}' % i for i in range(5))

    ts = str(int(time.time() * 1000))
    nonce = secrets.token_hex(16)
    good = {"timestamp": ts, "nonce": nonce, "signature": sign(SIG_TOKEN, ts, nonce)}
    old_ts = str(int((time.time() - 3600) * 1000))
    stale = {"timestamp": old_ts, "nonce": "n2", "signature": sign(SIG_TOKEN, old_ts, "n2")}
    async with aiohttp.ClientSession() as s:
        async with s.post(src.url, data=EVENT, headers=good) as r:
            assert r.status == 200
        async with s.post(src.url, data=EVENT, headers=good) as r:  # the same request again
            assert r.status == 401
        async with s.post(src.url, data=EVENT, headers=stale) as r:  # outside the skew window
            assert r.status == 401
    assert _unauthorized(metrics, "http") == 3  # the wrong token, the replay, the stale one


def test_nonces_are_forgotten_after_the_window(monkeypatch):
    auth = Authenticator(signature_tokens=[SIG_TOKEN], max_skew_s=1)
    clock = [1000.0]
    monkeypatch.setattr("engine.sources.listener_auth.time.monotonic", lambda: clock[0])
    for i in range(100):
        ts = str(int(time.time() * 1000))
        assert auth.allows({"timestamp": ts, "nonce": f"n{i}",
                            "signature": sign(SIG_TOKEN, ts, f"n{i}")})
    assert len(auth._nonces) == 100
    clock[0] += 2.5  # past 2 x max_skew_s
    ts = str(int(time.time() * 1000))
    assert auth.allows({"timestamp": ts, "nonce": "last", "signature": sign(SIG_TOKEN, ts, "last")})
    assert list(auth._nonces) == ["last"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("ingest-pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=ingest test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
                 f"{name}.key", "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out",
                 f"{name}.pem", cwd=d)
    return d


async def test_tls_with_client_certificates(pki):
    config = validate_config_dict({"sources": [{"http": {
        "listen": "127.0.0.1:0", "auth": "none",
        "tls": {"cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key"),
                "client_ca_file": str(pki / "ca.pem")}}}]})
    src = HttpSource(listen="127.0.0.1:0", path="/in",
                     ssl_context=server_ssl_context(config.sources[0].options.tls))
    await src.start()
    seen: list[bytes] = []
    task = asyncio.create_task(_acking(src, seen))
    try:
        assert src.url.startswith("https://")
        anonymous = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        with_cert = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        with_cert.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.ClientError):  # no client certificate: no handshake
                async with s.post(src.url, data=EVENT, ssl=anonymous) as r:
                    await r.read()
            with pytest.raises(aiohttp.ClientError):  # plain HTTP on the TLS port
                async with s.post(src.url.replace("https", "http"), data=EVENT) as r:
                    await r.read()
            async with s.post(src.url, data=EVENT, ssl=with_cert) as r:
                assert r.status == 200
        assert seen == [EVENT]
    finally:
        src.stop()
        await task
        await src.close()


def test_tls_files_that_cannot_be_loaded_are_named(tmp_path):
    config = validate_config_dict({"sources": [{"http": {
        "auth": "none", "tls": {"cert_file": str(tmp_path / "nope.pem"),
                                "key_file": str(tmp_path / "nope.key")}}}]})
    with pytest.raises(ValueError, match="cannot load the TLS certificate .*nope.pem"):
        server_ssl_context(config.sources[0].options.tls)


async def test_metrics_endpoint_auth_keeps_health_open():
    metrics = Metrics()
    runner = await metrics.serve("127.0.0.1", 0, auth=Authenticator([TOKEN]))
    base = f"http://127.0.0.1:{metrics.port}"
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(base + "/metrics") as r:
                assert r.status == 401 and await r.read() == b""
            async with s.get(base + "/healthz") as r:
                assert r.status == 200
            async with s.get(base + "/readyz") as r:
                assert r.status == 503  # not ready, but answered without credentials
            async with s.get(base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200
                text = await r.text()
        assert 'engine_listener_unauthorized_total{listener="metrics"} 1.0' in text
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("http, fragment", [
    ({}, "auth is required"),
    ({"auth": {}}, "needs tokens and/or signature_tokens"),
    ({"auth": {"tokens": ["short"]}}, "at least 16 characters"),
    ({"auth": {"signature_tokens": ["not a token!"]}}, "3 to 32 letters or digits"),
    ({"auth": "off"}, "auth"),
])
def test_auth_config_is_required_and_checked(http, fragment):
    with pytest.raises(ConfigError) as info:
        validate_config_dict({"sources": [{"http": http}]})
    assert fragment in str(info.value)
    assert "short" not in str(info.value).replace("at least", "")


async def test_engine_run_config_wires_source_and_metrics_auth(tmp_path):
    """The same through `Worker.from_config` (what `engine run` builds)."""
    from engine.runtime.worker import Worker

    config = validate_config_dict({
        "sources": [{"http": {"listen": "127.0.0.1:0", "path": "/in",
                              "auth": {"tokens": [TOKEN]}}}],
        "metrics": {"listen": "127.0.0.1:0", "auth": {"tokens": [TOKEN]}},
        "worker": {"state_dir": str(tmp_path / "state")},
        "rules": [{"rule_id": "r", "subject": {"resource": "device", "event": "delete"}}]})
    worker = Worker.from_config(config)
    run = asyncio.create_task(worker.run())
    try:
        src = worker.sources[0]
        for _ in range(100):
            if worker.metrics.ready:
                break
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as s:
            async with s.post(src.url, data=EVENT) as r:
                assert r.status == 401
            async with s.post(src.url, data=EVENT, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200
        m = await scrape_with(f"http://127.0.0.1:{worker.metrics.port}/metrics", TOKEN)
        assert by_label(m, "engine_listener_unauthorized_total", "listener") == {"http": 1.0}
        assert by_label(m, "engine_source_received_total", "source") == {"http": 1.0}
    finally:
        worker.stop()
        await asyncio.wait_for(run, 30)


async def scrape_with(url: str, token: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as s, s.get(
            url, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
            for fam in text_string_to_metric_families(text) for smp in fam.samples}





async def test_metrics_listener_over_tls(pki):
    from engine.schema import ListenerTls

    metrics = Metrics()
    tls = ListenerTls(cert_file=str(pki / "server.pem"), key_file=str(pki / "server.key"))
    runner = await metrics.serve("127.0.0.1", 0, ssl_context=server_ssl_context(tls))
    try:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        async with aiohttp.ClientSession() as s:
            async with s.get(f"https://127.0.0.1:{metrics.port}/metrics", ssl=ctx) as r:
                assert r.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with s.get(f"http://127.0.0.1:{metrics.port}/healthz") as r:
                    await r.read()
    finally:
        await runner.cleanup()
