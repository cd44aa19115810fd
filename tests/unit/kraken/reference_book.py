"""A deliberately naive L2 book, written straight from Kraken's prose rules.

Property tests compare the optimised :class:`SpotBook` against it. It re-sorts the
whole book on every read and formats numbers with ``format(value, "f")``: slow, but
obviously right.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from decimal import Decimal

Level = tuple[Decimal, Decimal]


class ReferenceBook:
    """Dict per side; apply in order; qty 0 deletes; truncate to depth after a message."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}

    def snapshot(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        self.bids.clear()
        self.asks.clear()
        self.update(bids, asks)

    def update(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for price, qty in levels:
                if qty == 0:
                    side.pop(price, None)
                else:
                    side[price] = qty
        for price, _ in self.sorted_bids()[self.depth :]:
            del self.bids[price]
        for price, _ in self.sorted_asks()[self.depth :]:
            del self.asks[price]

    def sorted_bids(self) -> list[Level]:
        return sorted(self.bids.items(), key=lambda level: level[0], reverse=True)

    def sorted_asks(self) -> list[Level]:
        return sorted(self.asks.items(), key=lambda level: level[0])

    def checksum(self) -> int:
        return reference_checksum(self.sorted_asks(), self.sorted_bids())


def _token(value: Decimal) -> str:
    return format(value, "f").replace(".", "").lstrip("0")


def reference_checksum(asks: Sequence[Level], bids: Sequence[Level]) -> int:
    """CRC32 over top-10 asks then top-10 bids, each side already best first."""
    text = "".join(_token(p) + _token(q) for p, q in list(asks)[:10])
    text += "".join(_token(p) + _token(q) for p, q in list(bids)[:10])
    return zlib.crc32(text.encode())
