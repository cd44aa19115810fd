"""Order books as the Market sees them: one upstream mirror per instrument, one view per depth.

The link's `market` frames do not say which subscription an event belongs to, so two upstream
book subscriptions of one instrument at different depths could not be told apart. The Market
therefore keeps a single upstream book subscription per (account, instrument), at the largest
depth any session wants, mirrors it (`UpstreamBook`), and derives each depth its sessions asked
for (`DepthView`): a view emits its own snapshot and deltas with its own `update_id`, encoded
once and shared by every session of that depth.

A view is insulated from upstream resets: when the upstream stream restarts (link dropped,
Broker replaced, depth grown, a missed delta), its sessions get a fresh snapshot — the
"resync snapshot" of DESIGN §2 — with their view's `update_id` still increasing.

Prices and sizes stay in the Broker's wire spelling; `Decimal` keys only order and compare.
"""

from __future__ import annotations

import heapq
from decimal import Decimal
from enum import Enum
from typing import Any

Level = tuple[str, str]
"""A level as sent on the wire: (price text, size text)."""


class BookUpdate(Enum):
    """What feeding one upstream book event did."""

    IGNORED = "ignored"  # not ready for deltas: waiting for a snapshot
    SNAPSHOT = "snapshot"  # a fresh start: views should resnapshot
    DELTA = "delta"  # levels changed: views should follow
    GAP = "gap"  # a delta was missed: resubscribe upstream to get a snapshot


def _levels(raw: Any) -> dict[Decimal, Level]:
    out: dict[Decimal, Level] = {}
    for price, size in raw:
        price_text, size_text = str(price), str(size)
        if Decimal(size_text) != 0:
            out[Decimal(price_text)] = (price_text, size_text)
    return out


def _apply(side: dict[Decimal, Level], raw: Any) -> None:
    for price, size in raw:
        price_text, size_text = str(price), str(size)
        key = Decimal(price_text)
        if Decimal(size_text) == 0:
            side.pop(key, None)
        else:
            side[key] = (price_text, size_text)


class UpstreamBook:
    """A mirror of one instrument's book as the Broker streams it (snapshot, then deltas)."""

    __slots__ = ("asks", "bids", "depth", "ready", "ts", "update_id")

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.ready = False
        self.update_id = 0
        self.ts = 0
        self.bids: dict[Decimal, Level] = {}
        self.asks: dict[Decimal, Level] = {}

    def expect_snapshot(self) -> None:
        """Ignore deltas until the next snapshot (after (re)subscribing upstream)."""
        self.ready = False

    def apply(self, event: dict[str, Any]) -> BookUpdate:
        """Feed one `book_snapshot` or `book_delta` event in wire form.

        Raises `KeyError`/`ValueError`/`TypeError` for a malformed event (the caller drops it).
        """
        update_id = int(event["update_id"])
        if event["type"] == "book_snapshot":
            bids, asks = _levels(event["bids"]), _levels(event["asks"])
            self.bids, self.asks = bids, asks
            self.update_id, self.ts, self.ready = update_id, int(event["ts"]), True
            return BookUpdate.SNAPSHOT
        if not self.ready:
            return BookUpdate.IGNORED
        if update_id != self.update_id + 1:
            self.ready = False
            return BookUpdate.GAP
        _apply(self.bids, event.get("bids", ()))
        _apply(self.asks, event.get("asks", ()))
        self.update_id, self.ts = update_id, int(event["ts"])
        return BookUpdate.DELTA

    def top(self, depth: int) -> tuple[dict[Decimal, Level], dict[Decimal, Level]]:
        """The best `depth` levels of each side."""
        bids = {p: self.bids[p] for p in heapq.nlargest(depth, self.bids)}
        asks = {p: self.asks[p] for p in heapq.nsmallest(depth, self.asks)}
        return bids, asks


def _wire(side: dict[Decimal, Level], descending: bool) -> list[list[str]]:
    return [list(side[p]) for p in sorted(side, reverse=descending)]


def _changes(before: dict[Decimal, Level], after: dict[Decimal, Level],
             descending: bool) -> list[list[str]]:
    changed: dict[Decimal, Level] = {}
    for price, level in after.items():
        if before.get(price) != level:
            changed[price] = level
    for price, (price_text, _) in before.items():
        if price not in after:
            changed[price] = (price_text, "0")
    return _wire(changed, descending)


class DepthView:
    """The top `depth` levels of an upstream book, as one group of sessions receives them."""

    __slots__ = ("_asks", "_bids", "depth", "instrument", "live", "update_id")

    def __init__(self, instrument: str, depth: int) -> None:
        self.instrument = instrument
        self.depth = depth
        self.update_id = 0
        self.live = False
        """True once a snapshot has been emitted: the view is worth showing to a newcomer."""
        self._bids: dict[Decimal, Level] = {}
        self._asks: dict[Decimal, Level] = {}

    def resnapshot(self, book: UpstreamBook) -> dict[str, Any]:
        """Take the book's current top levels and return a `book_snapshot` of them."""
        self._bids, self._asks = book.top(self.depth)
        self.update_id += 1
        self.live = True
        return self._snapshot(book.ts)

    def current(self, ts: int) -> dict[str, Any] | None:
        """The view as a `book_snapshot` for a session joining now (None before the first
        snapshot). Deltas the group receives afterwards apply on top of it."""
        return self._snapshot(ts) if self.live else None

    def follow(self, book: UpstreamBook) -> dict[str, Any] | None:
        """After an upstream delta: the `book_delta` this view needs, or None if its levels
        did not change (a change deeper than this view's depth)."""
        if not self.live:
            return self.resnapshot(book)
        bids, asks = book.top(self.depth)
        changed_bids = _changes(self._bids, bids, descending=True)
        changed_asks = _changes(self._asks, asks, descending=False)
        if not changed_bids and not changed_asks:
            return None
        self._bids, self._asks = bids, asks
        self.update_id += 1
        return {"type": "book_delta", "instrument": self.instrument, "bids": changed_bids,
                "asks": changed_asks, "update_id": self.update_id, "ts": book.ts}

    def _snapshot(self, ts: int) -> dict[str, Any]:
        return {"type": "book_snapshot", "instrument": self.instrument,
                "bids": _wire(self._bids, True), "asks": _wire(self._asks, False),
                "update_id": self.update_id, "ts": ts}
