"""Candles built from trades. Pure: feed trades, get candle updates."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from protocol.market import Candle, CandleInterval, Trade


@dataclass(slots=True)
class _Bar:
    start: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal


class CandleBuilder:
    """OHLCV of one instrument at one interval. Intervals without trades produce no candle."""

    def __init__(self, instrument: str, interval: CandleInterval) -> None:
        self.instrument = instrument
        self.interval = interval
        self._bar: _Bar | None = None

    def on_trade(self, trade: Trade) -> list[Candle]:
        """Fold in a trade of this instrument. Returns the previous candle marked closed if
        this trade starts a new interval, then the current candle as updated."""
        length = self.interval.nanoseconds
        start = trade.ts - trade.ts % length
        out: list[Candle] = []
        bar = self._bar
        if bar is not None and start < bar.start:
            return []  # older than the open candle (a skewed recording): that one is final
        if bar is not None and start > bar.start:
            out.append(self._candle(bar, closed=True))
            bar = None
        if bar is None:
            bar = _Bar(start, trade.price, trade.price, trade.price, trade.price, trade.qty)
        else:
            bar.high = max(bar.high, trade.price)
            bar.low = min(bar.low, trade.price)
            bar.close = trade.price
            bar.volume += trade.qty
        self._bar = bar
        out.append(self._candle(bar, closed=False))
        return out

    def _candle(self, bar: _Bar, *, closed: bool) -> Candle:
        return Candle(
            instrument=self.instrument,
            interval=self.interval,
            start=bar.start,
            open=bar.open,
            high=bar.high,
            low=bar.low,
            close=bar.close,
            volume=bar.volume,
            closed=closed,
        )
