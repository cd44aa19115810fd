"""The latest market prices of the account's instruments, as the position manager sees them.

Not durable: after a restart the prices come back with the market data. Decisions taken on
prices (risk checks, exits firing, trailing stops moving) are journaled themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from protocol.market import Ticker, Trade
from workers.broker.risk.amounts import EXACT

_TWO = Decimal(2)


@dataclass(slots=True)
class Quote:
    bid: Decimal | None = None
    ask: Decimal | None = None
    last: Decimal | None = None
    ts: int = 0


class MarketPrices:
    """Best bid, best ask and last trade per instrument, from tickers and trades."""

    def __init__(self) -> None:
        self._quotes: dict[str, Quote] = {}

    def update(self, event: Ticker | Trade) -> None:
        """Take in one market event. Events older than what is known are ignored."""
        quote = self._quotes.setdefault(event.instrument, Quote())
        if event.ts < quote.ts:
            return
        quote.ts = event.ts
        if isinstance(event, Trade):
            quote.last = event.price
            return
        quote.bid, quote.ask = event.bid, event.ask
        if event.last is not None:
            quote.last = event.last

    def quote(self, instrument: str) -> Quote | None:
        return self._quotes.get(instrument)

    def reference_price(self, instrument: str) -> Decimal | None:
        """Mid when both sides are quoted, else the last trade price, else None."""
        quote = self._quotes.get(instrument)
        if quote is None:
            return None
        if quote.bid is not None and quote.ask is not None:
            return EXACT.divide(EXACT.add(quote.bid, quote.ask), _TWO)
        return quote.last
