"""Kraken spot adapter.

Pure parts (no I/O): wire schemas (:mod:`.schemas`), symbol spellings (:mod:`.symbols`),
book builder with CRC32 verification (:mod:`.book`, :mod:`.checksum`), sequence checks
(:mod:`.sequence`), the trading-engine rate counter (:mod:`.ratelimit`) and REST signing
(:mod:`.signing`). The async shell that owns sockets builds on these.
"""

from workers.broker.adapters.kraken.book import (
    BookChanged,
    BookEvent,
    ChecksumMismatch,
    SpotBook,
    SpotBookBuilder,
    UpdateIgnored,
)
from workers.broker.adapters.kraken.errors import (
    InvalidSecret,
    KrakenError,
    MalformedMessage,
    UnsupportedSymbol,
)

__all__ = [
    "BookChanged",
    "BookEvent",
    "ChecksumMismatch",
    "InvalidSecret",
    "KrakenError",
    "MalformedMessage",
    "SpotBook",
    "SpotBookBuilder",
    "UnsupportedSymbol",
    "UpdateIgnored",
]
