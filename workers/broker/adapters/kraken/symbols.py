"""Canonical symbols <-> Kraken spot spellings.

tradefleet names a spot instrument ``BASE/QUOTE`` with the common asset codes (``BTC``,
``DOGE``). Kraken spells the same pair differently per API generation:

* WebSocket v2 uses the common codes: ``BTC/USD``, ``DOGE/USD`` (it rejects ``XBT/USD``).
* WebSocket v1 (and REST ``AssetPairs.wsname``) uses Kraken's legacy codes: ``XBT/USD``,
  ``XDG/USD``.

Only this adapter knows these spellings; everything outside it sees canonical symbols.
"""

from __future__ import annotations

import re

from workers.broker.adapters.kraken.errors import UnsupportedSymbol

# Legacy asset codes that WebSocket v1 still uses. Any other code is spelled the same
# way in every API generation.
_V1_FROM_CANONICAL: dict[str, str] = {"BTC": "XBT", "DOGE": "XDG"}
_CANONICAL_FROM_V1: dict[str, str] = {v1: common for common, v1 in _V1_FROM_CANONICAL.items()}

# Asset codes are upper-case letters and digits, with an optional ".suffix" (``ETH2.S``).
_PAIR = re.compile(r"^([A-Z0-9]+(?:\.[A-Z0-9]+)?)/([A-Z0-9]+(?:\.[A-Z0-9]+)?)$")


def _split(symbol: str) -> tuple[str, str]:
    match = _PAIR.match(symbol)
    if match is None:
        raise UnsupportedSymbol(f"not a BASE/QUOTE spot symbol: {symbol!r}")
    return match.group(1), match.group(2)


def to_v2(canonical: str) -> str:
    """Spell a canonical symbol for WebSocket v2 (``BTC/USD`` -> ``BTC/USD``).

    Raises :class:`UnsupportedSymbol` if ``canonical`` is not ``BASE/QUOTE`` or uses a
    legacy code (``XBT/USD`` is not canonical).
    """
    base, quote = _split(canonical)
    if base in _CANONICAL_FROM_V1 or quote in _CANONICAL_FROM_V1:
        raise UnsupportedSymbol(f"{canonical!r} uses a legacy Kraken code; use the common code")
    return canonical


def from_v2(venue_symbol: str) -> str:
    """Canonical symbol for a WebSocket v2 symbol; raises :class:`UnsupportedSymbol`."""
    base, quote = _split(venue_symbol)
    if base in _CANONICAL_FROM_V1 or quote in _CANONICAL_FROM_V1:
        raise UnsupportedSymbol(f"{venue_symbol!r} is a v1 spelling, not a v2 symbol")
    return venue_symbol


def to_v1(canonical: str) -> str:
    """Spell a canonical symbol for WebSocket v1 (``BTC/USD`` -> ``XBT/USD``)."""
    base, quote = _split(to_v2(canonical))
    return f"{_V1_FROM_CANONICAL.get(base, base)}/{_V1_FROM_CANONICAL.get(quote, quote)}"


def from_v1(venue_symbol: str) -> str:
    """Canonical symbol for a WebSocket v1 pair name (``XBT/USD`` -> ``BTC/USD``)."""
    base, quote = _split(venue_symbol)
    return f"{_CANONICAL_FROM_V1.get(base, base)}/{_CANONICAL_FROM_V1.get(quote, quote)}"
