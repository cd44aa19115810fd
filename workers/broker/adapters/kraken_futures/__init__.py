"""Kraken Futures adapter.

Pure parts (no I/O): wire schemas (:mod:`.schemas`), product ids (:mod:`.symbols`), the
book builder with per-product ``seq`` checks (:mod:`.book`, :mod:`.sequence`), the
``/derivatives`` cost limiter (:mod:`.ratelimit`) and request signing (:mod:`.signing`);
for the live session, the feed state machine (:mod:`.feed`, :mod:`.marketdata`), order
normalisation (:mod:`.orders`), refusal codes (:mod:`.rejections`) and request building
(:mod:`.requests`).

The live adapter is :class:`.adapter.KrakenFuturesAdapter` (with :mod:`.config`,
:mod:`.rest`, :mod:`.ws`); import it from there, so that users of the pure parts (the
replay command) do not load the network stack.
"""

from workers.broker.adapters.kraken_futures.book import (
    BookChanged,
    BookCrossed,
    FuturesBook,
    FuturesBookBuilder,
    FuturesBookEvent,
    UpdateIgnored,
)
from workers.broker.adapters.kraken_futures.errors import (
    InvalidSecret,
    KrakenFuturesError,
    MalformedMessage,
    UnknownEndpoint,
    UnsupportedSymbol,
)
from workers.broker.adapters.kraken_futures.sequence import SequenceGap

__all__ = [
    "BookChanged",
    "BookCrossed",
    "FuturesBook",
    "FuturesBookBuilder",
    "FuturesBookEvent",
    "InvalidSecret",
    "KrakenFuturesError",
    "MalformedMessage",
    "SequenceGap",
    "UnknownEndpoint",
    "UnsupportedSymbol",
    "UpdateIgnored",
]
