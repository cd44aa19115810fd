"""The adapters' event buffer: order kept, readers held back while the consumer lags."""

from __future__ import annotations

import asyncio

import pytest

from workers.broker.adapters.base import AdapterEvent, ConnectionChanged
from workers.broker.adapters.queue import EventQueue


def change(n: int) -> ConnectionChanged:
    return ConnectionChanged(True, f"e{n}", n)


def ts(event: AdapterEvent) -> int:
    """The `ts` of one of the `change` events the tests push."""
    assert isinstance(event, ConnectionChanged)
    return event.ts


async def test_events_come_out_in_order_and_drain_ends_after_close() -> None:
    queue = EventQueue(10)
    queue.push(change(1), change(2))
    queue.push_all([change(3)])
    queue.close()
    got = [ts(e) async for e in queue.drain()]
    assert got == [1, 2, 3]


async def test_a_full_queue_holds_the_reader_until_the_consumer_takes_half() -> None:
    queue = EventQueue(4)
    reader = asyncio.create_task(queue.put([change(n) for n in range(4)]))
    await asyncio.sleep(0)  # let the reader run up to its wait
    assert not reader.done() and not queue.flowing
    queue.push(change(99))  # a request path never waits, even now
    drained = queue.drain()
    assert ts(await anext(drained)) == 0  # 4 left: still above half
    assert not queue.flowing
    assert ts(await anext(drained)) == 1
    assert ts(await anext(drained)) == 2  # 2 left = half: readers may go on
    assert queue.flowing
    await asyncio.wait_for(reader, 1)
    await drained.aclose()


async def test_close_releases_a_waiting_reader_and_a_waiting_consumer() -> None:
    queue = EventQueue(2)
    reader = asyncio.create_task(queue.put([change(1), change(2)]))
    consumer_done = asyncio.Event()

    async def consume() -> list[int]:
        out = [ts(e) async for e in queue.drain()]
        consumer_done.set()
        return out

    await asyncio.sleep(0)
    queue.close()
    await asyncio.wait_for(reader, 1)
    assert await asyncio.wait_for(consume(), 1) == [1, 2]


def test_a_queue_needs_room_for_two() -> None:
    with pytest.raises(ValueError):
        EventQueue(1)
