"""The buffer between a venue adapter's socket readers and the Broker that consumes `events()`.

Every network adapter has the same needs: events arrive from reader tasks (market data, order
reports, connection changes) and from request paths (an acknowledged order's events), and the
Broker takes them one by one from `events()`. When the Broker falls behind, the readers must
stop reading — so TCP pushes back on the venue — rather than let memory grow; request paths
must never wait on that (the consumer may be the very task making the request).

    queue = EventQueue(max_size)
    queue.push(event, ...)           never waits: request paths
    await queue.put(events)          waits while the queue is full: reader tasks
    async for event in queue.drain() the consumer; ends once `close()` was called and the
                                     queue is empty
    queue.flowing                    False while readers are held back

Readers resume once the consumer has taken the queue down to half of `max_size`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable

from workers.broker.adapters.base import AdapterEvent


class EventQueue:
    """Adapter events with backpressure on the producers that may wait (see the module)."""

    def __init__(self, max_size: int) -> None:
        if max_size < 2:
            raise ValueError("max_size must be at least 2")
        self.max_size = max_size
        self._items: deque[AdapterEvent] = deque()
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def flowing(self) -> bool:
        """True unless readers are being held back because the consumer lags."""
        return self._space.is_set()

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, *events: AdapterEvent) -> None:
        """Add events without ever waiting."""
        if events:
            self._items.extend(events)
            self._wakeup.set()

    def push_all(self, events: Iterable[AdapterEvent]) -> None:
        self.push(*events)

    async def put(self, events: Iterable[AdapterEvent]) -> None:
        """Add events, then wait while the queue is full (a reader's way in)."""
        self.push_all(events)
        if len(self._items) >= self.max_size and not self._closed:
            self._space.clear()
            await self._space.wait()

    def close(self) -> None:
        """No more events will come: `drain()` ends once the queue is empty, and waiting
        producers are released."""
        self._closed = True
        self._wakeup.set()
        self._space.set()

    async def drain(self) -> AsyncIterator[AdapterEvent]:
        low_water = self.max_size // 2
        while True:
            while self._items:
                event = self._items.popleft()
                if len(self._items) <= low_water:
                    self._space.set()
                yield event
            if self._closed:
                return
            self._wakeup.clear()
            await self._wakeup.wait()
