"""`engine simulate --mqtt` -> Mosquitto -> `engine run` (mqtt source,
the registry the simulator wrote) -> HTTP: the whole device path."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
import yaml

from tests.devices.support import BROKER, drop_session, port_open
from tests.runtime.e2e import ENGINE, EngineProcess, Receiver, free_port, wait_ready, write_config

pytestmark = pytest.mark.services


async def test_simulated_devices_reach_a_rule_with_registry_headers(tmp_path):
    if not port_open(BROKER):
        pytest.fail("Mosquitto is not running on 127.0.0.1:1883 (run `bash scripts/services.sh up`)")
    product = f"p{uuid.uuid4().hex[:8]}"
    client_id = f"sim-test-{product}"
    registry = tmp_path / "registry.yaml"
    metrics = free_port()
    try:
        async with Receiver() as rx:
            # Only the registry is written here (--count 0 publishes nothing).
            subprocess.run([*ENGINE, "simulate", "--mqtt", "mqtt://127.0.0.1:1883",
                            "--devices", "5", "--count", "0", "--product", product,
                            "--registry-out", str(registry)], check=True, timeout=60)
            config = write_config(tmp_path / "rules.yaml", {
                # The simulator's registry file, as a section of the rule file.
                **yaml.safe_load(registry.read_text()),
                "sources": [{"mqtt": {"url": "mqtt://127.0.0.1:1883", "client_id": client_id}}],
                "metrics": {"listen": f"127.0.0.1:{metrics}"},
                "rules": [{"rule_id": "alarms",
                           "subject": {"resource": "device.message", "event": "report"},
                           "select": "notify_data.header.device_id AS device, "
                                     "notify_data.header.product_id AS product, "
                                     "notify_data.header.app_id AS app, "
                                     "notify_data.body.content.seq AS seq",
                           "where": f"notify_data.header.product_id = '{product}'"}],
                "actions": [{"action_id": "hook", "rule_id": "alarms",
                             "channel": "HTTP_FORWARDING",
                             "channel_detail": {"http_forwarding": {"url": rx.url}}}],
            })
            with EngineProcess(config) as engine:
                await wait_ready(metrics, engine)
                done = subprocess.run(
                    [*ENGINE, "simulate", "--mqtt", "mqtt://127.0.0.1:1883", "--devices", "5",
                     "--count", "200", "--rate", "2000", "--product", product],
                    capture_output=True, text=True, timeout=60)
                assert done.returncode == 0, done.stderr
                assert "200 device message(s) published" in done.stderr
                await rx.wait_for(20, timeout=30)
                time.sleep(0.3)
                code, err = engine.stop()
            assert code == 0, err
    finally:
        drop_session(client_id)
    # One message report in ten; every one enriched from the registry.
    assert sorted(b["seq"] for b in rx.bodies) == list(range(9, 200, 10))
    assert sorted((b["seq"], b["device"], b["product"], b["app"]) for b in rx.bodies) == [
        (s, f"sim-{product}-{s % 5}", product, "simapp") for s in range(9, 200, 10)]
    assert yaml.safe_load(registry.read_text())["registry"]["products"][0]["product_id"] == product
