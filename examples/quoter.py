"""A simple two-sided quoter: keeps one bid and one ask `spread_ticks` around the mid of the
best bid/offer, re-quoting when the mid moves by more than `requote_ticks`.

Parameters: `instrument`, `qty` (decimal string per quote), `tick` (the instrument's tick size,
decimal string), `spread_ticks`, `requote_ticks`. Uses limit GTC orders, modified in place when
the market moves; cancels both quotes on stop. Hosted with `on_restart = "adopt"`, a new run
takes over the quotes a killed run left (one per side; any other is cancelled).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tradefleet.strategy import Strategy


class TwoSidedQuoter(Strategy):
    def __init__(self, client: Any, instrument: str = "BTC/USD", qty: str = "0.01",
                 tick: str = "0.1", spread_ticks: int = 10, requote_ticks: int = 5,
                 **params: Any) -> None:
        super().__init__(client, instrument=instrument, qty=qty, tick=tick,
                         spread_ticks=spread_ticks, requote_ticks=requote_ticks, **params)
        self.instrument = instrument
        self.qty = Decimal(qty)
        self.tick = Decimal(tick)
        self.spread = spread_ticks * self.tick
        self.requote = requote_ticks * self.tick
        self.quoted_mid: Decimal | None = None
        self.quotes: dict[str, Any] = {}
        self.requotes = 0

    async def on_start(self) -> None:
        for handle in self.client.orders.values():  # left by an earlier run, adopted
            if handle.is_done or handle.instrument != self.instrument:
                continue
            if handle.side.value in self.quotes:
                await self.client.cancel_order(handle.client_order_id)
            else:
                self.quotes[handle.side.value] = handle
        await self.client.subscribe(self.instrument, "ticker")

    def _round(self, price: Decimal) -> Decimal:
        return (price / self.tick).to_integral_value() * self.tick

    async def on_event(self, event: Any) -> None:
        if getattr(event, "type", None) != "ticker" or event.bid is None or event.ask is None:
            return
        mid = (Decimal(event.bid) + Decimal(event.ask)) / 2
        if self.quoted_mid is not None and abs(mid - self.quoted_mid) < self.requote:
            return
        self.quoted_mid = mid
        self.requotes += 1
        for side, price in (("buy", self._round(mid - self.spread)),
                            ("sell", self._round(mid + self.spread))):
            handle = self.quotes.get(side)
            if handle is not None and not handle.is_done:
                await self.client.modify_order(handle.client_order_id, price=price)
            else:
                self.quotes[side] = await self.client.place_order(
                    self.instrument, side, self.qty, price=price, order_type="limit",
                    time_in_force="GTC")

    async def on_stop(self) -> None:
        for handle in self.quotes.values():
            if not handle.is_done:
                await self.client.cancel_order(handle.client_order_id)

    def state(self) -> dict[str, Any]:
        return {"mid": str(self.quoted_mid) if self.quoted_mid is not None else None,
                "requotes": self.requotes}
