"""The Kafka source's librdkafka settings from a config `kafka:` source (the
one Kafka settings helper, engine.schema.KafkaClient), and
its start-up errors (no broker needed)."""

import socket

import pytest

from engine.config.models import SourceEntry
from engine.runtime.worker import build_source
from engine.sources.kafka import KafkaOptions as KafkaSourceConfig
from engine.sources.kafka import KafkaSource, KafkaStartError


def conf(**kw) -> KafkaSourceConfig:
    return KafkaSourceConfig(bootstrap_servers=["a:9092", "b:9093"], topics=["t"], **kw)


def test_plaintext():
    assert conf().client().librdkafka() == {"bootstrap.servers": "a:9092,b:9093",
                                         "client.id": "iot-forwarding-engine",
                                         "security.protocol": "plaintext"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_with_ca_file(mechanism):
    c = conf(security_protocol="SASL_SSL", sasl_mechanism=mechanism,
                               sasl_username="u", sasl_password="s3cret",
                               ssl_cafile="/etc/ca.pem", client_id="me").client().librdkafka()
    assert c == {"bootstrap.servers": "a:9092,b:9093", "client.id": "me",
                 "security.protocol": "sasl_ssl", "sasl.mechanism": mechanism,
                 "sasl.username": "u", "sasl.password": "s3cret",
                 "ssl.ca.location": "/etc/ca.pem"}


def test_ssl_without_ca_file_uses_the_system_cas_and_verifies():
    c = conf(security_protocol="SSL").client().librdkafka()
    assert c["security.protocol"] == "ssl"
    assert "ssl.ca.location" not in c  # librdkafka's default: the system's CAs
    # Certificate and host-name verification are librdkafka's defaults; not turned off.
    assert not any(k.startswith("enable.ssl") or k.startswith("ssl.endpoint") for k in c)


def test_sasl_plaintext_has_no_tls_settings():
    c = conf(security_protocol="SASL_PLAINTEXT",
                               sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
                               sasl_password="p").client().librdkafka()
    assert c["security.protocol"] == "sasl_plaintext"
    assert c["sasl.mechanism"] == "SCRAM-SHA-512"
    assert "ssl.ca.location" not in c


def test_build_source_passes_the_config_on():
    entry = SourceEntry(kafka=conf(group_id="g", max_batch=123, session_timeout_ms=6000,
                                   security_protocol="SASL_SSL", sasl_mechanism="PLAIN",
                                   sasl_username="u", sasl_password="p"))
    src = build_source(entry)
    assert isinstance(src, KafkaSource)
    c = src.config
    assert (c["group.id"], c["bootstrap.servers"], c["session.timeout.ms"],
            c["heartbeat.interval.ms"]) == ("g", "a:9092,b:9093", 6000, 2000)
    assert (c["enable.auto.commit"], c["enable.auto.offset.store"]) == (False, False)
    assert c["auto.offset.reset"] == "earliest" and src.batch_size == 123
    assert (c["security.protocol"], c["sasl.mechanism"], c["sasl.password"]) == (
        "sasl_ssl", "PLAIN", "p")
    assert c["fetch.wait.max.ms"] == 10   # not librdkafka's 500: see KafkaOptions
    assert c["fetch.queue.backoff.ms"] == 10  # not 1 s: a fast worker would idle (runtime.md)
    slow = build_source(SourceEntry(kafka=conf(fetch_wait_max_ms=250)))
    assert slow.config["fetch.wait.max.ms"] == 250


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_broker_fails_start_naming_the_cause():
    port = free_port()
    src = KafkaSource(bootstrap_servers=f"127.0.0.1:{port}", topics=["t"], group_id="g")
    with pytest.raises(KafkaStartError, match=rf"127\.0\.0\.1:{port}.*Connection refused"):
        await src.start()
    await src.close()


async def test_bad_settings_fail_start_naming_the_setting(tmp_path):
    src = KafkaSource(topics=["t"], group_id="g",
                      config={"security.protocol": "ssl",
                              "ssl.ca.location": str(tmp_path / "missing.pem")})
    with pytest.raises(KafkaStartError, match="invalid settings: .*ssl.ca.location"):
        await src.start()
    await src.close()
