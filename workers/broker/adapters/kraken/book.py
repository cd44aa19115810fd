"""Kraken spot L2 order book: pure builder with CRC32 verification.

Feed parsed ``book`` frames (v2 :class:`BookMessage` or v1 :class:`BookMessageV1`) to
:meth:`SpotBookBuilder.receive`; it returns events for the async shell:

* :class:`BookChanged` -- the book for a symbol changed and, when the frame carried a
  checksum, the book matches it. Publish it.
* :class:`ChecksumMismatch` -- the book no longer matches the venue. The symbol's book is
  unusable until a new snapshot: resubscribe (or reconnect) and send algos the fresh
  snapshot when it arrives.
* :class:`UpdateIgnored` -- an update arrived for a symbol with no valid book (before its
  first snapshot, or after a mismatch). Nothing to publish; a resync is already due.

Book rules (PROTOCOL_NOTES §2, §3): apply every level of a message in array order,
``qty == 0`` deletes, then truncate each side to the subscribed depth (Kraken sends no
delete for a level pushed out of the window by an insert).

Speed: each side is a sorted price list kept with :mod:`bisect`, with parallel lists of
quantities and cached checksum tokens. A checksum joins at most 10 cached strings per
side, and a side is re-hashed only when a change touched its top 10 levels.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, TypeAlias

from workers.broker.adapters.kraken.checksum import CHECKSUM_LEVELS, LevelFormatter
from workers.broker.adapters.kraken.schemas import (
    BookLevel,
    BookLevelV1,
    BookMessage,
    BookMessageV1,
    PairPrecision,
)

Level: TypeAlias = BookLevel | BookLevelV1 | tuple[Decimal, Decimal]
"""Anything indexable as ``(price, qty, ...)``: v2 and v1 wire levels, or plain pairs."""

_TOP = CHECKSUM_LEVELS

DEFAULT_DEPTH = 10
"""Kraken's default subscription depth."""


class _Side:
    """One side of a book, best level first, as parallel lists.

    ``keys`` is ascending: the price for asks, the *negated* price for bids, so index 0 is
    the best level on both sides and the top 10 are always ``[:10]``. Next to each key
    the side keeps the quantity, the price's checksum token and the level's full token,
    so a checksum is a join of at most 10 cached strings.
    """

    __slots__ = ("dirty", "keys", "price_text", "price_tokens", "qty_text", "qtys", "tokens")

    def __init__(
        self, price_text: Callable[[Decimal], str], qty_text: Callable[[Decimal], str]
    ) -> None:
        self.keys: list[Decimal] = []
        self.qtys: list[Decimal] = []
        self.price_tokens: list[str] = []
        self.tokens: list[str] = []
        self.dirty = True  # the top-10 tokens changed since the last checksum
        self.price_text = price_text
        self.qty_text = qty_text

    def load(self, levels: dict[Decimal, tuple[Decimal, Decimal]]) -> None:
        """Replace the side with ``{key: (price, qty)}`` (zero quantities already removed)."""
        price_text, qty_text = self.price_text, self.qty_text
        self.keys = sorted(levels)
        self.qtys = []
        self.price_tokens = []
        self.tokens = []
        for key in self.keys:
            price, qty = levels[key]
            ptoken = price_text(price).replace(".", "").lstrip("0")
            self.qtys.append(qty)
            self.price_tokens.append(ptoken)
            self.tokens.append(ptoken + qty_text(qty).replace(".", "").lstrip("0"))
        self.dirty = True

    def apply(self, key: Decimal, price: Decimal, qty: Decimal) -> None:
        """Set, replace or (``qty == 0``) delete the level at ``key``."""
        keys = self.keys
        index = bisect_left(keys, key)
        found = index < len(keys) and keys[index] == key
        if not qty:
            if found:
                del keys[index]
                del self.qtys[index]
                del self.price_tokens[index]
                del self.tokens[index]
                if index < _TOP:
                    self.dirty = True
            return
        qtoken = self.qty_text(qty).replace(".", "").lstrip("0")
        if found:
            self.qtys[index] = qty
            self.tokens[index] = self.price_tokens[index] + qtoken
        else:
            ptoken = self.price_text(price).replace(".", "").lstrip("0")
            keys.insert(index, key)
            self.qtys.insert(index, qty)
            self.price_tokens.insert(index, ptoken)
            self.tokens.insert(index, ptoken + qtoken)
        if index < _TOP:
            self.dirty = True

    def truncate(self, depth: int) -> None:
        """Drop every level beyond ``depth`` (Kraken sends no delete for them)."""
        if len(self.keys) > depth:
            del self.keys[depth:]
            del self.qtys[depth:]
            del self.price_tokens[depth:]
            del self.tokens[depth:]
            if depth < _TOP:
                self.dirty = True


class SpotBook:
    """The L2 book of one symbol, truncated to ``depth`` levels per side.

    Mutated only by :class:`SpotBookBuilder` (or directly in tests); readers use the
    query methods. Not thread-safe; one book belongs to one event loop.
    """

    __slots__ = ("_ask_crc", "_asks", "_bids", "_crc", "depth", "formatter", "symbol")

    def __init__(
        self, symbol: str, depth: int = DEFAULT_DEPTH, formatter: LevelFormatter | None = None
    ) -> None:
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self.symbol = symbol
        self.depth = depth
        self.formatter = formatter or LevelFormatter.wire_text()
        self._asks = _Side(self.formatter.price_text, self.formatter.qty_text)
        self._bids = _Side(self.formatter.price_text, self.formatter.qty_text)
        self._ask_crc = 0
        self._crc = 0

    # ------------------------------------------------------------------ mutation

    def replace(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Discard the book and load a snapshot (levels in any order; zero qty skipped)."""
        ask_levels: dict[Decimal, tuple[Decimal, Decimal]] = {}
        for level in asks:
            price, qty = level[0], level[1]
            if qty:
                ask_levels[price] = (price, qty)
            else:
                ask_levels.pop(price, None)
        bid_levels: dict[Decimal, tuple[Decimal, Decimal]] = {}
        for level in bids:
            price, qty = level[0], level[1]
            if qty:
                bid_levels[-price] = (price, qty)
            else:
                bid_levels.pop(-price, None)
        self._asks.load(ask_levels)
        self._bids.load(bid_levels)
        self._asks.truncate(self.depth)
        self._bids.truncate(self.depth)

    def update(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Apply one update message: every level in array order, then truncate to depth."""
        apply = self._asks.apply
        for level in asks:
            price = level[0]
            apply(price, price, level[1])
        apply = self._bids.apply
        for level in bids:
            price = level[0]
            apply(-price, price, level[1])
        depth = self.depth
        if len(self._asks.keys) > depth:
            self._asks.truncate(depth)
        if len(self._bids.keys) > depth:
            self._bids.truncate(depth)

    # ------------------------------------------------------------------ queries

    def checksum(self) -> int:
        """CRC32 of the top 10 levels per side, per Kraken's rule (see ``checksum.py``)."""
        asks, bids = self._asks, self._bids
        if asks.dirty:
            self._ask_crc = zlib.crc32("".join(asks.tokens[:_TOP]).encode("ascii"))
            asks.dirty = False
            bids.dirty = True  # the combined CRC continues from the asks' CRC
        if bids.dirty:
            self._crc = zlib.crc32("".join(bids.tokens[:_TOP]).encode("ascii"), self._ask_crc)
            bids.dirty = False
        return self._crc

    def bids(self, limit: int | None = None) -> list[BookLevel]:
        """Bid levels, best (highest) first, at most ``limit`` of them."""
        side = self._bids
        return [BookLevel(-key, qty) for key, qty in zip(side.keys[:limit], side.qtys)]

    def asks(self, limit: int | None = None) -> list[BookLevel]:
        """Ask levels, best (lowest) first, at most ``limit`` of them."""
        side = self._asks
        return [BookLevel(key, qty) for key, qty in zip(side.keys[:limit], side.qtys)]

    def level_texts(
        self, side: Literal["bids", "asks"], limit: int | None = None
    ) -> list[tuple[str, str]]:
        """``(price_text, qty_text)`` per level, best first, as the checksum spells them."""
        levels = self.bids(limit) if side == "bids" else self.asks(limit)
        price_text, qty_text = self.formatter.price_text, self.formatter.qty_text
        return [(price_text(price), qty_text(qty)) for price, qty in levels]

    def best_bid(self) -> BookLevel | None:
        """Highest bid, or ``None`` when the bid side is empty."""
        side = self._bids
        return BookLevel(-side.keys[0], side.qtys[0]) if side.keys else None

    def best_ask(self) -> BookLevel | None:
        """Lowest ask, or ``None`` when the ask side is empty."""
        side = self._asks
        return BookLevel(side.keys[0], side.qtys[0]) if side.keys else None

    def is_crossed(self) -> bool:
        """True when the best bid is at or above the best ask (a broken book)."""
        bids, asks = self._bids.keys, self._asks.keys
        return bool(bids and asks and -bids[0] >= asks[0])

    def __len__(self) -> int:
        return len(self._asks.keys) + len(self._bids.keys)

    def __repr__(self) -> str:
        return (
            f"SpotBook({self.symbol!r}, depth={self.depth}, bids={len(self._bids.keys)}, "
            f"asks={len(self._asks.keys)})"
        )


# ---------------------------------------------------------------------- builder events


# Events are plain slotted dataclasses, not frozen ones: a frozen dataclass costs ~0.4 us
# more to build (object.__setattr__ per field), which is a tenth of the per-update budget.
# Treat them as read-only.


@dataclass(slots=True)
class BookChanged:
    """The symbol's book changed and matches the frame's checksum (if it carried one).

    ``book`` is the live book: read it before feeding the next frame, or copy what you
    publish. ``checksum`` is the verified value, ``None`` for frames without one (v1
    snapshots).
    """

    symbol: str
    book: SpotBook
    is_snapshot: bool
    checksum: int | None


@dataclass(slots=True)
class ChecksumMismatch:
    """The book disagrees with the venue's checksum: resubscribe and wait for a snapshot."""

    symbol: str
    expected: int
    computed: int
    is_snapshot: bool


@dataclass(slots=True)
class UpdateIgnored:
    """An update for a symbol without a valid book; a resync is (or must be) under way."""

    symbol: str
    reason: Literal["no_snapshot", "awaiting_resync"]


BookEvent: TypeAlias = BookChanged | ChecksumMismatch | UpdateIgnored


class SpotBookBuilder:
    """Books for every symbol of one connection, built from v1 or v2 ``book`` frames.

    ``precisions`` maps a symbol (as spelled on the wire) to its price/qty decimals; a
    symbol listed there gets its checksum text re-formatted with them (needed when the
    numbers lost trailing zeros). Other symbols use ``default_precision`` if given, else
    the exact wire text.
    """

    def __init__(
        self,
        *,
        default_depth: int = DEFAULT_DEPTH,
        precisions: Mapping[str, PairPrecision] | None = None,
        default_precision: PairPrecision | None = None,
    ) -> None:
        self._default_depth = default_depth
        self._precisions = dict(precisions or {})
        self._default_precision = default_precision
        self._depths: dict[str, int] = {}
        self._books: dict[str, SpotBook] = {}
        self._synced: dict[str, bool] = {}

    def subscribe(self, symbol: str, depth: int, precision: PairPrecision | None = None) -> None:
        """Record the depth (and optionally the precision) a symbol was subscribed with.

        Call it from the subscribe ack; the next snapshot builds the book with it.
        """
        self._depths[symbol] = depth
        if precision is not None:
            self._precisions[symbol] = precision

    def forget(self, symbol: str) -> None:
        """Drop a symbol's book (after unsubscribing)."""
        self._books.pop(symbol, None)
        self._synced.pop(symbol, None)
        self._depths.pop(symbol, None)

    def book(self, symbol: str) -> SpotBook | None:
        """The current book of ``symbol`` (even if unsynced), or ``None``."""
        return self._books.get(symbol)

    def is_synced(self, symbol: str) -> bool:
        """True when the symbol has a snapshot and no mismatch since."""
        return self._synced.get(symbol, False)

    def receive(self, message: BookMessage | BookMessageV1) -> list[BookEvent]:
        """Apply one book frame; return one event per symbol it carried."""
        if type(message) is BookMessageV1:
            return [
                self._receive_one(
                    message.pair,
                    message.is_snapshot,
                    message.bids,
                    message.asks,
                    message.checksum,
                    # the channel name ("book-25") only matters when a book is created
                    message.depth if message.is_snapshot else None,
                )
            ]
        assert isinstance(message, BookMessage)
        is_snapshot = message.type == "snapshot"
        return [
            self._receive_one(data.symbol, is_snapshot, data.bids, data.asks, data.checksum, None)
            for data in message.data
        ]

    def _new_book(self, symbol: str, frame_depth: int | None) -> SpotBook:
        depth = self._depths.get(symbol) or frame_depth or self._default_depth
        precision = self._precisions.get(symbol, self._default_precision)
        formatter = (
            LevelFormatter.with_precision(precision.price_precision, precision.qty_precision)
            if precision is not None
            else LevelFormatter.wire_text()
        )
        return SpotBook(symbol, depth, formatter)

    def _receive_one(
        self,
        symbol: str,
        is_snapshot: bool,
        bids: Iterable[Level],
        asks: Iterable[Level],
        expected: int | None,
        frame_depth: int | None,
    ) -> BookEvent:
        if is_snapshot:
            # A fresh object per snapshot: it picks up a changed depth or precision, and a
            # consumer still holding the old book never sees it change under its feet.
            book = self._books[symbol] = self._new_book(symbol, frame_depth)
            book.replace(bids, asks)
        else:
            if not self._synced.get(symbol, False):
                reason: Literal["no_snapshot", "awaiting_resync"] = (
                    "awaiting_resync" if symbol in self._books else "no_snapshot"
                )
                return UpdateIgnored(symbol, reason)
            book = self._books[symbol]
            book.update(bids, asks)
        if expected is not None:
            computed = book.checksum()
            if computed != expected:
                self._synced[symbol] = False
                return ChecksumMismatch(symbol, expected, computed, is_snapshot)
        self._synced[symbol] = True
        return BookChanged(symbol, book, is_snapshot, expected)
