"""Kraken spot book CRC32 checksums (WebSocket v2 ``book``/``level3`` and v1 ``book``).

The rule (PROTOCOL_NOTES §2.1, §2.2, §3):

* take the top 10 ask levels, best (lowest) first, then the top 10 bid levels, best
  (highest) first -- always 10, whatever the subscribed depth;
* for each level write ``token(price) + token(qty)``, where ``token`` is the number's text
  with the ``.`` removed and leading ``0`` characters stripped;
* CRC32 (unsigned) of the concatenation of all ask tokens followed by all bid tokens.

The text must carry the engine's precision (``0.00100000``, not ``0.001``). Frames parsed
with ``Decimal`` keep it; recordings that went through floats lost trailing zeros and must
be re-formatted with the pair's ``price_precision``/``qty_precision`` instead. A
:class:`LevelFormatter` captures that choice once per book.

level3 uses the same tokens, written for every order (in queue order) of each of the top
10 price levels per side.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal

CHECKSUM_LEVELS = 10
"""Number of price levels per side that enter a checksum, whatever the book depth."""


def checksum_token(text: str) -> str:
    """The checksum token of one number's text: ``"0.00100000"`` -> ``"100000"``."""
    return text.replace(".", "").lstrip("0")


def decimal_text(value: Decimal) -> str:
    """Fixed-point text of ``value`` with exactly the digits it was parsed from.

    ``Decimal("0.00000000")`` prints as ``0E-8`` with ``str``; this returns
    ``"0.00000000"`` so the checksum token matches the wire text.
    """
    text = str(value)
    # str() switches to exponent notation for small or very precise values; only then
    # pay for the slower fixed-point formatting.
    if "E" in text:
        return format(value, "f")
    return text


def _fixed(decimals: int) -> Callable[[Decimal], str]:
    spec = f".{decimals}f"

    def fixed_text(value: Decimal) -> str:
        return format(value, spec)

    return fixed_text


@dataclass(frozen=True, slots=True)
class LevelFormatter:
    """How a book turns a level's price and quantity into text.

    Use :meth:`wire_text` for frames parsed from live text (exact engine precision) and
    :meth:`with_precision` when the numbers lost their trailing zeros (float round trips).
    """

    price_text: Callable[[Decimal], str]
    qty_text: Callable[[Decimal], str]

    @classmethod
    def wire_text(cls) -> LevelFormatter:
        """Keep every number's digits exactly as parsed."""
        return cls(decimal_text, decimal_text)

    @classmethod
    def with_precision(cls, price_precision: int, qty_precision: int) -> LevelFormatter:
        """Write prices with ``price_precision`` decimals and quantities with ``qty_precision``.

        Raises ``ValueError`` for a negative precision.
        """
        if price_precision < 0 or qty_precision < 0:
            raise ValueError("precision must be >= 0")
        return cls(_fixed(price_precision), _fixed(qty_precision))

    def level_token(self, price: Decimal, qty: Decimal) -> str:
        """The checksum token of one ``(price, qty)`` pair."""
        return checksum_token(self.price_text(price)) + checksum_token(self.qty_text(qty))


_WIRE_TEXT = LevelFormatter.wire_text()


def book_checksum(
    asks: Iterable[tuple[Decimal, Decimal]],
    bids: Iterable[tuple[Decimal, Decimal]],
    formatter: LevelFormatter = _WIRE_TEXT,
) -> int:
    """CRC32 of an L2 book given as ``(price, qty)`` levels, each side best first.

    Only the first :data:`CHECKSUM_LEVELS` levels of each side are read; the caller must
    pass the sides already ordered (asks ascending, bids descending).
    """
    parts: list[str] = []
    for side in (asks, bids):
        for count, (price, qty) in enumerate(side):
            if count == CHECKSUM_LEVELS:
                break
            parts.append(formatter.level_token(price, qty))
    return zlib.crc32("".join(parts).encode("ascii"))


def level3_checksum(
    asks: Iterable[tuple[Decimal, Decimal]],
    bids: Iterable[tuple[Decimal, Decimal]],
    formatter: LevelFormatter = _WIRE_TEXT,
) -> int:
    """CRC32 of a level3 (per-order) book given as ``(limit_price, order_qty)`` orders.

    Each side must be in book order: asks by ascending price, bids by descending price,
    and orders within a price level in queue order. Every order of the first
    :data:`CHECKSUM_LEVELS` distinct prices of each side is written.
    """
    parts: list[str] = []
    for side in (asks, bids):
        prices_seen = 0
        last_price: Decimal | None = None
        for price, qty in side:
            if price != last_price:
                prices_seen += 1
                if prices_seen > CHECKSUM_LEVELS:
                    break
                last_price = price
            parts.append(formatter.level_token(price, qty))
    return zlib.crc32("".join(parts).encode("ascii"))
