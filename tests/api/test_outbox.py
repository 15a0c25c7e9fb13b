"""The registry's notifications leave the store's outbox at least once:
claimed by one worker, removed only when acked, taken again when the
claiming worker never acked (it died) and its lease expired."""

from __future__ import annotations

import asyncio

import orjson

from engine.api.devices import ProductCreate, plan_create_product
from engine.api.outbox import RegistryEvents
from engine.api.storage import EVENTS

PRODUCT = ProductCreate.model_validate({
    "name": "Thermometer", "device_type": "Thermometer", "protocol_type": "MQTT",
    "service_capabilities": []})


async def _next(source: RegistryEvents, timeout: float = 5.0):
    it = source.batches()
    return it, await asyncio.wait_for(it.__anext__(), timeout)


async def test_claimed_until_acked_then_removed(store):
    await store.change("proj-a", plan_create_product(PRODUCT, 10))
    first = RegistryEvents(store, poll=0.05, lease=60)
    it, batch = await _next(first)
    (item,) = batch.items
    assert orjson.loads(item)["resource"] == "product"

    # A second worker does not get what the first one claimed.
    second = RegistryEvents(store, poll=0.05, lease=60)
    it2 = second.batches()
    waiting = asyncio.ensure_future(it2.__anext__())
    await asyncio.sleep(0.3)
    assert not waiting.done()

    await batch.ack()
    assert [r for r in await store.load("proj-a") if r.kind == EVENTS] == []
    # New changes reach the waiting worker (woken by the change event).
    await store.change("proj-a", plan_create_product(PRODUCT, 10))
    batch2 = await asyncio.wait_for(waiting, 5)
    assert len(batch2.items) == 1
    first.stop()
    second.stop()
    await it.aclose()
    await it2.aclose()


async def test_a_claim_that_is_never_acked_is_taken_again(store):
    await store.change("proj-a", plan_create_product(PRODUCT, 10))
    dead = RegistryEvents(store, poll=0.05, lease=0.2)
    it, batch = await _next(dead)
    await it.aclose()  # the worker dies without acking
    await asyncio.sleep(0.3)
    again = RegistryEvents(store, poll=0.05, lease=60)
    it2, batch2 = await _next(again)
    assert batch2.items == batch.items
    await batch2.ack()
    assert [r for r in await store.load("proj-a") if r.kind == EVENTS] == []
    again.stop()
    await it2.aclose()
