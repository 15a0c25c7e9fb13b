"""Secrets (passwords, tokens) never show in what the engine writes: logs,
metrics, dead letters, its state directory - also when destinations fail
or refuse the credentials. TLS verification is on by default for every
destination that has it; turning it off is explicit and logged once."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from engine.destinations import CHANNELS
from engine.destinations.common import client_ssl_context
from tests.reliability.support import (
    RULE,
    Engine,
    HttpReceiverProcess,
    delete_topic,
    free_port,
    make_events,
    make_topic,
    produce_paced,
)

TOKEN = "Tok7c1e9a55x"              # HTTP signature token
DB_PASSWORD = "Rel-pw-4f9c2e71"     # the second MariaDB's user (see conftest)
WRONG_PASSWORD = "Wrong-pw-91d3e0"
AMQP_PASSWORD = "Amqp-pw-3b8f61"


def everything_written(tmp_path) -> bytes:
    return b"".join(p.read_bytes() for p in tmp_path.rglob("*")
                    if p.is_file() and p.name != "engine.yaml" and "received-" not in p.name)


def assert_no_secret(blob: bytes, *secrets: str) -> None:
    for s in secrets:
        assert s.encode() not in blob, f"secret {s!r} written"


@pytest.mark.services
async def test_secrets_stay_out_of_logs_metrics_and_state(kafka, maria_node, tmp_path):
    maria_node.sql("CREATE TABLE IF NOT EXISTS rel.sec (seq BIGINT, device VARCHAR(64))")
    items, expected = make_events(3000, seed=9)
    topic = await make_topic(kafka, f"rel-sec-{uuid.uuid4().hex[:8]}")
    rx = HttpReceiverProcess(tmp_path, mode="fail")   # every push answered 503
    rx.start()
    port = free_port()
    mysql = {"address": {"ip": "127.0.0.1", "port": maria_node.port}, "db_name": "rel",
             "username": "rel", "password": DB_PASSWORD, "enable_ssl": False,
             "table_name": "sec", "timeout_s": 3,
             "column_mappings": [{"column_name": "seq", "json_key": "seq"},
                                 {"column_name": "device", "json_key": "device"}]}
    engine = Engine(tmp_path, {
        "sources": [{"kafka": {"bootstrap_servers": kafka, "topics": [topic],
                               "group_id": f"rel-{uuid.uuid4().hex[:8]}",
                               "session_timeout_ms": 3000}}],
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "rules": [RULE],
        "actions": [
            {"action_id": "hook", "rule_id": "battery", "channel": "HTTP_FORWARDING",
             "channel_detail": {"http_forwarding": {"url": rx.url, "signature_enable": True,
                                                    "token": TOKEN, "timeout_s": 2}}},
            {"action_id": "db", "rule_id": "battery", "channel": "MYSQL_FORWARDING",
             "channel_detail": {"mysql_forwarding": mysql}}],
        "worker": {"state_dir": str(tmp_path / "state")},
    }, port)
    try:
        await engine.start()
        await produce_paced(kafka, topic, items, 1.0)
        for _ in range(100):  # the HTTP action's records are in the backlog, db delivered
            m = await engine.metrics()
            if sum(v for (n, labels), v in m.items()
                   if n == "engine_action_backlogged") >= len(expected):
                break
            await asyncio.sleep(0.2)
        metrics_text = repr(await engine.metrics()).encode()
        assert engine.stop() == 0
    finally:
        engine.proc.stop()
        rx.proc.stop()
        await delete_topic(kafka, topic)
        maria_node.sql("DROP TABLE IF EXISTS rel.sec")
    log = engine.log.read_bytes()
    assert b"HTTP 503" in log  # the failures were reported...
    assert_no_secret(log + metrics_text + everything_written(tmp_path), TOKEN, DB_PASSWORD)

    # Credentials refused / server unreachable at start-up: the error names
    # the problem, not the secret.
    for name, action in [
        ("mysql", {"channel": "MYSQL_FORWARDING", "channel_detail": {"mysql_forwarding": {
            **mysql, "password": WRONG_PASSWORD}}}),
        ("amqp", {"channel": "AMQP_FORWARDING", "channel_detail": {"amqp_forwarding": {
            "queue_name": "rel-secret-q", "timeout_s": 2,
            "url": f"amqp://someone:{AMQP_PASSWORD}@127.0.0.1:{free_port()}/"}}})]:
        d = tmp_path / f"refused-{name}"
        d.mkdir()
        e = Engine(d, {"sources": [{"file": {"path": "-"}}], "rules": [RULE],
                       "actions": [{"action_id": "x", "rule_id": "battery", **action}],
                       "worker": {"state_dir": str(d / "state")}}, free_port())
        e.proc.start()
        e.proc.proc.wait(timeout=60)
        out = e.log.read_bytes()
        if name == "mysql":  # refused credentials stop start-up; unreachable AMQP is retried
            assert e.proc.proc.returncode != 0 and b"login refused" in out, out
        assert_no_secret(out + everything_written(d), WRONG_PASSWORD, AMQP_PASSWORD)


def test_tls_verification_is_on_by_default_and_turning_it_off_warns_once(caplog):
    with_tls = [cls for cls in set(CHANNELS.values()) if "verify_tls" in cls.Config.model_fields]
    assert {c.channel for c in with_tls} >= {"HTTP_FORWARDING", "MYSQL_FORWARDING",
                                             "DMS_KAFKA_FORWARDING"}
    for cls in with_tls:
        assert cls.Config.model_fields["verify_tls"].default is True, cls.channel
    assert client_ssl_context(None).verify_mode.name == "CERT_REQUIRED"
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # e.g. three reconnects
            ctx = client_ssl_context(None, verify=False)
    assert ctx.verify_mode.name == "CERT_NONE"
    warnings = [r for r in caplog.records if "verification is OFF" in r.getMessage()]
    assert len(warnings) == 1
