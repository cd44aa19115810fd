"""Kraken Futures public frames -> tradefleet market events. Pure: frames in, events out.

* ``book_snapshot`` / ``book`` go through `FuturesBookBuilder` (per-product ``seq``
  continuity, crossed-book check). What subscribers see is a *view* of the top `depth` levels
  per side with its own ``update_id``: one ``book_snapshot``, then a ``book_delta`` only when
  a venue delta changed the visible levels (a level entering the view as another leaves it
  is one delta). ``update_id`` keeps increasing across resyncs.
* A `SequenceGap` or `BookCrossed` makes the product's book unusable: `receive` returns a
  `Resync` for it (once, until its next snapshot). The shell resubscribes; the venue's new
  ``book_snapshot`` becomes a fresh ``book_snapshot`` for subscribers.
* ``trade`` -> ``trade``; the ``trade_snapshot`` sent on subscribing holds history and is not
  replayed as live trades.
* ``ticker_lite`` -> ``ticker`` (best bid/ask; the lite feed has no sizes, no last price and
  no time, so ``ts`` is the receive time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, TypeAlias

from pydantic import ValidationError

from protocol.market import BookDelta, BookSnapshot, MarketEvent, Side, Ticker, Trade
from workers.broker.adapters.kraken_futures import schemas
from workers.broker.adapters.kraken_futures.book import (
    BookChanged,
    BookCrossed,
    FuturesBook,
    FuturesBookBuilder,
)
from workers.broker.adapters.kraken_futures.sequence import SequenceGap

Feed: TypeAlias = Literal["book", "trade", "ticker_lite"]
Clock = Callable[[], int]

_NS_PER_MS = 1_000_000


@dataclass(frozen=True, slots=True)
class FeedKey:
    """One public venue subscription: a feed of one product."""

    feed: Feed
    product_id: str  # upper case


@dataclass(frozen=True, slots=True)
class Resync:
    """The product's book is unusable until a new venue snapshot: resubscribe."""

    product_id: str
    reason: str


@dataclass(slots=True)
class BookView:
    """The levels subscribers last saw for one instrument."""

    instrument: str
    depth: int
    update_id: int = 0
    bids: dict[Decimal, Decimal] = field(default_factory=dict)
    asks: dict[Decimal, Decimal] = field(default_factory=dict)


class MarketData:
    """Normalises the public frames of one connection for the watched feeds."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._books = FuturesBookBuilder()
        self._views: dict[str, BookView] = {}  # product id -> view
        self._trades: dict[str, str] = {}  # product id -> instrument
        self._tickers: dict[str, str] = {}
        self._resyncing: set[str] = set()

    # ------------------------------------------------------------ what is watched

    def watch(self, key: FeedKey, instrument: str, depth: int) -> list[MarketEvent]:
        """Start normalising `key`. A book watched again with a larger depth widens its
        view, and a fresh snapshot is returned at once when the book is in sync."""
        if key.feed == "trade":
            self._trades[key.product_id] = instrument
        elif key.feed == "ticker_lite":
            self._tickers[key.product_id] = instrument
        else:
            view = self._views.get(key.product_id)
            if view is None:
                self._views[key.product_id] = BookView(instrument, depth)
            elif depth > view.depth:
                view.depth = depth
                book = self._books.book(key.product_id)
                if book is not None and self._books.is_synced(key.product_id):
                    snapshot = self._snapshot(view, book, self._clock())
                    return [snapshot] if snapshot is not None else []
        return []

    def unwatch(self, key: FeedKey) -> None:
        if key.feed == "trade":
            self._trades.pop(key.product_id, None)
        elif key.feed == "ticker_lite":
            self._tickers.pop(key.product_id, None)
        else:
            self._views.pop(key.product_id, None)
            self._books.forget(key.product_id)
            self._resyncing.discard(key.product_id)

    def connection_lost(self) -> None:
        """Every book is stale: the next connection starts each one from a snapshot."""
        for product_id in list(self._views):
            self._books.forget(product_id)
        self._resyncing.clear()

    def book(self, product_id: str) -> FuturesBook | None:
        """The full venue book as last applied (for inspection)."""
        return self._books.book(product_id)

    # ------------------------------------------------------------ frames

    def receive(self, frame: schemas.FuturesFrame) -> tuple[list[MarketEvent], list[Resync]]:
        """Events for subscribers and books to resync, for one public frame."""
        if isinstance(frame, (schemas.BookSnapshot, schemas.BookDelta)):
            return self._book(frame)
        if isinstance(frame, schemas.Trade):
            trade = self._trade(frame)
            return ([trade] if trade is not None else []), []
        if isinstance(frame, schemas.TickerLite):
            ticker = self._ticker(frame)
            return ([ticker] if ticker is not None else []), []
        return [], []

    def _book(
        self, frame: schemas.BookSnapshot | schemas.BookDelta
    ) -> tuple[list[MarketEvent], list[Resync]]:
        view = self._views.get(frame.product_id)
        if view is None:
            return [], []  # not (or no longer) subscribed
        outcome = self._books.receive(frame)
        ts = frame.timestamp * _NS_PER_MS
        if type(outcome) is BookChanged:
            if outcome.is_snapshot:
                self._resyncing.discard(frame.product_id)
                snapshot = self._snapshot(view, outcome.book, ts)
                return ([snapshot] if snapshot is not None else []), []
            assert isinstance(frame, schemas.BookDelta)
            delta = self._delta(view, outcome.book, frame.side, ts)
            return ([delta] if delta is not None else []), []
        if isinstance(outcome, SequenceGap):
            reason = f"sequence gap: expected seq {outcome.expected}, got {outcome.received}"
        elif isinstance(outcome, BookCrossed):
            reason = f"crossed book: best bid {outcome.best_bid} >= best ask {outcome.best_ask}"
        else:
            return [], []  # UpdateIgnored: stale, or waiting for the resync snapshot
        if frame.product_id in self._resyncing:
            return [], []
        self._resyncing.add(frame.product_id)
        return [], [Resync(frame.product_id, reason)]

    def _snapshot(self, view: BookView, book: FuturesBook, ts: int) -> BookSnapshot | None:
        bids, asks = book.bids(view.depth), book.asks(view.depth)
        try:
            snapshot = BookSnapshot(
                instrument=view.instrument,
                bids=list(bids),
                asks=list(asks),
                update_id=view.update_id + 1,
                ts=ts,
            )
        except ValidationError:
            return None
        view.update_id += 1
        view.bids, view.asks = dict(bids), dict(asks)
        return snapshot

    def _delta(
        self, view: BookView, book: FuturesBook, side: Literal["buy", "sell"], ts: int
    ) -> BookDelta | None:
        # One venue delta touches one side; only that side's visible levels can change.
        if side == "buy":
            now = dict(book.bids(view.depth))
            changed = _diff(view.bids, now)
            if not changed:
                return None
            view.bids = now
            bids, asks = sorted(changed, reverse=True), []
        else:
            now = dict(book.asks(view.depth))
            changed = _diff(view.asks, now)
            if not changed:
                return None
            view.asks = now
            bids, asks = [], sorted(changed)
        view.update_id += 1
        return BookDelta(
            instrument=view.instrument, bids=bids, asks=asks, update_id=view.update_id, ts=ts
        )

    def _trade(self, frame: schemas.Trade) -> Trade | None:
        instrument = self._trades.get(frame.product_id)
        if instrument is None or frame.side not in ("buy", "sell"):
            return None
        try:
            return Trade(
                instrument=instrument,
                trade_id=frame.uid,
                price=frame.price,
                qty=frame.qty,
                taker_side=Side(frame.side),
                ts=frame.time * _NS_PER_MS,
            )
        except ValidationError:
            return None

    def _ticker(self, frame: schemas.TickerLite) -> Ticker | None:
        instrument = self._tickers.get(frame.product_id)
        if instrument is None:
            return None
        return Ticker(
            instrument=instrument,
            bid=frame.bid if frame.bid is not None and frame.bid > 0 else None,
            ask=frame.ask if frame.ask is not None and frame.ask > 0 else None,
            ts=self._clock(),
        )


def _diff(
    before: dict[Decimal, Decimal], after: dict[Decimal, Decimal]
) -> list[tuple[Decimal, Decimal]]:
    """Levels to send so that `before` becomes `after`: new sizes, and 0 for removed ones."""
    changed = [(price, qty) for price, qty in after.items() if before.get(price) != qty]
    changed += [(price, Decimal(0)) for price in before if price not in after]
    return changed
