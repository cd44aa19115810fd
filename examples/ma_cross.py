"""Moving-average crossover: long when the fast average of trade prices crosses above the slow
one, flat when it crosses below.

Parameters: `instrument` (e.g. "BTC/USD"), `fast` and `slow` (window lengths in trades),
`qty` (order size, a decimal string). Orders are IOC market orders; the position never exceeds
`qty`. Runs hosted (`[[traders]]` in the config) or from a script:

    async with await MarketClient.connect("http://127.0.0.1:7702", token) as client:
        await run_strategy(MovingAverageCross(client, instrument="BTC/USD"), client)
"""

from __future__ import annotations

from collections import deque
from decimal import Decimal
from typing import Any

from tradefleet.strategy import Strategy


class MovingAverageCross(Strategy):
    def __init__(self, client: Any, instrument: str = "BTC/USD", fast: int = 5, slow: int = 20,
                 qty: str = "0.01", **params: Any) -> None:
        super().__init__(client, instrument=instrument, fast=fast, slow=slow, qty=qty, **params)
        if not 0 < fast < slow:
            raise ValueError("need 0 < fast < slow")
        self.instrument = instrument
        self.fast, self.slow = fast, slow
        self.qty = Decimal(qty)
        self.prices: deque[Decimal] = deque(maxlen=slow)
        self.long = False
        self.signals = 0
        self.order_busy = False

    async def on_start(self) -> None:
        await self.client.subscribe(self.instrument, "trades")

    async def on_event(self, event: Any) -> None:
        if getattr(event, "type", None) != "trade" or event.instrument != self.instrument:
            return
        self.prices.append(Decimal(event.price))
        if len(self.prices) < self.slow or self.order_busy:
            return
        window = list(self.prices)
        fast = sum(window[-self.fast:]) / self.fast
        slow = sum(window) / self.slow
        want_long = fast > slow
        if want_long != self.long:
            self.signals += 1
            self.order_busy = True
            try:
                side = "buy" if want_long else "sell"
                handle = await self.client.place_order(self.instrument, side, self.qty,
                                                       order_type="market",
                                                       time_in_force="IOC")
                await handle.done()
                self.long = want_long
            finally:
                self.order_busy = False

    def state(self) -> dict[str, Any]:
        return {"long": self.long, "signals": self.signals, "observed": len(self.prices)}
