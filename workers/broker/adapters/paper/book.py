"""A price-time priority limit order book for one instrument. Pure data structure: it stores
resting orders and reports which levels changed; matching decisions live in the engine."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from protocol.market import Side
from protocol.orders import OrderStatus, OrderType, TimeInForce

ZERO = Decimal(0)
_QUEUED = itertools.count(1)  # when an order joined its queue, across every book


@dataclass(slots=True, eq=False)
class RestingOrder:
    """An order known to the engine. Mutable: the engine updates it as it trades."""

    order_id: str
    account: str
    client_order_id: str
    instrument: str
    side: Side
    order_type: OrderType
    time_in_force: TimeInForce
    qty: Decimal
    price: Decimal | None
    status: OrderStatus
    created_ts: int
    filled: Decimal = ZERO
    notional: Decimal = ZERO  # sum of price * qty over fills, for the average price
    queued: int = 0  # larger = joined its price level's queue later (time priority)

    @property
    def leaves(self) -> Decimal:
        """Quantity still working: 0 once the order is finished."""
        if self.status.is_terminal:
            return ZERO
        return self.qty - self.filled


@dataclass(slots=True)
class PriceLevel:
    price: Decimal
    # dicts keep insertion order and remove in O(1): the FIFO queue of one price.
    orders: dict[str, RestingOrder] = field(default_factory=dict)
    size: Decimal = ZERO

    def first(self) -> RestingOrder:
        return next(iter(self.orders.values()))


class BookSide:
    """One side of the book: price levels kept sorted, best first on iteration."""

    def __init__(self, side: Side) -> None:
        self.side = side
        self._levels: dict[Decimal, PriceLevel] = {}
        self._prices: list[Decimal] = []  # ascending

    def __len__(self) -> int:
        return len(self._prices)

    def best(self) -> PriceLevel | None:
        if not self._prices:
            return None
        price = self._prices[-1] if self.side is Side.BUY else self._prices[0]
        return self._levels[price]

    def levels(self) -> Iterator[PriceLevel]:
        """Levels best first (highest bid / lowest ask)."""
        prices = reversed(self._prices) if self.side is Side.BUY else iter(self._prices)
        for price in prices:
            yield self._levels[price]

    def size_at(self, price: Decimal) -> Decimal:
        level = self._levels.get(price)
        return level.size if level is not None else ZERO

    def is_marketable_against(self, price: Decimal) -> bool:
        """Would an opposite order limited at `price` trade with this side's best level?"""
        best = self.best()
        if best is None:
            return False
        return best.price >= price if self.side is Side.BUY else best.price <= price

    def append(self, order: RestingOrder) -> None:
        """Queue `order` at the back of its price level."""
        self._enqueue(order)
        order.queued = next(_QUEUED)

    def rejoin(self, order: RestingOrder) -> None:
        """Queue a restored `order` at the back of its price level with the `queued` it had,
        and let every order queued from now on come after it. (Each process counts queue
        places from 1: without this, an order queued after a restart could get a smaller
        number than one restored, and win its place after the next restart.) Restore orders
        in `queued` order."""
        global _QUEUED
        self._enqueue(order)
        _QUEUED = itertools.count(max(next(_QUEUED), order.queued + 1))

    def _enqueue(self, order: RestingOrder) -> None:
        assert order.price is not None
        level = self._levels.get(order.price)
        if level is None:
            level = self._levels[order.price] = PriceLevel(order.price)
            bisect.insort(self._prices, order.price)
        level.orders[order.order_id] = order
        level.size += order.leaves

    def remove(self, order: RestingOrder) -> None:
        """Take a working `order` off the book. Call before changing its qty, price or
        status, so the level loses exactly what the order contributed."""
        assert order.price is not None
        self.shrink(order.price, order.qty - order.filled)
        self.discard(order)

    def shrink(self, price: Decimal, by: Decimal) -> None:
        """An order at `price` now works `by` less (a fill or a reduced quantity)."""
        self._levels[price].size -= by

    def discard(self, order: RestingOrder) -> None:
        """Drop `order` from its queue without touching the level size (already shrunk to
        account for it, e.g. by the fill that completed it)."""
        assert order.price is not None
        level = self._levels[order.price]
        del level.orders[order.order_id]
        if not level.orders:
            del self._levels[order.price]
            del self._prices[bisect.bisect_left(self._prices, order.price)]


class OrderBook:
    """Both sides of one instrument plus the set of levels changed since the last flush."""

    def __init__(self, instrument: str) -> None:
        self.instrument = instrument
        self.bids = BookSide(Side.BUY)
        self.asks = BookSide(Side.SELL)
        self.update_id = 0
        self.last_price: Decimal | None = None
        self._changed: dict[tuple[Side, Decimal], None] = {}

    def side(self, side: Side) -> BookSide:
        return self.bids if side is Side.BUY else self.asks

    def touch(self, side: Side, price: Decimal) -> None:
        """Note that a level changed, so the next delta carries it."""
        self._changed[(side, price)] = None

    def take_changes(self) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """Changed (price, new size) pairs per side since the last call; size 0 = removed.
        Bids come highest first and asks lowest first."""
        bids = sorted(
            ((p, self.bids.size_at(p)) for s, p in self._changed if s is Side.BUY), reverse=True
        )
        asks = sorted((p, self.asks.size_at(p)) for s, p in self._changed if s is Side.SELL)
        self._changed.clear()
        return bids, asks

    def is_crossed(self) -> bool:
        bid, ask = self.bids.best(), self.asks.best()
        return bid is not None and ask is not None and bid.price >= ask.price
