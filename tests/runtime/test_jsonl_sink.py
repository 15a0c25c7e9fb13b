import os

import orjson
import pytest

from engine.config import load_config
from engine.destinations import CHANNELS, Record, SinkError
from engine.destinations.jsonl_file import FileForwarding, JsonlFileSink


async def test_appends_one_line_per_record_across_writes(tmp_path):
    path = tmp_path / "out.jsonl"
    sink = JsonlFileSink(FileForwarding(path=str(path)))
    await sink.open()
    r1 = await sink.write([Record({"a": 1}, key="d1"), Record({"b": "ü"}, key="d2")])
    r2 = await sink.write([Record({"c": [1, 2]})])
    await sink.close()
    assert r1.ok and r2.ok
    assert [orjson.loads(x) for x in path.read_bytes().splitlines()] == [
        {"a": 1}, {"b": "ü"}, {"c": [1, 2]}]


async def test_metadata_envelope(tmp_path):
    path = tmp_path / "out.jsonl"
    sink = JsonlFileSink(FileForwarding(path=str(path), include_metadata=True))
    assert (await sink.write([Record({"a": 1}, "dev", "20151212T121212Z", "r1", "a1")])).ok
    await sink.close()
    assert orjson.loads(path.read_bytes()) == {"rule_id": "r1", "action_id": "a1", "key": "dev",
                                               "event_time": "20151212T121212Z",
                                               "payload": {"a": 1}}


async def test_unusable_path_is_a_sink_error(tmp_path):
    sink = JsonlFileSink(FileForwarding(path=str(tmp_path / "missing-dir" / "x.jsonl")))
    with pytest.raises(SinkError):
        await sink.open()


async def test_full_disk_is_retryable_and_leaves_no_partial_line(tmp_path):
    assert os.path.exists("/dev/full")  # Linux: every write fails with ENOSPC
    sink = JsonlFileSink(FileForwarding(path="/dev/full"))
    res = await sink.write([Record({"a": 1})])
    await sink.close()
    assert not res.ok and all(f.retryable for f in res.failures.values())


def test_registered_and_usable_from_a_rule_file(tmp_path):
    assert CHANNELS["FILE_FORWARDING"] is JsonlFileSink
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""
rules:
  - rule_id: r1
    subject: {{resource: device.property, event: report}}
actions:
  - action_id: a1
    rule_id: r1
    channel: FILE_FORWARDING
    channel_detail: {{file_forwarding: {{path: {tmp_path / 'o.jsonl'}}}}}
""")
    config = load_config([rules])
    assert config.actions[0].detail == FileForwarding(path=str(tmp_path / "o.jsonl"))
