"""Operator events a worker sends up its control pipe, buffered so trading never waits.

`EventOutbox` is pure (no sockets): the worker's own code `put`s events as they happen, the
runtime's pipe sender takes them from the front, one frame at a time, and removes each only
once it was written. While the pipe is down the buffer keeps the newest `capacity` events;
older ones are dropped and counted, and the next frame sent says how many were lost
(`WorkerEvent.dropped`). A flood (an algo hammering a limit) is also bounded: beyond
`rate_per_s` (with bursts up to `burst`) events are dropped and counted the same way.

Details are cleaned on the way in: keys that look like secrets are dropped, long strings are
cut, and big nested values are summarised, so nothing sensitive or unbounded reaches the
manager's event log.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Any

import orjson

from protocol.control import EventCategory, WorkerEvent

DEFAULT_CAPACITY = 256
DEFAULT_RATE_PER_S = 50.0
DEFAULT_BURST = 100
MAX_TEXT = 300
MAX_MESSAGE = 1000
MAX_NESTED_BYTES = 1500
MAX_DEPTH = 3

SECRET_KEY = re.compile(r"token|secret|passw|api[_-]?key|credential|signature|private|auth",
                        re.IGNORECASE)


def clean_value(value: Any, depth: int = 0) -> Any:
    """A JSON-safe, bounded, secret-free copy of `value`."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Enum):
        return clean_value(value.value, depth)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 1] + "…"
    if depth >= MAX_DEPTH:
        return _summary(value)
    if isinstance(value, dict):
        out = {str(k)[:64]: clean_value(v, depth + 1) for k, v in value.items()
               if not SECRET_KEY.search(str(k))}
    elif isinstance(value, list | tuple | set | frozenset):
        out = [clean_value(v, depth + 1) for v in value]  # type: ignore[assignment]
    else:
        return clean_value(str(value), depth)
    if len(orjson.dumps(out)) > MAX_NESTED_BYTES:
        return _summary(value)
    return out


def clean_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """`clean_value` of a detail mapping (always a dict)."""
    cleaned = clean_value(dict(detail))
    return cleaned if isinstance(cleaned, dict) else {"detail": cleaned}


def _summary(value: Any) -> str:
    size = len(value) if hasattr(value, "__len__") else 0
    return f"<{type(value).__name__} of {size} items, not shown>"


@dataclass(frozen=True, slots=True)
class _Pending:
    n: int
    ts: float
    event: str
    category: EventCategory
    message: str
    detail: dict[str, Any]


class EventOutbox:
    """Bounded, drop-oldest buffer of `WorkerEvent`s (module docstring)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY,
                 clock: Callable[[], float] = time.time,
                 rate_per_s: float = DEFAULT_RATE_PER_S, burst: int = DEFAULT_BURST) -> None:
        if capacity < 1 or burst < 1 or rate_per_s <= 0:
            raise ValueError("capacity, burst and rate_per_s must be positive")
        self.capacity = capacity
        self._clock = clock
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._refilled_at: float | None = None
        self._items: deque[_Pending] = deque()
        self._n = 0
        self._unreported_drops = 0
        self.dropped_total = 0
        self.on_put: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: str, message: str = "",
            category: EventCategory = EventCategory.WORKER, **detail: Any) -> None:
        """Queue one event. Never raises and never blocks."""
        now = self._clock()
        if not self._take_token(now):
            self._unreported_drops += 1
            self.dropped_total += 1
            return
        self._n += 1
        pending = _Pending(n=self._n, ts=now, event=str(event)[:64] or "event",
                           category=category, message=str(message)[:MAX_MESSAGE],
                           detail=clean_detail(detail))
        if len(self._items) >= self.capacity:
            self._items.popleft()
            self._unreported_drops += 1
            self.dropped_total += 1
        self._items.append(pending)
        if self.on_put is not None:
            self.on_put()

    def _take_token(self, now: float) -> bool:
        if self._refilled_at is not None:
            elapsed = max(0.0, now - self._refilled_at)
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._refilled_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def first(self) -> WorkerEvent | None:
        """The frame to send next (carrying the count of events lost before it), or None."""
        if not self._items:
            return None
        p = self._items[0]
        return WorkerEvent(event=p.event, category=p.category, ts=p.ts, n=p.n,
                           message=p.message, detail=p.detail, dropped=self._unreported_drops)

    def sent(self, frame: WorkerEvent) -> None:
        """`frame` (from `first()`) was written: forget it and the drops it reported."""
        self._unreported_drops = max(0, self._unreported_drops - frame.dropped)
        if self._items and self._items[0].n == frame.n:
            self._items.popleft()
        elif self._items and self._items[0].n > frame.n:
            # It was pushed out while being written: it arrived, so it was not lost.
            self._unreported_drops = max(0, self._unreported_drops - 1)
            self.dropped_total = max(0, self.dropped_total - 1)
