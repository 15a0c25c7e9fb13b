"""CPU time of the worker thread's per-batch work, without a broker: the
pipeline's routing (decode, evaluate, key/time, Record per output) and the
encoding a JSON-sending sink does (Record.raw, else orjson.dumps), per input
event; and the Kafka sink's packing of those outputs into record batches,
the core's encoder against aiokafka's batch builder, per output. process_time of this process only, so it is much less sensitive to
the machine's load than events/s; compare trees or commits in one run:

    for t in TREE_A TREE_B; do
        (cd $t && PYTHONPATH=$t python benchmarks/route_cpu.py)
    done
"""

from __future__ import annotations

import asyncio
import gc
import time

import orjson

from engine import RuleSpec, compile_ruleset
from engine.runtime.deadletter import DeadLetters
from engine.runtime.metrics import Metrics
from engine.runtime.pipeline import Pipeline
from engine.sources import Batch
from engine.sources.simulator import SimulatorSource

N, BATCH, ROUNDS = 100_000, 2000, 5
OTHER = "1027c4d1c386bbc4cd613e30"
RULES = {
    "broad": RuleSpec("r", "notify_data.header.device_id AS device_id, event_time", None,
                      resource="device.property", event="report"),
    "whole": RuleSpec("r", None, f"notify_data.header.product_id <> '{OTHER}'",
                      resource="device.property", event="report"),
}


class Runner:
    action_id = "a"

    def __init__(self) -> None:
        self.parcels: list = []

    async def submit(self, parcel) -> None:
        self.parcels.append(parcel)


async def one(kind: str, items: list[bytes]) -> tuple[float, float]:
    runner = Runner()
    p = Pipeline(compile_ruleset([RULES[kind]]), {"r": [runner]}, metrics=Metrics(),
                 dead_letters=DeadLetters())
    batches = [Batch(items[i:i + BATCH]) for i in range(0, len(items), BATCH)]
    t0 = time.process_time()
    for b in batches:
        await p.process("s", b)
    t1 = time.process_time()
    dumps = orjson.dumps
    # Each encoding is dropped before the next, as the Kafka sink does (it
    # copies the bytes into its batch): kept, orjson's over-allocated
    # output (shrunk in place) costs ~2 us more per record in malloc.
    for parcel in runner.parcels:
        for r in parcel.records:
            getattr(r, "raw", None) or dumps(r.payload)
    t2 = time.process_time()
    return t1 - t0, t2 - t1, *kafka_packing([r for x in runner.parcels for r in x.records])


def kafka_packing(records: list) -> tuple[float, float, int]:
    """CPU seconds to turn `records` into Kafka record batches, 2,000 a
    write: the core's encoder (what the Kafka sink does uncompressed) and
    aiokafka's batch builder from Python (what it did before, and does
    compressed); keys cached across writes, as the sink does."""
    from aiokafka.partitioner import murmur2
    from aiokafka.producer.message_accumulator import BatchBuilder
    from aiokafka.record.util import calc_crc32c

    from engine._core import kafka_batches

    cache: dict = {}

    def choose(key):
        return (murmur2(key) & 0x7FFFFFFF) % 4 if key is not None else 0

    writes = [records[i:i + 2000] for i in range(0, len(records), 2000)]
    t0 = time.process_time()
    for w in writes:
        kafka_batches(w, cache, choose, 1 << 20, 1 << 20, 1_700_000_000_000, calc_crc32c)
    t1 = time.process_time()
    keys: dict = {}
    for w in writes:
        current: dict = {}
        for r in w:
            if (hit := keys.get(r.key)) is None:
                key = r.key.encode()
                hit = keys[r.key] = (key, choose(key))
            value = r.raw if r.raw is not None else orjson.dumps(r.payload)
            b = current.get(hit[1])
            if b is None:
                b = current[hit[1]] = BatchBuilder(1 << 20, 0)
            b.append(key=hit[0], value=value, timestamp=None)
        for b in current.values():
            b._build()
    t2 = time.process_time()
    return t1 - t0, t2 - t1, len(records)


def main() -> None:
    items = SimulatorSource(rate=10_000, devices=1000, seed=1, start=1.7e9).make(N)
    gc.freeze()
    gc.disable()  # engine run freezes start-up objects; keep collections out of the timing
    for kind in RULES:
        runs = [asyncio.run(one(kind, items)) for _ in range(ROUNDS)]
        route = min(r[0] for r in runs) / N * 1e6
        enc = min(r[1] for r in runs) / N * 1e6
        outputs = runs[0][4]
        core = min(r[2] for r in runs) / outputs * 1e6
        builder = min(r[3] for r in runs) / outputs * 1e6
        print(f"{kind}: route {route:.2f} us/event, encode {enc:.2f} us/event, "
              f"sum {route + enc:.2f} (min of {ROUNDS}); Kafka batches of its {outputs:,} "
              f"outputs: core {core:.2f} us/record, aiokafka's builder {builder:.2f}")


if __name__ == "__main__":
    main()
