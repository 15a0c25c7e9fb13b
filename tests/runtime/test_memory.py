"""The worker's scheduled garbage collection (runtime/memory.py): the
automatic collector is off while it runs, cycles are still collected by the
timer, and stop() gives the process its collector back."""

from __future__ import annotations

import asyncio
import gc
import weakref

from engine.runtime import memory


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only a collection frees it


def test_cycles_are_collected_on_the_timer_and_stop_restores_the_collector(monkeypatch):
    monkeypatch.setattr(memory, "YOUNG_EVERY", 0.01)
    assert gc.isenabled()

    async def run() -> None:
        collection = memory.ScheduledCollection()
        collection.start()
        try:
            assert not gc.isenabled()
            node = _Node()
            ref = weakref.ref(node)
            del node
            for _ in range(200):
                if ref() is None:
                    break
                await asyncio.sleep(0.01)
            assert ref() is None, "the timer never collected a garbage cycle"
        finally:
            collection.stop()
        assert gc.isenabled()

    try:
        asyncio.run(run())
    finally:
        gc.unfreeze()
        gc.enable()


def test_stop_leaves_a_disabled_collector_disabled():
    async def run() -> None:
        gc.disable()
        collection = memory.ScheduledCollection()
        collection.start()
        collection.stop()
        assert not gc.isenabled()

    try:
        asyncio.run(run())
    finally:
        gc.unfreeze()
        gc.enable()
