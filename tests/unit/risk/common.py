"""Names and builders the risk tests share."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from protocol.market import InstrumentSpec
from protocol.orders import NewOrder

D = Decimal
ACCOUNT = "acct"
START_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
SECOND = 1_000_000_000

BTC = InstrumentSpec(instrument="BTC/USD", tick_size=D("0.5"), lot_size=D("0.01"),
                     min_qty=D("0.01"))
ETH = InstrumentSpec(instrument="ETH/USD", tick_size=D("0.01"), lot_size=D("0.1"),
                     min_qty=D("0.1"))
SOL = InstrumentSpec(instrument="SOL/USD", tick_size=D("0.01"), lot_size=D("1"),
                     min_qty=D("1"))
ETHBTC = InstrumentSpec(instrument="ETH/BTC", tick_size=D("0.0001"), lot_size=D("0.1"),
                        min_qty=D("0.1"))
SPECS = {s.instrument: s for s in (BTC, ETH, SOL, ETHBTC)}


def order(cid: str = "c1", *, side: str = "buy", qty: str = "1", price: str | None = "100",
          instrument: str = "BTC/USD", account: str = ACCOUNT) -> NewOrder:
    """A new_order; `price=None` makes it a market order."""
    fields: dict[str, Any] = {"client_order_id": cid, "account": account,
                              "instrument": instrument, "side": side, "qty": qty}
    if price is None:
        fields["order_type"] = "market"
    else:
        fields["price"] = price
    return NewOrder.model_validate(fields)
