"""The mqtt source, registry and device_api options in rule files: each bad
value is reported naming its place and cause."""

from __future__ import annotations

import pytest

from engine.config import ConfigError, validate_config_dict
from engine.runtime.assembly import build_source, source_context
from engine.runtime.deadletter import DeadLetters


@pytest.mark.parametrize("data, message", [
    ({"sources": [{"mqtt": {"url": "http://x"}}]}, "sources[0].mqtt.url: must be an mqtt://"),
    ({"sources": [{"mqtt": {"topics": ["a/#/b"]}}]}, "'a/#/b' is not a valid MQTT topic filter"),
    ({"sources": [{"mqtt": {"shared_group": "a/b"}}]}, "sources[0].mqtt.shared_group"),
    ({"sources": [{"mqtt": {"qos": 2}}]}, "sources[0].mqtt.qos"),
    ({"registry": {"devices": [{"device_id": "a", "product_id": "nope"}]}},
     "device a: product_id nope is not registered"),
    ({"registry": {"products": [{"product_id": "p"}],
                   "devices": [{"device_id": "a/b", "product_id": "p"}]}},
     "registry.devices[0].device_id: must be 1 to 128 letters"),
    ({"sources": [{"http": {"auth": "none", "mode": "device_api"}}]},
     "sources[0].http.mode: unknown field"),
    ({"sources": [{"device_api": {"tls": {"cert_file": "c.pem"}}}]},
     "sources[0].device_api.tls.key_file"),
    ({"sources": [{"device_api": {"token_ttl": 5}}]}, "sources[0].device_api.token_ttl"),
    ({"actions": [{"action_id": "a", "rule_id": "r", "channel": "MQTT_FORWARDING",
                   "channel_detail": {"mqtt_forwarding": {"topic": "x/#"}}}],
      "rules": [{"rule_id": "r", "subject": {"resource": "device", "event": "create"}}]},
     "cannot hold the wildcards"),
])
def test_bad_values_are_named(data, message):
    with pytest.raises(ConfigError) as e:
        validate_config_dict(data)
    assert message in str(e.value)


def test_mqtt_source_defaults_and_shared_topics(caplog):
    config = validate_config_dict({
        "sources": [{"mqtt": {"client_id": "w1", "shared_group": "g",
                              "url": "mqtt://u:p%40ss@127.0.0.1:1884"}}],
        "registry": {"products": [{"product_id": "p"}]}})
    dead = DeadLetters()
    src = build_source(config.sources[0], context=source_context(config, dead))
    assert src.dead_letters is dead and src.uplink.registry.products.keys() == {"p"}
    assert (src.host, src.port, src._user, src._password) == ("127.0.0.1", 1884, "u", "p@ss")
    assert src.topics[0] == "$share/g/$oc/devices/+/sys/properties/report"
    # Mosquitto 2.0 shares no $-topic: a warning at start, not silence.
    assert "shared_group 'g' with $-prefixed topics ($oc/devices/+/sys/" in caplog.text
    caplog.clear()
    prefixed = validate_config_dict({"sources": [{"mqtt": {
        "shared_group": "g", "topic_prefix": "oc/devices/"}}]})
    build_source(prefixed.sources[0], context=source_context(prefixed, dead))
    assert "shared_group" not in caplog.text
    assert "p@ss" not in repr(config.sources[0])
