"""Importing the destinations package (or the sources package) registers
every channel (source kind) by itself, in a fresh interpreter: nothing may
depend on another module having imported a destination first."""

import subprocess
import sys


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, timeout=60).stdout.strip()


def test_import_registers_all_eight_channels():
    out = _fresh("import engine.destinations as d; print(' '.join(sorted(d.CHANNELS)))")
    assert out.split() == ["AMQP_FORWARDING", "DMS_KAFKA_FORWARDING", "FILE_FORWARDING",
                           "HTTP_FORWARDING", "INFLUXDB_FORWARDING", "MQTT_FORWARDING",
                           "MYSQL_FORWARDING", "POSTGRESQL_FORWARDING"]


def test_import_registers_every_source_with_its_options():
    out = _fresh("import engine.sources as s\n"
                 "print(' '.join(f'{k}:{c.Options.__name__}' for k, c in s.SOURCES.items()))")
    assert sorted(out.split()) == ["amqp:AmqpOptions", "device_api:DeviceApiOptions",
                                   "file:FileOptions", "http:HttpOptions", "kafka:KafkaOptions",
                                   "mqtt:MqttOptions", "simulator:SimulatorOptions"]
